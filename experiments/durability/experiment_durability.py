"""Durability experiment: does the same data in a different order give a different end model?

One fixed selection of training stories is trained in several orders — random (the baseline, one data-order
seed per run), and ascending / descending by each chosen metadata metric — each with the same weight-init
seeds. Every run goes through the real modelling/train.py and eval.py as subprocesses. Then the runs are
compared across time (output-metric curves, mean ± 95% CI over seeds, plateau steps) and at the end point
(final metrics vs the baseline with bootstrap CIs, permutation tests and effect sizes; final-model divergence:
val loss, next-token KL on the probe set, embedding similarity after orthogonal Procrustes alignment).

    python experiments/durability/experiment_durability.py     # = --name example --dataset storyworld
                                                               #   --vocab_size 512 --preset demo

Writes out/experiments/durability/NAME/{runs/<condition>_s<seed>/, results.csv, runs.csv, curves.csv,
divergence.csv, figures/*.png, report.md, experiment.json}. Re-running the same command resumes: finished runs
are skipped, a run killed mid-training continues from its resume checkpoint (or restarts cleanly if it died
before one), and eval.py only evaluates checkpoints it has not seen.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.ids import selection_id_of, tokenized_id  # noqa: E402
from common.io import REPO_ROOT, atomic_write_json, provenance, sha256_file  # noqa: E402
from common.paths import (DEFAULT_DATASET, DEFAULT_EXPERIMENT, DEFAULT_VOCAB, ROOT_ENV, add_root_argument,  # noqa: E402
                          apply_root, require, root, tok_dir)
from experiments.durability.naming import BASELINE, experiments_dir, run_name  # noqa: E402

TRAIN_SCRIPT = REPO_ROOT / "modelling" / "train.py"
EVAL_SCRIPT = REPO_ROOT / "eval.py"
DEFAULT_METRICS = ["flesch_ease", "sentiment"]  # a readability metric and sentiment
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # tiny models train fastest one thread per run, one run per core

# Size presets. `train` = train.py overrides shared by every run (the sampler keys are set per condition;
# `eval` = eval.py options.
# smoke: seconds per run, for tests/CI. demo: a 4,000-story selection, stories cut into 128-token segments, for a
# 2-core CPU. full: a GPU-size study (llama2.c's 15M shape, 5 seeds). `measured`: seconds per training step (at
# that batch size) and per run's evaluation, from the committed example (experiments/durability/example: 15
# runs of 218 steps, mean 115 s train + 110 s eval per run, --jobs 2, one thread per run, on the 2-core VM)
# — the expected duration printed before a run is computed from them.
PRESETS = {
    "smoke": dict(metrics=DEFAULT_METRICS[:1], init_seeds=[0, 1], data_seeds=[0, 1],
                  train=dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, max_seq_len=48,
                             batch_size=128, learning_rate=1e-2, warmup_iters=2, eval_interval=1000,
                             eval_iters=1, n_probe_stories=2, probe_len=16, dtype="float32"),
                  eval=dict(n_prompts=2, prefix_tokens=4, max_new_tokens=8)),
    "demo": dict(metrics=DEFAULT_METRICS, init_seeds=[0, 1, 2], data_seeds=[0, 1, 2], n_stories=4000,
                 measured=dict(train_s_per_step=0.53, batch_size=18, eval_s_per_run=110),
                 train=dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=128,
                            batch_size=16, learning_rate=3e-3, warmup_iters=10, eval_interval=50, eval_iters=2,
                            n_probe_stories=8, probe_len=128, dtype="float32"),
                 eval=dict(n_prompts=4, max_new_tokens=48)),
    "full": dict(metrics=DEFAULT_METRICS, init_seeds=[0, 1, 2, 3, 4], data_seeds=[0, 1, 2, 3, 4],
                 train=dict(preset="15M", batch_size=64, learning_rate=5e-4, warmup_iters=100, eval_interval=200,
                            eval_iters=20, n_probe_stories=8, probe_len=256),
                 eval=dict(n_prompts=16, max_new_tokens=200)),
}
# keys the experiment sets itself per run; a --set of one of these would break the design
RESERVED_TRAIN_KEYS = {"out_dir", "dataset", "vocab_size", "seed", "data_seed", "sampler", "sort_by", "sort_order",
                       "filter_column", "threshold", "filter_keep", "n_stories", "selection_seed", "epochs",
                       "max_iters", "init_from"}


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
            runs.append(dict(name=run_name(condition, init_seed), condition=condition, sampler=sampler,
                             sort_by=sort_by, init_seed=init_seed, data_seed=data_seed))
    return runs


def pin_selection(design):
    """Make every run train on one selection.

    train.py draws the selection (an n_stories budget) with its selection_seed, which every run of the
    experiment shares, and cuts every story into segments; the data seeds only order the segments
    (modelling/samplers.py). The selection and its step count are computed here with train.py's own
    SegmentSampler and fingerprinted; the batch logs are checked against it after training."""
    from modelling.samplers import SegmentSampler
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset(design["dataset"], design["vocab_size"])
    train_ids = ds.story_ids("train")
    if design["n_stories"] >= len(train_ids):
        design["n_stories"] = 0  # the whole train split
    train = design["train"]
    segments_per_step = int(train.get("batch_size", 16)) * int(train.get("gradient_accumulation_steps", 1))
    schedule = SegmentSampler(train_ids, ds.n_tokens, int(train.get("max_seq_len", 256)), segments_per_step,
                              n_stories=design["n_stories"], selection_seed=design["selection_seed"])
    design["selection"] = {"n_stories": int(len(schedule.selection)), "n_segments": int(len(schedule.segments)),
                           "n_tokens": schedule.n_tokens, "segments_per_step": segments_per_step,
                           "steps_per_epoch": schedule.steps_per_epoch,
                           "id": selection_id_of(tokenized_id(ds.dir), {"n_stories": design["n_stories"],
                                                 "selection_seed": design["selection_seed"],
                                                 "max_seq_len": int(train.get("max_seq_len", 256))},
                                                 schedule.selection_sha256)}
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
    n_stories = args.n_stories if args.n_stories is not None else preset.get("n_stories", 0)
    if n_stories < 0:
        raise UserError(f"--n_stories {n_stories} must be >= 0 (0 = the whole train split)")
    train = {**preset["train"], **parse_set(args.set)}
    eval_args = dict(preset["eval"])
    if args.max_new_tokens is not None:
        eval_args["max_new_tokens"] = args.max_new_tokens
    data = tok_dir(args.dataset, args.vocab_size)
    design = dict(name=args.name, dataset=args.dataset, vocab_size=args.vocab_size, preset=args.preset,
                  metrics=metrics, n_stories=n_stories, selection_seed=args.selection_seed, epochs=args.epochs,
                  init_seeds=init_seeds,
                  data_seeds=data_seeds, train=train, eval=eval_args, baseline=BASELINE,
                  data_ids={"tokenized": tokenized_id(data), "metadata_sha256": sha256_file(data / "metadata.parquet")},
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
            "n_stories": design["n_stories"], "selection_seed": design["selection_seed"], "epochs": design["epochs"],
            "max_iters": -1, **design["train"]}
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


def planned_steps(design):
    return design["selection"]["steps_per_epoch"] * design["epochs"]


def expected_seconds(design, n_runs, jobs):
    """Wall seconds for n_runs runs from the preset's measured per-step and per-evaluation costs (None when the
    preset has no measurement). Tiny models run one thread per run, so jobs up to the core count overlap."""
    preset = PRESETS[design["preset"]]
    measured = preset.get("measured")
    shape = {k: v for k, v in design["train"].items() if k != "batch_size"}
    if not measured or shape != {k: v for k, v in preset["train"].items() if k != "batch_size"}:
        return None  # --set changed the model: the measurement does not apply
    batch_scale = design["train"].get("batch_size", 16) / measured["batch_size"]  # step cost ∝ segments per step
    per_run = planned_steps(design) * measured["train_s_per_step"] * batch_scale + measured["eval_s_per_run"]
    return n_runs * per_run / max(1, min(jobs, os.cpu_count() or 1))


def print_plan(design, exp_dir, todo, jobs):
    """The plan before anything runs: conditions, seeds, selection, steps and the expected duration."""
    runs = design["runs"]
    conditions = list(dict.fromkeys(r["condition"] for r in runs))  # baseline first, then the sorted orders
    print(f"durability experiment {design['name']} ({design['preset']} preset) → {exp_dir}\n"
          f"  conditions: {', '.join(conditions)} × init seeds {design['init_seeds']} = {len(runs)} runs\n"
          f"  each run: {design['selection']['n_stories']} stories × {design['epochs']} epoch(s) = "
          f"{planned_steps(design)} steps of {design['selection']['segments_per_step']} segments, then eval.py")
    seconds = expected_seconds(design, len(todo), jobs)
    if not todo:
        print("  every run is finished: only the analysis runs")
    elif seconds is None:
        print(f"  {len(todo)} run(s) to do; no measured duration for this preset/size")
    else:
        print(f"  {len(todo)} run(s) to do with --jobs {jobs}: expected ≈ {seconds / 60:.0f} min on a 2-core CPU "
              f"(from the preset's measured step and eval times)")


def training_state(run_dir, n_steps):
    """'done' | 'resume' (stopped after a resume checkpoint) | 'restart' (died before one) | 'new'."""
    if not run_dir.exists():
        return "new"
    if training_finished(run_dir, n_steps):
        return "done"
    if (run_dir / "ckpt" / "resume.pt").exists() and (run_dir / "config.json").exists():
        return "resume"
    return "restart"


def training_finished(run_dir, n_steps):
    """The batch log covers the planned steps and the last checkpoint is at the last step."""
    from modelling.batch_log import BatchLog
    from modelling.checkpoints import list_checkpoints
    try:
        logged = len(BatchLog(run_dir))
    except UserError:
        return False
    checkpoints = list_checkpoints(run_dir)
    return logged >= n_steps and bool(checkpoints) and checkpoints[-1][0] == n_steps


def child_env(jobs):
    """Environment of the stage subprocesses: one BLAS/OpenMP pool per job sized to the CPU share, so
    parallel runs (and other users of a shared CPU) do not oversubscribe the cores; a user's own
    OMP_NUM_THREADS wins."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[ROOT_ENV] = str(root().resolve())  # the stages read data/ from the experiment's project root
    return env


