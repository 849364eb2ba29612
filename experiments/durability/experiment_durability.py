"""Durability experiment: does the same data in a different order give a different end model?

One fixed selection of training stories is trained in several orders — random (the baseline, one data-order
seed per run), and ascending / descending by each chosen metadata metric — each with the same weight-init
seeds. Every run goes through the real modelling/train.py and eval.py as subprocesses. Then the runs are
compared across time (output-metric curves, mean ± 95% CI over seeds, plateau steps) and at the end point
(final metrics vs the baseline with bootstrap CIs, permutation tests and effect sizes; final-model divergence:
val loss, next-token KL on the probe set, embedding similarity after orthogonal Procrustes alignment).

    python experiments/durability/experiment_durability.py --name demo --dataset storyworld --vocab_size 512

Writes out/experiments/durability/NAME/{runs/<condition>_s<seed>/, results.csv, runs.csv, curves.csv,
divergence.csv, figures/*.png, report.md, experiment.json}. Re-running the same command resumes: finished runs
are skipped, a run killed mid-training continues from its resume checkpoint (or restarts cleanly if it died
before one), and eval.py only evaluates checkpoints it has not seen.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.io import REPO_ROOT, atomic_write_json, provenance, sha256_file  # noqa: E402
from common.paths import OUT_DIR, require, tok_dir  # noqa: E402

EXPERIMENTS_DIR = OUT_DIR / "experiments" / "durability"
TRAIN_SCRIPT = REPO_ROOT / "modelling" / "train.py"
EVAL_SCRIPT = REPO_ROOT / "eval.py"
BASELINE = "random"
DEFAULT_METRICS = ["flesch_ease", "sentiment"]  # a readability metric and sentiment

# Size presets. `train` = train.py overrides shared by every run (the sampler keys are set per condition);
# `eval` = eval.py options. smoke: seconds per run, for tests/CI. demo: the embedded corpus in < 30 min on a
# 2-core CPU. full: a GPU-size study (llama2.c's 15M shape, the whole train split).
PRESETS = {
    "smoke": dict(n_stories=96, metrics=DEFAULT_METRICS[:1], init_seeds=[0, 1], data_seeds=[0, 1],
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, max_seq_len=64,
                             batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-3, warmup_iters=2,
                             eval_interval=6, eval_iters=2, compile=False),
                  eval=dict(n_prompts=2, max_new_tokens=16)),
    "demo": dict(n_stories=3072, metrics=DEFAULT_METRICS, init_seeds=[0, 1, 2], data_seeds=[0, 1, 2],
                 train=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=128,
                            batch_size=32, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_iters=10,
                            eval_interval=16, eval_iters=4),
                 eval=dict(n_prompts=8, max_new_tokens=64)),
    "full": dict(n_stories=0, metrics=DEFAULT_METRICS, init_seeds=[0, 1, 2, 3, 4], data_seeds=[0, 1, 2, 3, 4],
                 train=dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, max_seq_len=256,
                            batch_size=64, gradient_accumulation_steps=1, learning_rate=5e-4, warmup_iters=100,
                            eval_interval=200, eval_iters=20),
                 eval=dict(n_prompts=16, max_new_tokens=200)),
}
# keys the experiment sets itself per run; a --set of one of these would break the design
RESERVED_TRAIN_KEYS = {"out_dir", "dataset", "vocab_size", "seed", "data_seed", "sampler", "sort_by",
                       "n_stories", "max_iters", "init_from"}


# ---- design ----

def parse_seeds(text, what):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of integers — e.g. --{what} 0,1,2")
    if len(seeds) != len(set(seeds)) or not seeds:
        raise UserError(f"--{what} {text!r} must list distinct seeds — e.g. --{what} 0,1,2")
    return seeds


def parse_set(items):
    """--set key=value pairs (extra train.py overrides), kept as strings: train.py type-checks them."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not key=value — e.g. --set dim=64")
        if key in RESERVED_TRAIN_KEYS:
            raise UserError(f"--set {key}=… is chosen by the experiment per run; use the experiment's own "
                            f"option instead (--dataset, --vocab_size, --n_stories, --init_seeds, …)")
        overrides[key] = value
    return overrides


