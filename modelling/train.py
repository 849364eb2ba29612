"""Train a llama2.c-style model on a pretokenized dataset, recording exactly what went in and what came out.

    python modelling/train.py                                  # the demo: defaults below, out/demo
    python modelling/train.py --preset=15M --out_dir=out/s15M  # llama2.c's 15M shape
    python modelling/train.py --sampler=sort_ascending --sort_by=flesch_ease --out_dir=out/curriculum
    python modelling/train.py --init_from=resume --out_dir=out/demo          # continue a killed run exactly
    python modelling/train.py --init_from=out/demo/ckpt/step_000256.pt --dataset=neutral --out_dir=out/br  # branch
    torchrun --standalone --nproc_per_node=4 modelling/train.py ...          # DDP, rank 0 writes

Every constant below can be overridden with --key=value (type-checked and range-checked by modelling/config.py;
unknown keys fail before any work). Data: every story cut into segments of at most max_seq_len targets, S =
batch_size * gradient_accumulation_steps * world segments per step, packed into rows with attention kept
inside each segment (modelling/data.py); order: modelling/samplers.py. Writes out_dir/ through
modelling/recorder.py: config.json, attn_probes.json, train_log.csv, val_log.csv, batch_log.*, ckpt/step_*.pt,
ckpt/resume.pt (docs/FORMATS.md). A branch (--init_from a step checkpoint of a run) continues the parent's step
counter and tokens_seen, trains max_iters more steps with its own schedule and data order, and records its
lineage (modelling/branch.py).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.machine import choose_omp_wait_policy, machine_info  # noqa: E402

# before torch starts its threads: spin on a quiet CPU, sleep on a busy one (an explicit OMP_WAIT_POLICY wins)
THREAD_POLICY = choose_omp_wait_policy()

import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UserError, run_main
from common.ids import run_ids
from common.io import atomic_write_json, provenance
from common.paths import root
from common.runlock import RunLock
from modelling.attn_probes import capture_attn, make_attn_probes
from modelling.branch import (check_parent_unchanged, open_parent, parent_optimizer_state, parse_steps,
                              recorded_lineage)
from modelling.cards import ModelCardHook
from modelling.checkpoints import clean_state_dict, load_checkpoint, load_model
from modelling.config import MODEL_KEYS, RESUME_FREE_KEYS, parse_config, resolve_dtype, validate
from modelling.data import SegmentBatches, one_per_row, pack_rows, split_rows, story_loss
from modelling.dynamic_sampler import DynamicSampler
from modelling.injection import InjectionPlan
from modelling.model import ModelArgs, Transformer
from modelling.recorder import RunRecorder, existing_run_check
from modelling.samplers import SegmentSampler, load_metadata
from modelling.schedule import checkpoint_steps, get_lr
from modelling.trackers import make_tracker
from tokenization.dataset import TokenizedDataset

# -----------------------------------------------------------------------------
# I/O
out_dir = "out/demo"
eval_interval = 100  # checkpoint + val loss every this many steps (after the log-spaced 1, 2, 4, …, 512)
log_interval = 10  # console line every this many steps (the train log gets every step)
eval_iters = 4  # val / train loss on eval_iters * batch_size fixed stories
init_from = "scratch"  # 'scratch' | 'resume' (this out_dir's ckpt/resume.pt) | path to any .pt (llama2.c's too)
branch_optimizer = "fresh"  # fresh | parent: a branch starts from a new AdamW or the parent checkpoint's state
save_optimizer_at = ""  # e.g. "256,1024": these steps' checkpoints also hold the AdamW state (to branch from)
preset = ""  # '' | '260K' | '15M' | '42M' | '110M': llama2.c's model shapes (explicit --keys win)
export_format = ""  # '' | 'llama2c' | 'hf': also export every checkpoint (modelling/export.py)
instrument = True  # False turns off batch log, probe attention and checkpoints (benchmarking only)
log_to = "none"  # none | tensorboard (out_dir/tensorboard/) | wandb (offline, out_dir/wandb/; `wandb sync` later)
# data
dataset = "storyworld"
vocab_size = 512  # 0 = the Llama 2 tokenizer given to pretokenize (32000)
batch_size = 16  # segments per micro-batch (packed into at most this many rows)
max_seq_len = 256  # positions per row; a longer story is cut into segments of at most this many targets
pack = True  # pack a step's segments into rows (attention kept per segment); False: one segment per row, padded
data_seed = 1337  # data order; separate from the weight-init seed (seed) and the selection (selection_seed)
selection_seed = 0  # which stories an n_stories budget picks; two orders of one selection share it
sampler = "random"  # random | sort_ascending | sort_descending | filter_by_threshold | combined | dynamic
sort_by = ""  # metadata column for the sorted samplers (data/<raw>/tok<V>/metadata.parquet)
sort_order = "ascending"  # combined only: ascending | descending
filter_column = ""  # metadata column for filter_by_threshold / combined
threshold = 0.0
filter_keep = "above"  # above: keep value >= threshold; below: keep value < threshold
dynamic_interval = 10  # --sampler=dynamic (modelling/dynamic_sampler.py): re-score a pool every this many steps
dynamic_pool = 4  # candidates scored per decision, as a multiple of the segments the next interval trains
dynamic_score = "reducible_loss"  # reducible_loss | loss | constant | metadata:COLUMN (metadata:-COLUMN: low first)
dynamic_temperature = 0.1  # draw probability ∝ exp(score / temperature) (scores in nats for the losses)
inject_plan = ""  # '' | injection plan .json (modelling/injection.py): segments ADDED to chosen steps (issue 18)
n_stories = 8000  # selection budget (0 = every selected train story); the demo trains on 8000
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
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def fixed_sample(ids, n, seed, tag):
    """n ids drawn once with (seed, tag) and sorted — the same at every evaluation."""
    ids = np.asarray(ids, dtype=np.int64)
    pick = np.random.default_rng([seed, tag]).permutation(len(ids))[:n]
    return np.sort(ids[pick])


def resume_config(cfg, overrides):
    """(config, resume state) of the run in out_dir: its own config, only the harmless keys from the command."""
    resume_path = root() / cfg["out_dir"] / "ckpt" / "resume.pt"
    if not resume_path.exists():
        raise UserError(f"nothing to resume: {resume_path} not found — start the run with --init_from=scratch")
    resume = load_checkpoint(resume_path)
    stored = dict(resume["config"])
    changed = [k for k, v in overrides.items() if k not in RESUME_FREE_KEYS + ("out_dir",) and stored.get(k) != v]
    if changed:
        raise UserError(f"cannot change {', '.join(changed)} when resuming (only {', '.join(RESUME_FREE_KEYS)})")
    cfg = {**DEFAULTS, **stored, **overrides, "out_dir": cfg["out_dir"]}
    validate(cfg)
    return cfg, resume


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


# -----------------------------------------------------------------------------

def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    resume = None
    if cfg["init_from"] == "resume":
        cfg, resume = resume_config(cfg, overrides)
    globals().update(cfg)  # from here on the config is read as the module constants above
    out = root() / out_dir  # relative to the project root (--root / $LLAMA_PREBIAS_ROOT, else the cwd)

    # distributed: torchrun sets RANK/WORLD_SIZE; each rank takes its rows of every global step
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world, local_rank = 0, 1, 0
    dev = device
    if ddp:
        from torch.distributed import init_process_group
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if dev.startswith("cuda"):
            dev = f"cuda:{local_rank}"
            torch.cuda.set_device(dev)
        init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    master = rank == 0
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype_used = resolve_dtype(dtype, dev)
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_used]
    ctx = nullcontext() if dtype_used == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    check_parent_unchanged(recorded_lineage(out), out)  # a branch whose parent changed since is refused
    if existing_run_check(out, cfg):  # every rank reads, so all of them stop together
        return

    optimizer_steps = parse_steps(save_optimizer_at)

    # data: segments of the selected stories, S per step, packed into rows per step
    ds = TokenizedDataset(dataset, vocab_size)
    model_vocab = int(ds.manifest.get("vocab_size") or 0) or int(ds.tokenizer.get_piece_size())
    # a branch: the parent checkpoint (tokenizer checked), its lineage; steps and tokens count on from its own
    parent = open_parent(init_from, ds, model_vocab) if init_from not in ("scratch", "resume") else None
    lineage = parent.lineage if parent is not None else (resume or {}).get("lineage") or {}
    base_step = int(lineage.get("parent_step") or 0)
    batches = SegmentBatches(ds, max_seq_len, int(ds.manifest.get("bos_id", 1)))
    needs_metadata = sampler != "random" and not (sampler == "dynamic" and dynamic_score in ("loss", "constant"))
    metadata = load_metadata(dataset, vocab_size) if needs_metadata else None
    n_micro = gradient_accumulation_steps * world  # row groups per step: one per micro-batch and rank
    segments_per_step = batch_size * n_micro
    train_ids = ds.story_ids("train")
    if sampler == "dynamic":  # the order is decided while training, from the model's scores
        if world > 1:
            raise UserError("--sampler=dynamic runs in one process (its draws need the model of that process)")
        schedule = DynamicSampler(train_ids, ds.n_tokens, max_seq_len, segments_per_step, data_seed, metadata,
                                  n_stories, selection_seed, dynamic_interval, dynamic_pool, dynamic_score,
                                  dynamic_temperature)
    else:
        schedule = SegmentSampler(train_ids, ds.n_tokens, max_seq_len, segments_per_step, sampler, data_seed,
                                  metadata, sort_by, sort_order, filter_column, threshold, filter_keep, n_stories,
                                  selection_seed)
    n_own = max_iters if max_iters > 0 else epochs * schedule.steps_per_epoch  # this run's own steps
    n_steps = base_step + n_own  # the last step on the shared x axis (a branch continues its parent's counter)
    injection = InjectionPlan.load(root() / inject_plan, ds, max_seq_len) if inject_plan else None
    val_ids = ds.story_ids("val")
    if len(val_ids) == 0:
        raise UserError(f"dataset {dataset} has no validation stories — re-run pretokenize with a larger "
                        f"--val_fraction")
    # the loss at each checkpoint: the first n stories of the dataset's fixed validation sample (the same for
    # every run of the dataset; eval.py scores all of it) and n fixed stories of the selection
    n_eval = eval_iters * batch_size
    val_sample = np.sort(ds.validation_sample("iid", n=n_eval, ranked=True))
    train_sample = fixed_sample(schedule.selection, n_eval, selection_seed, 2)
    ckpt_steps = {base_step + s for s in checkpoint_steps(n_own, eval_interval)}  # log-spaced from the start
    if master:
        if n_stories > len(schedule.selection):
            warn(f"--n_stories={n_stories} but only {len(schedule.selection)} stories are available — training "
                 f"on all {len(schedule.selection)}")
        if injection is not None and injection.n_after(n_steps):
            warn(f"{injection.n_after(n_steps)} segments of --inject_plan={inject_plan} are planned after the last "
                 f"step {n_steps}: this run does not train them (unless resumed with a larger --max_iters)")
        if decay_lr and min_lr > learning_rate:
            warn(f"--min_lr={min_lr} is above --learning_rate={learning_rate}: the cosine schedule rises after warmup")
        if decay_lr and warmup_iters > n_own:
            warn(f"--warmup_iters={warmup_iters} is longer than the run ({n_own} steps): the learning rate never "
                 f"reaches --learning_rate={learning_rate}")

    # model: scratch, a run's resume state, or any checkpoint (llama2.c's too) for continued pretraining
    torch.manual_seed(seed + rank)
    if init_from in ("scratch", "resume"):
        args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=model_vocab,
                         multiple_of=multiple_of, max_seq_len=max_seq_len, dropout=dropout)
        if resume is not None:
            args = ModelArgs.from_dict(resume["model_args"])
        model = Transformer(args)
        if resume is not None:
            model.load_state_dict(clean_state_dict(resume["model"]))
    else:
        model, _ = load_model(init_from, max_seq_len=max_seq_len, dropout=dropout)
        args = model.params
        for key in MODEL_KEYS:  # the config records the shape actually trained
            cfg[key] = getattr(args, key) if getattr(args, key) is not None else cfg[key]
        cfg["n_kv_heads"] = args.n_kv_heads or args.n_heads
        globals().update(cfg)
    model.to(dev)
    model.train()

    # optimizer: AdamW, weight decay on >=2-D tensors only (matrices and embeddings), fused on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=device_type == "cuda")
    scaler = torch.amp.GradScaler(device_type, enabled=dtype_used == "float16")
    start_step, tokens_seen = base_step, parent.tokens_seen if parent is not None else 0
    if parent is not None and (state := parent_optimizer_state(parent, branch_optimizer)) is not None:
        optimizer.load_state_dict(state)  # the parent's moments; lr is set every step from this run's schedule
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if resume["sampler"]["selection_sha256"] != schedule.selection_sha256:
            raise UserError(f"{out}: the dataset/selection changed since the run started — cannot resume exactly")
        if resume["sampler"].get("injection_sha256") != (injection.sha256 if injection else None):
            raise UserError(f"{out}: the injection plan {inject_plan} changed since the run started — cannot resume "
                            f"exactly (restore it or start a new run)")
        start_step, tokens_seen = int(resume["step"]), int(resume["tokens_seen"])
        rng = resume["rng"]["torch"]
        torch.set_rng_state(rng[rank] if isinstance(rng, list) else rng)
        if device_type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"][rank].cpu())
        if start_step >= n_steps:
            print(f"{out}: resume.pt is at step {start_step} >= {n_steps} steps — nothing to do")
            return
    # probes, eval and checkpoints use `model`. Compiled, batches come max_seq_len wide with the segment mask
    # always given (data.py fixed_width), so only the row count varies: one recompile makes it dynamic, and
    # the chunked loss (a Python loop over rows) runs eager outside the graph
    if compile:
        model.loss_outside_compile()
    train_model = torch.compile(model) if compile else model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(train_model, device_ids=[local_rank] if device_type == "cuda" else None)

    # run folder (rank 0): one writer at a time, then config, probes, logs and batch log behind the recorder
    if master:
        lock = RunLock(out).acquire()  # a second writer is refused naming this pid; a dead holder's is taken over
        if existing_run_check(out, cfg):  # again under the lock: another process may have written it meanwhile
            return
        run_provenance = provenance()
        ids = run_ids(ds.dir, cfg, schedule.selection_sha256, run_provenance["git_commit"], lineage.get("parent_id"))
        if resume is not None:  # a resumed run keeps the id it started with (the code may have changed since)
            ids["run"] = (resume.get("ids") or {}).get("run") or ids["run"]
        run_info = {"config": cfg, "dtype_used": dtype_used, "machine": machine_info(),
                    "threads": {**THREAD_POLICY, "torch_threads": torch.get_num_threads()}, "world_size": world,
                    "segments_per_step": segments_per_step, "n_steps": n_steps,
                    "n_selected": int(len(schedule.selection)), "n_segments": int(len(schedule.segments)),
                    "n_tokens_selection": schedule.n_tokens, "selection_sha256": schedule.selection_sha256,
                    "steps_per_epoch": schedule.steps_per_epoch, "checkpoint_steps": sorted(ckpt_steps),
                    "val_sample": val_sample.tolist(), "model_args": args.to_dict(), "n_params": model.num_params(),
                    "flops_per_token": model.flops_per_token(max_seq_len), "dataset_dir": str(ds.dir),
                    "ids": ids, "resumed_from_step": start_step if resume is not None else None,
                    "injection": injection.summary() if injection else None,
                    "tokenizer_sha256": ds.manifest.get("tokenizer_sha256"), "provenance": run_provenance}
        if lineage:
            run_info["lineage"] = lineage
        tracker = make_tracker(log_to, out, run_info)  # a missing package stops here, before any file is written
        attn_probes = make_attn_probes(ds, n_probe_stories, probe_len, max_seq_len, model_vocab)
        recorder = RunRecorder(out, run_info, attn_probes, segments_per_step, max_seq_len,
                               start_step if resume is not None else None, instrument, export_format, base_step)
        if injection is not None:  # the plan as trained, beside the batch log that records its segments
            atomic_write_json(out / "injection_plan.json", injection.plan)
        recorder.hooks.append(ModelCardHook(out))  # out_dir/README.md describes the newest checkpoint
        if tracker is not None:
            recorder.hooks.append(tracker)
        if sampler == "dynamic":  # scores with this model; its decision log restarts or resumes with the run
            recorder.hooks.append(schedule.attach(model, batches, ctx, dev, out, start_step - base_step if resume else 0))
        print(f"{out}: {ids['run']} on {ids['tokenized']} ({ids['dataset']}), selection {ids['selection']}")
        print(f"{out}: {model.num_params() / 1e6:.2f}M params, {n_steps} steps of {segments_per_step} segments "
              f"({len(schedule.selection)} stories, {len(schedule.segments)} segments, {schedule.n_tokens} tokens; "
              f"sampler={sampler}), dtype={dtype_used}, {len(ckpt_steps)} checkpoints"
              + (f", resuming at step {start_step}" if resume else "")
              + (f", branched from {lineage['parent_run']} step {base_step}" if lineage else ""))

    # -------------------------------------------------------------------------
    step = start_step
    t_prev = time.time()
    bar = tqdm(total=n_steps, initial=start_step, desc="train", unit="step", disable=not master, dynamic_ncols=True)
    while step < n_steps:
        step += 1
        lr = get_lr(step - base_step, n_own, learning_rate, warmup_iters, min_lr, decay_lr)  # the run's own schedule
        for group in optimizer.param_groups:
            group["lr"] = lr
        segments = schedule.step_segments(step - base_step)
        packed = pack_rows(segments, max_seq_len, min_rows=n_micro) if pack else one_per_row(segments)
        if injection is not None:  # added segments; every sampled one keeps its row (the control's packing)
            packed = injection.add(packed, step, pack)
        n_step_tokens = int(packed["n_tokens"].sum())
        micro_batches = split_rows(packed, n_micro)[rank * gradient_accumulation_steps:
                                                    (rank + 1) * gradient_accumulation_steps]
        loss_acc = torch.zeros((), device=dev)
        for micro, part in enumerate(micro_batches):
            x, y, positions, segment_ids = batches.batch(part, dev, fixed_width=compile)
            # the step's loss is the mean over all its targets, whatever the micro-batch sizes
            weight = int(part["n_tokens"].sum()) * world / n_step_tokens
            sync = micro == gradient_accumulation_steps - 1
            with (nullcontext() if sync or not ddp else train_model.no_sync()), ctx:
                train_model(x, y, positions=positions, segment_ids=segment_ids)
                loss = model.last_loss * weight
            scaler.scale(loss).backward()
            loss_acc += loss.detach()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
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
            n_rows = int(packed["row"].max()) + 1
            recorder.step(step, packed, {
                "step": step, "tokens_seen": tokens_seen, "loss": repr(step_loss), "lr": repr(lr),
                "grad_norm": repr(float(grad_norm)), "tokens_per_s": round(n_step_tokens / dt, 1),
                "n_segments": len(packed), "n_rows": n_rows,
                "pad_fraction": round(1 - n_step_tokens / (n_rows * max_seq_len), 5)})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{n_step_tokens / dt:.0f}")
            if step % log_interval == 0:
                bar.write(f"step {step}: loss {step_loss:.4f}, lr {lr:.2e}, grad_norm {float(grad_norm):.3f}, "
                          f"{n_step_tokens / dt:.0f} tok/s")

        if step in ckpt_steps:
            rng_states = gather_rng_states(device_type, ddp, world)  # every rank takes part
            if master:
                model.eval()
                val_loss = story_loss(model, batches, val_sample, batch_size, ctx, dev)
                train_loss = story_loss(model, batches, train_sample, batch_size, ctx, dev)
                attn, probe_loss = capture_attn(model, attn_probes, ctx, dev) if instrument else ({}, {})
                model.train()
                bar.write(f"step {step}: val loss (first {len(val_sample)} of the validation sample) {val_loss:.4f}, "
                          f"train loss {train_loss:.4f}")
                weights = {"model": model.state_dict(), "model_args": args.to_dict(), "config": cfg, "step": step,
                           "tokens_seen": tokens_seen, "val_loss_sub": val_loss, "train_loss": train_loss,
                           "probe_attn": attn, "probe_loss": probe_loss, "provenance": run_provenance, "ids": ids,
                           "tokenizer_sha256": run_info["tokenizer_sha256"], "lineage": lineage or None}
                if step in optimizer_steps:  # a chosen branch point: keep the AdamW state too
                    weights["optimizer"] = optimizer.state_dict()
                resume_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict(), "model_args": args.to_dict(), "config": cfg,
                                "step": step, "tokens_seen": tokens_seen,
                                "sampler": {"step": step, "selection_sha256": schedule.selection_sha256,
                                            "injection_sha256": injection.sha256 if injection else None},
                                "rng": rng_states, "ids": ids, "tokenizer_sha256": run_info["tokenizer_sha256"],
                                "lineage": lineage or None}
                recorder.checkpoint(step, weights, {"step": step, "tokens_seen": tokens_seen,
                                                    "train_loss": repr(train_loss), "val_loss_sub": repr(val_loss)},
                                    resume_state)
    bar.close()
    if master:
        recorder.close()
        lock.release()
        print(f"done: {out} ({step} steps, {tokens_seen} tokens)")
    if ddp:
        from torch.distributed import destroy_process_group
        destroy_process_group()


def gather_rng_states(device_type, ddp, world):
    """Every rank's torch (and CUDA) RNG state, so a resumed run draws dropout exactly as the original."""
    states = {"torch": [torch.get_rng_state()], "cuda": None}
    if device_type == "cuda":
        states["cuda"] = [torch.cuda.get_rng_state()]
    if ddp:
        import torch.distributed as dist
        gathered = [None] * world
        dist.all_gather_object(gathered, {k: v[0] if v else None for k, v in states.items()})
        states = {k: [g[k] for g in gathered] if gathered[0][k] is not None else None for k in states}
    return states


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
