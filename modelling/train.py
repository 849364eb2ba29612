"""Train a llama2.c-style model on a pretokenized dataset, recording exactly what went in and what came out.

    python modelling/train.py                                  # the demo: defaults below, out/demo
    python modelling/train.py --preset=15M --out_dir=out/s15M  # llama2.c's 15M shape
    python modelling/train.py --sampler=sort_ascending --sort_by=flesch_ease --out_dir=out/curriculum
    python modelling/train.py --init_from=resume --out_dir=out/demo          # continue a killed run exactly
    torchrun --standalone --nproc_per_node=4 modelling/train.py ...          # DDP, rank 0 writes

Every constant below can be overridden with --key=value (type-checked; unknown keys fail before any work).
Writes out_dir/: config.json, probes.json, train_log.csv, val_log.csv, batch_log.bin/.json, ckpt/step_*.pt,
ckpt/resume.pt (docs/FORMATS.md). Data: one story per row (modelling/data.py); order: modelling/samplers.py.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# OpenMP threads that sleep instead of spinning when idle: on a shared CPU, spinning threads of several processes
# starve each other (measured 3x slower steps here); set OMP_WAIT_POLICY=ACTIVE to opt out.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ast
import csv
import json
import math
import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UserError, run_main
from common.io import atomic_path, atomic_write_json, atomic_write_text, provenance, sha256_file

# -----------------------------------------------------------------------------
# I/O
out_dir = "out/demo"
eval_interval = 50  # checkpoint + val loss every this many steps (after the log-spaced 1, 2, 4, …, 512)
log_interval = 10  # console line every this many steps (the train log gets every step)
eval_iters = 4  # val / train loss on eval_iters * batch_size fixed stories
init_from = "scratch"  # 'scratch' | 'resume' (this out_dir's ckpt/resume.pt) | path to any .pt (llama2.c's too)
preset = ""  # '' | '260K' | '15M' | '42M' | '110M': llama2.c's model shapes (explicit --keys win)
export_format = ""  # '' | 'llama2c' | 'hf': also export every checkpoint (modelling/export.py)
instrument = True  # False turns off batch log, probe attention and checkpoints (benchmarking only)
# data
dataset = "storyworld"
vocab_size = 512  # 0 = the Llama 2 tokenizer given to pretokenize (32000)
batch_size = 16  # micro-batch, stories per row-batch
max_seq_len = 256  # a story is truncated to this many training positions
data_seed = 1337  # data order; separate from the weight-init seed (seed) and the selection (selection_seed)
selection_seed = 0  # which stories an n_stories budget picks; two orders of one selection share it
sampler = "random"  # random | sort_ascending | sort_descending | filter_by_threshold | combined
sort_by = ""  # metadata column for the sorted samplers (data/<raw>/tok<V>/metadata.parquet)
sort_order = "ascending"  # combined only: ascending | descending
filter_column = ""  # metadata column for filter_by_threshold / combined
threshold = 0.0
filter_keep = "above"  # above: keep value >= threshold; below: keep value < threshold
n_stories = 8000  # selection budget (0 = every selected train story); the demo trains on 8000 (500 steps)
epochs = 1  # passes over the selection when max_iters = -1
n_probe_stories = 3  # validation stories in the fixed probe set (plus the induction probe)
probe_len = 96  # tokens per probe (attention maps are probe_len x probe_len per head)
# model
dim = 128
n_layers = 4
n_heads = 4
n_kv_heads = 4
multiple_of = 32
dropout = 0.0
# adamw optimizer
gradient_accumulation_steps = 1
learning_rate = 2e-3
max_iters = -1  # -1 = one pass over the selection x epochs
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 = no clipping
# learning rate schedule
decay_lr = True
warmup_iters = 100
min_lr = 2e-4
# system
device = "cpu"  # cpu | cuda | cuda:N
dtype = "auto"  # auto (bfloat16 where the hardware has it natively, else float32) | float32 | bfloat16 | float16
compile = False  # torch.compile the training forward
seed = 1337  # weight init (and dropout)
# -----------------------------------------------------------------------------
CONFIG_KEYS = [k for k, v in list(globals().items()) if not k.startswith("_") and isinstance(v, (bool, int, float, str))]
DEFAULTS = {k: globals()[k] for k in CONFIG_KEYS}

# llama2.c's shapes (README "models" table and its 260K recipe)
PRESETS = {
    "260K": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, multiple_of=4, max_seq_len=512),
    "15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, multiple_of=32, max_seq_len=1024),
    "110M": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, multiple_of=32, max_seq_len=1024),
}
CHOICES = {
    "init_from": None, "preset": ("",) + tuple(PRESETS), "export_format": ("", "llama2c", "hf"),
    "sampler": ("random", "sort_ascending", "sort_descending", "filter_by_threshold", "combined"),
    "sort_order": ("ascending", "descending"), "filter_keep": ("above", "below"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
}
MODEL_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len", "dropout")
# keys that may differ when resuming (they do not change what the run computes up to the resume step)
RESUME_FREE_KEYS = ("init_from", "max_iters", "log_interval", "compile", "device", "export_format")
LOG_SPACED = [2 ** i for i in range(10)]  # 1, 2, 4, …, 512
TRAIN_LOG_FIELDS = ["step", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_s"]
VAL_LOG_FIELDS = ["step", "tokens_seen", "train_loss", "val_loss"]
INDUCTION_SEED = 1234  # the repeated-random-token probe is the same for every run of a vocab


# -----------------------------------------------------------------------------
# config

def parse_value(key, text):
    """Parse --key=text to the type of the key's default; UserError naming the key otherwise."""
    want = type(DEFAULTS[key])
    if want is str:
        return text
    if want is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"--{key}={text}: expected True or False")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"--{key}={text}: expected {want.__name__}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise UserError(f"--{key}={text}: expected {want.__name__}, got {type(value).__name__}")
    return value