def run_stage(cmd, log_path, what, env):
    """Run one stage as a subprocess, its output appended to a log file; a failure names the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise UserError(f"{what} failed (exit {proc.returncode}): {reason.strip()[-300:]} — full log: {log_path}; "
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
    checkpoints = list_checkpoints(run_dir)
    return bool(checkpoints) and all(step in done for step, _ in checkpoints)


def run_finished(run_dir, n_steps):
    return training_finished(run_dir, n_steps) and eval_complete(run_dir)


class Experiment:
    """The experiment folder's state: experiment.json, updated after every stage (thread-safe for --jobs)."""

    def __init__(self, exp_dir, design):
        self.dir, self.design = exp_dir, design
        self.state = load_or_create_experiment(exp_dir, design)
        self.lock = threading.Lock()
        self.save()

    def save(self):
        with self.lock:
            save_experiment(self.dir, self.state)

    def update(self, run_name, **fields):
        with self.lock:
            self.state["status"].setdefault(run_name, {}).update(fields)
        self.save()


def run_one(experiment, run, env):
    """Train (fresh, resumed or restarted) and evaluate one condition × seed; returns what was done."""
    design, exp_dir = experiment.design, experiment.dir
    run_dir = exp_dir / "runs" / run["name"]
    log_path = exp_dir / "logs" / f"{run['name']}.log"
    state = training_state(run_dir, planned_steps(design))
    if state == "restart":  # died before its first resume checkpoint: nothing worth keeping
        shutil.rmtree(run_dir)
    if state != "done":
        t0 = time.time()
        run_stage(train_command(design, run, run_dir, resume=state == "resume"), log_path,
                  f"training {run['name']}", env)
        experiment.update(run["name"], train={"new": "trained", "restart": "restarted"}.get(state, "resumed"),
                          train_s=round(time.time() - t0, 1))
    if not eval_complete(run_dir):
        t0 = time.time()
        run_stage(eval_command(design, run_dir), log_path, f"eval of {run['name']}", env)
        if not eval_complete(run_dir):
            raise UserError(f"eval.py finished but {run_dir}/tables/summary.csv lacks some checkpoints — "
                            f"see {log_path}")
        experiment.update(run["name"], eval_s=round(time.time() - t0, 1))
    experiment.update(run["name"], done=True)
    return state