def metadata_columns(dataset, vocab_size):
    """Numeric columns of the dataset's metadata table (metadata.parquet), read from its schema."""
    import pyarrow.parquet as pq
    path = require(tok_dir(dataset, vocab_size) / "metadata.parquet", "metadata table",
                   f"run: python metadata/batch_metadata.py compute_metadata --dataset {dataset} "
                   f"--vocab_size {vocab_size}")
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}) — re-run compute_metadata")
    import pyarrow as pa
    return [f.name for f in schema if f.name != "story_id" and
            (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]


def plan_runs(metrics, init_seeds, data_seeds):
    """Conditions × seeds. Run i of every condition uses init seed i; the random baseline's run i also uses
    data-order seed i (so the baseline varies both, the sorted orders only the init)."""
    conditions = [(BASELINE, "random", None)]
    for metric in metrics:
        conditions += [(f"asc_{metric}", "sort_ascending", metric), (f"desc_{metric}", "sort_descending", metric)]
    runs = []
    for condition, sampler, sort_by in conditions:
        for init_seed, data_seed in zip(init_seeds, data_seeds):
            runs.append(dict(name=f"{condition}_s{init_seed}", condition=condition, sampler=sampler,
                             sort_by=sort_by, init_seed=init_seed, data_seed=data_seed))
    return runs


def nearest_divisor(n, target, lo, hi):
    """The divisor of n in [lo, hi] closest to target (smaller first on a tie), or None."""
    found = [d for d in range(max(1, lo), hi + 1) if n % d == 0]
    return min(found, key=lambda d: (abs(d - target), d)) if found else None


def pin_selection(design):
    """Make every run train on one selection, and measure val loss on one validation set.

    train.py draws a budgeted selection (n_stories) and trims it to whole steps with the *data-order* seed,
    and samples its fixed validation subset with it too (modelling/samplers.py, train.py). So the random
    baseline's seeds would see different stories unless (1) the selection is the whole train split and (2)
    it fills whole steps, and (3) eval_iters * batch_size covers the whole val split. This picks the batch
    size (nearest divisor of the train split's size) and eval_iters, then checks with train.py's own
    select_stories that every planned data seed gives the identical selection."""
    from modelling.samplers import select_stories
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(design["dataset"], design["vocab_size"])
    train_ids, val_ids = ds.story_ids("train"), ds.story_ids("val")
    n_train = len(train_ids)
    train = design["train"]
    if 0 < design["n_stories"] < n_train:
        raise UserError(f"--n_stories {design['n_stories']}: train.py draws a partial selection with the "
                        f"data-order seed, so the baseline's seeds would train on different stories — use "
                        f"--n_stories 0 (the whole train split, {n_train} stories here) or a smaller dataset")
    design["n_stories"] = 0
    batch = int(train.get("batch_size", 16))
    accum = int(train.get("gradient_accumulation_steps", 1))
    if n_train % (batch * accum):
        fitted = nearest_divisor(n_train // accum, batch, batch // 2, 2 * batch) if n_train % accum == 0 else None
        if fitted is None:
            raise UserError(f"the {n_train} train stories do not fill whole steps of any batch size in "
                            f"[{batch // 2}, {2 * batch}] (× gradient_accumulation_steps {accum}); train.py would "
                            f"trim them with the data-order seed — pick --set batch_size=B with B dividing {n_train}")
        train["batch_size"] = batch = fitted
    train["eval_iters"] = max(int(train.get("eval_iters", 1)), -(-len(val_ids) // batch))
    stories_per_step = batch * accum
    selections = {seed: select_stories(train_ids, stories_per_step, seed, n_stories=0)
                  for seed in sorted(set(design["data_seeds"]))}
    first = next(iter(selections.values()))
    if any(not np.array_equal(first, sel) for sel in selections.values()):
        raise UserError("train.py's select_stories gives different selections for the planned data seeds — "
                        "the orders would not be comparable; use one dataset with a whole-step train split")
    design["selection"] = {"n_stories": int(len(first)), "stories_per_step": stories_per_step,
                           "steps_per_epoch": int(len(first)) // stories_per_step,
                           "sha256": hashlib.sha256(first.astype("<i8").tobytes()).hexdigest(),
                           "n_val": int(len(val_ids))}
    return design


def build_design(args):
    preset = PRESETS[args.preset]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else preset["metrics"]
    init_seeds = parse_seeds(args.init_seeds, "init_seeds") if args.init_seeds else preset["init_seeds"]
    data_seeds = parse_seeds(args.data_seeds, "data_seeds") if args.data_seeds else preset["data_seeds"]
    if len(data_seeds) != len(init_seeds):
        raise UserError(f"--data_seeds has {len(data_seeds)} seeds but --init_seeds has {len(init_seeds)} — "
                        f"give one data-order seed per init seed (run i of the baseline uses both seed i)")
    if not metrics or len(set(metrics)) != len(metrics):
        raise UserError(f"--metrics {args.metrics!r} must name distinct metadata columns — e.g. "
                        f"--metrics {','.join(DEFAULT_METRICS)}")
    columns = metadata_columns(args.dataset, args.vocab_size)
    unknown = [m for m in metrics if m not in columns]
    if unknown:
        raise UserError(f"unknown metadata column(s) {', '.join(unknown)} — available: {', '.join(columns)}")
    n_stories = preset["n_stories"] if args.n_stories is None else args.n_stories
    if n_stories < 0:
        raise UserError(f"--n_stories {n_stories} must be >= 0 (0 = the whole train split)")
    train = {**preset["train"], **parse_set(args.set)}
    eval_args = dict(preset["eval"])
    if args.max_new_tokens is not None:
        eval_args["max_new_tokens"] = args.max_new_tokens
    data = tok_dir(args.dataset, args.vocab_size)
    design = dict(name=args.name, dataset=args.dataset, vocab_size=args.vocab_size, preset=args.preset,
                  metrics=metrics, n_stories=n_stories, epochs=args.epochs, init_seeds=init_seeds,
                  data_seeds=data_seeds, train=train, eval=eval_args, baseline=BASELINE,
                  data_sha256={f: sha256_file(data / f) for f in ("index.parquet", "metadata.parquet")},
                  runs=plan_runs(metrics, init_seeds, data_seeds))
    return pin_selection(design)


def load_or_create_experiment(exp_dir, design):
    """experiment.json holds the design and the per-run status. A re-run with a different design would mix
    incomparable runs in one folder, so it is refused (with the keys that differ)."""
    path = exp_dir / "experiment.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is not valid JSON — delete it to re-plan (finished runs are kept and reused)")
        diff = [k for k in design if k != "name" and saved.get("design", {}).get(k) != design[k]]
        if diff:
            raise UserError(f"{exp_dir} was planned with a different design (differs in: {', '.join(diff)}) — "
                            f"use a new --name, or delete that folder to start over")
        saved["design"] = design
        return saved
    return {"design": design, "status": {}, "provenance": provenance()}


def save_experiment(exp_dir, experiment):
    experiment["updated"] = provenance()
    atomic_write_json(exp_dir / "experiment.json", experiment)


# ---- running one condition × seed through the real stages ----

def train_command(design, run, run_dir, resume):
    args = {"out_dir": str(run_dir), "dataset": design["dataset"], "vocab_size": design["vocab_size"],
            "seed": run["init_seed"], "data_seed": run["data_seed"], "sampler": run["sampler"],
            "n_stories": design["n_stories"], "epochs": design["epochs"], "max_iters": -1, **design["train"]}
    if run["sort_by"]:
        args["sort_by"] = run["sort_by"]
    if resume:
        args["init_from"] = "resume"
    return [sys.executable, str(TRAIN_SCRIPT)] + [f"--{k}={v}" for k, v in args.items()]


def eval_command(design, run_dir):
    cmd = [sys.executable, str(EVAL_SCRIPT), "--out_dir", str(run_dir)]
    for key, value in design["eval"].items():
        cmd += [f"--{key}", str(value)]
    return cmd


def training_state(run_dir):
    """'done' | 'resume' (killed after a resume checkpoint) | 'restart' (killed before one) | 'new'."""
    if not run_dir.exists():
        return "new"
    if training_finished(run_dir):
        return "done"
    if (run_dir / "ckpt" / "resume.pt").exists() and (run_dir / "config.json").exists():
        return "resume"
    return "restart"


def training_finished(run_dir):
    """The batch log covers the run's n_steps (config.json) and that step's checkpoint exists."""
    from modelling.batch_log import BatchLog
    from modelling.checkpoints import list_checkpoints
    try:
        n_steps = json.loads((run_dir / "config.json").read_text())["n_steps"]
        logged = len(BatchLog(run_dir))
    except (OSError, ValueError, KeyError, UserError):
        return False
    checkpoints = list_checkpoints(run_dir)
    return logged >= n_steps and bool(checkpoints) and checkpoints[-1][0] == n_steps


def run_stage(cmd, log_path, what):
    """Run one stage as a subprocess, its output appended to a log file; a failure names the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise UserError(f"{what} failed (exit {proc.returncode}): {reason.strip()} — full log: {log_path}; "
                        f"fix it and re-run the same command to resume")


def eval_complete(run_dir):
    """Every checkpoint of the run has a row in tables/summary.csv."""
    from modelling.checkpoints import list_checkpoints
    summary = run_dir / "tables" / "summary.csv"
    if not summary.exists():
        return False
    try:
        done = set(pd.read_csv(summary, usecols=["step"])["step"])
    except (ValueError, pd.errors.ParserError):
        return False
    return all(step in done for step, _ in list_checkpoints(run_dir))


def run_one(design, run, exp_dir, experiment):
    run_dir = exp_dir / "runs" / run["name"]
    log_path = exp_dir / "logs" / f"{run['name']}.log"
    status = experiment["status"].setdefault(run["name"], {})
    state = training_state(run_dir)
    if state == "restart":  # died before its first resume checkpoint: nothing worth keeping
        shutil.rmtree(run_dir)
    if state != "done":
        t0 = time.time()
        run_stage(train_command(design, run, run_dir, resume=state == "resume"), log_path, f"training {run['name']}")
        status["train_s"] = round(status.get("train_s", 0) + time.time() - t0, 1)
        status["train"] = "resumed" if state == "resume" else "trained"
        save_experiment(exp_dir, experiment)
    if not eval_complete(run_dir):
        t0 = time.time()
        run_stage(eval_command(design, run_dir), log_path, f"eval of {run['name']}")
        status["eval_s"] = round(status.get("eval_s", 0) + time.time() - t0, 1)
        if not eval_complete(run_dir):
            raise UserError(f"eval.py finished but {run_dir}/tables/summary.csv lacks some checkpoints — "
                            f"see {log_path}")
    status["done"] = True
    save_experiment(exp_dir, experiment)
    return state


# ---- main ----

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="experiment name: out/experiments/durability/NAME")
    p.add_argument("--dataset", default="storyworld")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="size preset (smoke: tests; demo: embedded corpus, minutes; full: GPU)")
    p.add_argument("--metrics", help=f"comma-separated metadata columns to sort by (default "
                                     f"{','.join(DEFAULT_METRICS)}; smoke: the first)")
    p.add_argument("--n_stories", type=int, help="size of the fixed selection of train stories (0 = all)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the selection (same in every run)")
    p.add_argument("--init_seeds", help="weight-init seeds, comma-separated, the same for every condition")
    p.add_argument("--data_seeds", help="data-order seeds of the random baseline, one per init seed")
    p.add_argument("--max_new_tokens", type=int, help="tokens eval.py generates per prompt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="extra modelling/train.py override for every run (repeatable), e.g. --set dim=64")
    p.add_argument("--plan", action="store_true", help="print the runs and their commands, run nothing")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise UserError(f"--name {args.name!r} must be a plain folder name, e.g. --name demo")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be >= 1")
    design = build_design(args)
    exp_dir = EXPERIMENTS_DIR / args.name
    if args.plan:
        for run in design["runs"]:
            print(run["name"], " ".join(train_command(design, run, exp_dir / "runs" / run["name"], False)[1:]))
        return
    require(TRAIN_SCRIPT, "training stage", "the modelling engineer's modelling/train.py is missing")
    experiment = load_or_create_experiment(exp_dir, design)
    save_experiment(exp_dir, experiment)
    runs = design["runs"]
    print(f"durability experiment {args.name}: {len(runs)} runs "
          f"({len(runs) // len(design['init_seeds'])} conditions × {len(design['init_seeds'])} seeds) → {exp_dir}")
    skipped = []
    for run in tqdm(runs, desc="runs", unit="run"):
        if experiment["status"].get(run["name"], {}).get("done") and eval_complete(exp_dir / "runs" / run["name"]):
            skipped.append(run["name"])
            continue
        run_one(design, run, exp_dir, experiment)
    if skipped:
        print(f"skipped {len(skipped)} finished run(s): {', '.join(skipped)}")

    from experiments.durability.analysis import analyse
    def record(summary):
        experiment["analysis"] = summary
        save_experiment(exp_dir, experiment)

    summary = analyse(exp_dir, design, record)
    record(summary)
    print(f"wrote {exp_dir}/results.csv, report.md, figures/ "
          f"(same story multiset in every run: {summary['same_multiset']})")


if __name__ == "__main__":
    run_main(main)