def parse_config(argv):
    """Defaults, then a preset's shape, then explicit --key=value overrides (which always win)."""
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"bad argument {arg!r}: use --key=value; valid keys: {', '.join(CONFIG_KEYS)}")
        key, text = arg[2:].split("=", 1)
        if key not in DEFAULTS:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(CONFIG_KEYS)}")
        overrides[key] = parse_value(key, text)
    cfg = dict(DEFAULTS)
    name = overrides.get("preset", cfg["preset"])
    if name not in PRESETS and name:
        raise UserError(f"--preset={name}: unknown; use one of {', '.join(PRESETS)}")
    cfg.update(PRESETS.get(name, {}))
    cfg.update(overrides)
    validate(cfg)
    return cfg, overrides


def validate(cfg):
    for key, allowed in CHOICES.items():
        if allowed and cfg[key] not in allowed:
            raise UserError(f"--{key}={cfg[key]}: use one of {', '.join(repr(a) for a in allowed)}")
    positive = ("batch_size", "max_seq_len", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
                "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval", "epochs", "probe_len")
    for key in positive:
        if cfg[key] <= 0:
            raise UserError(f"--{key}={cfg[key]}: must be > 0")
    if cfg["dim"] % cfg["n_heads"] or (cfg["dim"] // cfg["n_heads"]) % 2:
        raise UserError(f"--dim={cfg['dim']} must be divisible by --n_heads={cfg['n_heads']} into an even head size")
    if cfg["n_heads"] % cfg["n_kv_heads"]:
        raise UserError(f"--n_heads={cfg['n_heads']} must be a multiple of --n_kv_heads={cfg['n_kv_heads']}")
    if cfg["max_iters"] == 0 or cfg["max_iters"] < -1:
        raise UserError(f"--max_iters={cfg['max_iters']}: use a positive step count or -1 (one pass)")
    if not 0.0 <= cfg["dropout"] < 1.0:
        raise UserError(f"--dropout={cfg['dropout']}: must be in [0, 1)")
    if not (cfg["device"] == "cpu" or cfg["device"].startswith("cuda")):
        raise UserError(f"--device={cfg['device']}: use cpu, cuda or cuda:N")
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={cfg['device']} but CUDA is not available here — use --device=cpu")
    if cfg["dtype"] == "float16" and not cfg["device"].startswith("cuda"):
        raise UserError("--dtype=float16 needs CUDA (it uses a grad scaler); on CPU use bfloat16 or float32")


def native_bf16_cpu():
    """True when the CPU has bf16 instructions (AMX or AVX512-BF16); without them bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def resolve_dtype(cfg):
    if cfg["dtype"] != "auto":
        return cfg["dtype"]
    if cfg["device"].startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if native_bf16_cpu() else "float32"


# -----------------------------------------------------------------------------
# schedule, probes, evaluation

def get_lr(step, cfg, n_steps):
    """Linear warmup over warmup_iters steps (step is 1-based), then cosine decay to min_lr at the last step."""
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if step <= cfg["warmup_iters"]:
        return cfg["learning_rate"] * step / cfg["warmup_iters"]
    span = max(1, n_steps - cfg["warmup_iters"])
    ratio = min(1.0, (step - cfg["warmup_iters"]) / span)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg["min_lr"] + coeff * (cfg["learning_rate"] - cfg["min_lr"])


def checkpoint_steps(n_steps, eval_interval):
    """Log-spaced 1, 2, 4, …, 512, then every eval_interval, and the last step."""
    steps = {s for s in LOG_SPACED if s <= n_steps}
    steps |= set(range(eval_interval, n_steps + 1, eval_interval))
    steps.add(n_steps)
    return sorted(steps)


def make_probes(ds, cfg, model_vocab):
    """The fixed probe set: the first n_probe_stories val stories (by id) with at least probe_len/2 tokens,
    truncated to probe_len (at most max_seq_len + 1), plus BOS + a random token block repeated twice (induction
    heads copy it)."""
    probe_len = min(cfg["probe_len"], cfg["max_seq_len"] + 1)
    index = ds.index
    val = index[(index["split"] == "val") & (index["n_tokens"] >= probe_len // 2)].sort_values("story_id")
    probes = []
    for sid in val["story_id"].to_numpy()[: cfg["n_probe_stories"]]:
        tokens = np.asarray(ds.tokens(int(sid)))[:probe_len]
        probes.append({"name": f"val_{int(sid)}", "story_id": int(sid), "tokens": [int(t) for t in tokens]})
    half = (probe_len - 1) // 2
    block = np.random.default_rng(INDUCTION_SEED).integers(3, model_vocab, size=half)  # skip unk/bos/eos
    probes.append({"name": "induction", "story_id": None, "tokens": [1] + [int(t) for t in block] * 2})
    return probes


@torch.no_grad()
def capture_probes(model, probes, ctx, device):
    """Attention of every layer and head (float16 [L, H, T, T]) and the loss of each probe, from one forward
    pass with return_attn=True on the current weights."""
    attn, losses = {}, {}
    for probe in probes:
        tokens = torch.tensor(probe["tokens"], dtype=torch.long, device=device)[None]
        with ctx:
            model(tokens[:, :-1], tokens[:, 1:], return_attn=True)
        attn[probe["name"]] = torch.stack([a[0] for a in model.last_attn]).to("cpu", torch.float16)
        losses[probe["name"]] = float(model.last_loss)
    model.last_attn = None
    return attn, losses


@torch.no_grad()
def estimate_loss(model, batches, story_ids, cfg, ctx, device):
    """Token-weighted mean loss over fixed stories (eval mode, no dropout)."""
    total, n_total = 0.0, 0
    for i in range(0, len(story_ids), cfg["batch_size"]):
        ids = story_ids[i:i + cfg["batch_size"]]
        x, y = batches.batch(ids, device)
        with ctx:
            model(x, y)
        n = batches.n_targets(ids)
        total += float(model.last_loss) * n
        n_total += n
    return total / max(1, n_total)


def fixed_sample(ids, n, seed, tag):
    """n ids drawn once with (seed, tag) and sorted — the same at every evaluation."""
    ids = np.asarray(ids, dtype=np.int64)
    pick = np.random.default_rng([seed, tag]).permutation(len(ids))[:n]
    return np.sort(ids[pick])


# -----------------------------------------------------------------------------
# files

def save_torch(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CsvLog:
    """Append-only CSV, one flushed line per row; on resume rows after the resume step are dropped."""

    def __init__(self, path, fields, resume_step=None):
        self.path, self.fields = Path(path), fields
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fields)
                w.writeheader()
                w.writerows(kept)
        elif resume_step is None or not self.path.exists():
            atomic_write_text(self.path, ",".join(fields) + "\n")
        self.f = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.f, fields)

    def write(self, row):
        self.writer.writerow(row)
        self.f.flush()

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        if not self.f.closed:
            self.sync()
            self.f.close()


def dataset_fingerprint(ds):
    files = {"manifest_sha256": ds.dir / "manifest.json", "tokenizer_sha256": ds.dir / "tokenizer.model"}
    return {k: sha256_file(p) for k, p in files.items() if p.exists()}


def existing_run_check(out, cfg):
    """Refuse to overwrite another run; say when this exact run is already complete. Returns True to skip."""
    cfg_path = out / "config.json"
    if cfg["init_from"] == "resume" or not cfg_path.exists():
        return False
    old = json.loads(cfg_path.read_text()).get("config", {})
    same = {k: v for k, v in old.items() if k != "init_from"} == {k: v for k, v in cfg.items() if k != "init_from"}
    from modelling.checkpoints import list_checkpoints
    ckpts = list_checkpoints(out)
    n_steps = json.loads(cfg_path.read_text()).get("n_steps")
    if same and ckpts and ckpts[-1][0] == n_steps:
        print(f"{out} already holds this run, complete at step {n_steps} (skipping; delete the folder to retrain)")
        return True
    raise UserError(f"{out} already holds a {'partial' if same else 'different'} run — continue it with "
                    f"--init_from=resume, or pick another --out_dir (or delete {out})")


# -----------------------------------------------------------------------------

def main(argv):
    cfg, overrides = parse_config(argv)
    out = Path(cfg["out_dir"])

    # resuming: the run's own config, with only the harmless keys taken from the command line
    resume = None
    if cfg["init_from"] == "resume":
        from modelling.checkpoints import load_checkpoint
        resume_path = out / "ckpt" / "resume.pt"
        if not resume_path.exists():
            raise UserError(f"nothing to resume: {resume_path} not found — start the run with --init_from=scratch")
        resume = load_checkpoint(resume_path)
        stored = dict(resume["config"])
        changed = [k for k, v in overrides.items() if k not in RESUME_FREE_KEYS + ("out_dir",) and stored.get(k) != v]
        if changed:
            raise UserError(f"cannot change {', '.join(changed)} when resuming (only {', '.join(RESUME_FREE_KEYS)})")
        cfg = {**DEFAULTS, **stored, **{k: overrides[k] for k in overrides}, "out_dir": cfg["out_dir"]}
        validate(cfg)

    # distributed: torchrun sets RANK/WORLD_SIZE; each rank takes its slice of every global step
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world, local_rank = 0, 1, 0
    if ddp:
        from torch.distributed import init_process_group
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cfg["device"].startswith("cuda"):
            cfg["device"] = f"cuda:{local_rank}"
            torch.cuda.set_device(cfg["device"])
        init_process_group(backend="nccl" if cfg["device"].startswith("cuda") else "gloo")
    master = rank == 0
    device = cfg["device"]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype_used = resolve_dtype(cfg)
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_used]
    ctx = nullcontext() if dtype_used == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if existing_run_check(out, cfg):  # every rank reads, so all of them stop together
        return

    # data (the shared reader of the pretokenize stage)
    from tokenization.dataset import TokenizedDataset
    from modelling.data import StoryBatches
    from modelling.samplers import StorySampler, load_metadata

    ds = TokenizedDataset(cfg["dataset"], cfg["vocab_size"])
    model_vocab = int(ds.manifest.get("vocab_size") or 0) or int(ds.tokenizer.get_piece_size())
    bos_id = int(ds.manifest.get("bos_id", 1))
    batches = StoryBatches(ds, cfg["max_seq_len"], bos_id)
    needs_metadata = cfg["sampler"] != "random"
    metadata = load_metadata(cfg["dataset"], cfg["vocab_size"]) if needs_metadata else None
    stories_per_step = cfg["batch_size"] * cfg["gradient_accumulation_steps"] * world
    sampler = StorySampler(ds.story_ids("train"), stories_per_step, cfg["sampler"], cfg["data_seed"], metadata,
                           cfg["sort_by"], cfg["sort_order"], cfg["filter_column"], cfg["threshold"],
                           cfg["filter_keep"], cfg["n_stories"], cfg["selection_seed"])
    n_steps = cfg["max_iters"] if cfg["max_iters"] > 0 else cfg["epochs"] * sampler.steps_per_epoch
    val_ids = ds.story_ids("val")
    if len(val_ids) == 0:
        raise UserError(f"dataset {cfg['dataset']} has no validation stories — re-run pretokenize")
    n_eval = cfg["eval_iters"] * cfg["batch_size"]
    val_sample = fixed_sample(val_ids, n_eval, cfg["data_seed"], 1)
    train_sample = fixed_sample(sampler.selection, n_eval, cfg["data_seed"], 2)
    ckpt_steps = set(checkpoint_steps(n_steps, cfg["eval_interval"]))  # evaluated even without instrument

    # model: scratch, a run's resume state, or any checkpoint (llama2.c's included) for continued pretraining
    from modelling.checkpoints import load_model, clean_state_dict
    from modelling.model import ModelArgs, Transformer
    torch.manual_seed(cfg["seed"] + rank)
    if cfg["init_from"] in ("scratch", "resume"):
        args = ModelArgs(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                         n_kv_heads=cfg["n_kv_heads"], vocab_size=model_vocab, multiple_of=cfg["multiple_of"],
                         max_seq_len=cfg["max_seq_len"], dropout=cfg["dropout"])
        if resume is not None:
            args = ModelArgs.from_dict(resume["model_args"])
        model = Transformer(args)
        if resume is not None:
            model.load_state_dict(clean_state_dict(resume["model"]))
    else:
        model, _ = load_model(cfg["init_from"], max_seq_len=cfg["max_seq_len"], dropout=cfg["dropout"])
        args = model.params
        if args.vocab_size != model_vocab:
            raise UserError(f"--init_from={cfg['init_from']} has vocab {args.vocab_size} but dataset "
                            f"{cfg['dataset']} tok{cfg['vocab_size']} has {model_vocab} — use the matching --vocab_size")
        for key in MODEL_KEYS:  # the config records the shape actually trained
            cfg[key] = getattr(args, key) if getattr(args, key) is not None else cfg[key]
        cfg["n_kv_heads"] = args.n_kv_heads or args.n_heads
    model.to(device)
    model.train()

    # optimizer: AdamW, weight decay on >=2-D tensors only (matrices and embeddings), fused on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]),
                                  fused=device_type == "cuda")
    scaler = torch.amp.GradScaler(device_type, enabled=dtype_used == "float16")
    start_step, tokens_seen = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if resume["sampler"]["selection_sha256"] != sampler.selection_sha256:
            raise UserError(f"{out}: the dataset/selection changed since the run started — cannot resume exactly")
        start_step, tokens_seen = int(resume["step"]), int(resume["tokens_seen"])
        rng = resume["rng"]["torch"]
        torch.set_rng_state(rng[rank] if isinstance(rng, list) else rng)
        if device_type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"][rank].cpu())
        if start_step >= n_steps:
            print(f"{out}: resume.pt is at step {start_step} >= {n_steps} steps — nothing to do")
            return

    base_model = model  # eager module: probes, eval and checkpoints use it
    train_model = torch.compile(model) if cfg["compile"] else model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(train_model, device_ids=[local_rank] if device_type == "cuda" else None)

    # run folder (rank 0)
    if master:
        n_params = base_model.num_params()
        run_info = {"config": cfg, "dtype_used": dtype_used, "world_size": world,
                    "stories_per_step": stories_per_step, "n_steps": n_steps,
                    "n_selected": int(len(sampler.selection)), "selection_sha256": sampler.selection_sha256,
                    "steps_per_epoch": sampler.steps_per_epoch, "checkpoint_steps": sorted(ckpt_steps),
                    "model_args": args.to_dict(), "n_params": n_params,
                    "flops_per_token": base_model.flops_per_token(cfg["max_seq_len"]),
                    "dataset_dir": str(ds.dir), **dataset_fingerprint(ds),
                    "resumed_from_step": start_step if resume is not None else None}
        run_provenance = provenance()
        atomic_write_json(out / "config.json", {**run_info, "provenance": run_provenance})
        probes = make_probes(ds, cfg, model_vocab)
        atomic_write_json(out / "probes.json", probes)
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        keep_from = start_step if resume is not None else None
        train_log = CsvLog(out / "train_log.csv", TRAIN_LOG_FIELDS, keep_from)
        val_log = CsvLog(out / "val_log.csv", VAL_LOG_FIELDS, keep_from)
        from modelling.batch_log import BatchLogWriter
        batch_log = BatchLogWriter(out, stories_per_step, start_step,
                                   {"dataset": cfg["dataset"], "vocab_size": cfg["vocab_size"]}) \
            if cfg["instrument"] else None
        print(f"{out}: {n_params / 1e6:.2f}M params, {n_steps} steps of {stories_per_step} stories "
              f"({len(sampler.selection)} selected, sampler={cfg['sampler']}), dtype={dtype_used}, "
              f"{len(ckpt_steps)} checkpoints" + (f", resuming at step {start_step}" if resume else ""))

    def save_checkpoint(step, val_loss, train_loss, probe_attn, probe_loss):
        from modelling.checkpoints import ckpt_name
        path = out / "ckpt" / ckpt_name(step)
        save_torch({"model": base_model.state_dict(), "model_args": args.to_dict(), "config": cfg, "step": step,
                    "tokens_seen": tokens_seen, "val_loss": val_loss, "train_loss": train_loss,
                    "probe_attn": probe_attn, "probe_loss": probe_loss, "provenance": run_provenance}, path)
        if cfg["export_format"]:
            from modelling.export import export_checkpoint
            export_checkpoint(path, cfg["export_format"])

    def rng_states():
        states = {"torch": [torch.get_rng_state()], "cuda": None}
        if device_type == "cuda":
            states["cuda"] = [torch.cuda.get_rng_state()]
        if ddp:
            import torch.distributed as dist
            gathered = [None] * world
            dist.all_gather_object(gathered, {k: v[0] if v else None for k, v in states.items()})
            states = {k: [g[k] for g in gathered] if gathered[0][k] is not None else None for k in states}
        return states

    # -------------------------------------------------------------------------
    micro_ids = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    step = start_step
    t_prev = time.time()
    bar = tqdm(total=n_steps, initial=start_step, desc="train", unit="step", disable=not master, dynamic_ncols=True)
    while step < n_steps:
        step += 1
        lr = get_lr(step, cfg, n_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        story_ids = sampler.step_ids(step)
        n_step_tokens = batches.n_targets(story_ids)
        rank_ids = story_ids[rank * micro_ids:(rank + 1) * micro_ids]
        loss_acc = torch.zeros((), device=device)
        for micro in range(cfg["gradient_accumulation_steps"]):
            ids = rank_ids[micro * cfg["batch_size"]:(micro + 1) * cfg["batch_size"]]
            x, y = batches.batch(ids, device)
            # the step's loss is the mean over all its real tokens, whatever the micro-batch lengths
            weight = batches.n_targets(ids) * world / n_step_tokens
            sync = micro == cfg["gradient_accumulation_steps"] - 1
            with (nullcontext() if sync or not ddp else train_model.no_sync()), ctx:
                train_model(x, y)
                loss = base_model.last_loss * weight
            scaler.scale(loss).backward()
            loss_acc += loss.detach()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(base_model.parameters(),
                                                   cfg["grad_clip"] if cfg["grad_clip"] > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ddp:
            import torch.distributed as dist
            dist.all_reduce(loss_acc)
            loss_acc /= world
        tokens_seen += n_step_tokens
        step_loss = float(loss_acc)
        now = time.time()
        dt, t_prev = now - t_prev, now
        if master:
            if batch_log is not None:
                batch_log.append(story_ids)
            train_log.write({"step": step, "tokens_seen": tokens_seen, "loss": repr(step_loss), "lr": repr(lr),
                             "grad_norm": repr(float(grad_norm)), "tokens_per_s": round(n_step_tokens / dt, 1)})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{n_step_tokens / dt:.0f}")
            if step % cfg["log_interval"] == 0:
                bar.write(f"step {step}: loss {step_loss:.4f}, lr {lr:.2e}, grad_norm {float(grad_norm):.3f}, "
                          f"{n_step_tokens / dt:.0f} tok/s")

        if step in ckpt_steps:
            states = rng_states()  # every rank takes part
            if master:
                base_model.eval()
                val_loss = estimate_loss(base_model, batches, val_sample, cfg, ctx, device)
                train_loss = estimate_loss(base_model, batches, train_sample, cfg, ctx, device)
                probe_attn, probe_loss = capture_probes(base_model, probes, ctx, device) if cfg["instrument"] \
                    else ({}, {})
                base_model.train()
                val_log.write({"step": step, "tokens_seen": tokens_seen, "train_loss": repr(train_loss),
                               "val_loss": repr(val_loss)})
                bar.write(f"step {step}: val loss {val_loss:.4f}, train loss {train_loss:.4f}")
                if cfg["instrument"]:
                    save_checkpoint(step, val_loss, train_loss, probe_attn, probe_loss)
                    batch_log.sync()
                    train_log.sync()
                    val_log.sync()
                    save_torch({"model": base_model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict(), "model_args": args.to_dict(), "config": cfg,
                                "step": step, "tokens_seen": tokens_seen,
                                "sampler": {"step": step, "selection_sha256": sampler.selection_sha256},
                                "rng": states}, out / "ckpt" / "resume.pt")
    bar.close()
    if master:
        train_log.close()
        val_log.close()
        if batch_log is not None:
            batch_log.close()
        print(f"done: {out} ({step} steps, {tokens_seen} tokens)")
    if ddp:
        from torch.distributed import destroy_process_group
        destroy_process_group()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