# ---- main ----

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=DEFAULT_EXPERIMENT,
                   help=f"experiment name: out/experiments/durability/NAME (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB, help=f"vocab (default {DEFAULT_VOCAB})")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="size preset (smoke: tests; demo: embedded corpus, minutes; full: GPU)")
    p.add_argument("--metrics", help=f"comma-separated metadata columns to sort by (default "
                                     f"{','.join(DEFAULT_METRICS)}; smoke: the first)")
    p.add_argument("--n_stories", type=int, default=None,
                   help="selection size (0 = the whole train split; default: the preset's, demo 4000, else 0); "
                        "drawn once with --selection_seed")
    p.add_argument("--selection_seed", type=int, default=0,
                   help="train.py's selection_seed: which stories a budget picks, the same in every run")
    p.add_argument("--epochs", type=int, default=1, help="passes over the selection (same in every run)")
    p.add_argument("--init_seeds", help="weight-init seeds, comma-separated, the same for every condition")
    p.add_argument("--data_seeds", help="data-order seeds of the random baseline, one per init seed")
    p.add_argument("--max_new_tokens", type=int, help="tokens eval.py generates per prompt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="extra modelling/train.py override for every run (repeatable), e.g. --set dim=64")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="runs trained/evaluated in parallel (each gets "
                                                                  f"cpu_count/jobs threads; default {DEFAULT_JOBS})")
    p.add_argument("--plan", action="store_true", help="print the runs and their commands, run nothing")
    add_root_argument(p)
    return apply_root(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise UserError(f"--name {args.name!r} must be a plain folder name, e.g. --name demo")
    if args.epochs < 1 or args.jobs < 1:
        raise UserError(f"--epochs {args.epochs} and --jobs {args.jobs} must be >= 1")
    design = build_design(args)
    exp_dir = experiments_dir() / args.name
    runs = design["runs"]
    todo = [r for r in runs if not run_finished(exp_dir / "runs" / r["name"], planned_steps(design))]
    todo.sort(key=lambda r: design["init_seeds"].index(r["init_seed"]))  # seed-major: every condition early
    print_plan(design, exp_dir, todo, args.jobs)
    if args.plan:
        for run in runs:
            print(run["name"], " ".join(train_command(design, run, exp_dir / "runs" / run["name"], False)[1:]))
        return
    require(TRAIN_SCRIPT, "training stage", "modelling/train.py is missing from this checkout")
    require(EVAL_SCRIPT, "eval stage", "eval.py is missing from this checkout")
    experiment = Experiment(exp_dir, design)
    if len(todo) < len(runs):
        print(f"skipping {len(runs) - len(todo)} finished run(s): "
              f"{', '.join(r['name'] for r in runs if r not in todo)}")
    env = child_env(args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool, \
            tqdm(total=len(todo), desc="runs", unit="run") as bar:
        futures = [pool.submit(run_one, experiment, run, env) for run in todo]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
        except BaseException:
            for f in futures:  # stop scheduling; runs in flight finish or are resumed next time
                f.cancel()
            raise

    from experiments.durability.analysis import analyse
    def record(summary):
        experiment.state["analysis"] = summary
        experiment.save()

    summary = analyse(exp_dir, design, record)
    record(summary)
    print(f"wrote {exp_dir}/results.csv, report.md, figures/ "
          f"(same story multiset in every run: {summary['same_multiset']})")


if __name__ == "__main__":
    run_main(main)
