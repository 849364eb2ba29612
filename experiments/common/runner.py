"""Plan and run an experiment's runs (conditions × seeds) through the real modelling/train.py and eval.py.

A run is a plain dict: {name, condition, steps, train: {train.py option: value}, eval: {eval.py option: value},
...any labels the analysis wants (init_seed, data_seed, ...)}. The runner
  - prints the plan as plain shell commands (--plan) another scheduler could run as they are;
  - runs the runs not yet finished, `jobs` at a time, each as train.py then eval.py subprocesses;
  - resumes: a finished run (batch log covers its steps, last checkpoint at its last step, every checkpoint
    evaluated) is skipped, a run killed after a resume checkpoint continues from it, one killed before it
    restarts cleanly, and eval.py only evaluates checkpoints it has not seen;
  - keeps experiment.json (design + per-run status + provenance) and refuses to mix a different design into
    the same folder.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from common.errors import UserError
from common.io import REPO_ROOT, atomic_write_json, provenance
from common.paths import ROOT_ENV, root
from experiments.common import stats

TRAIN_SCRIPT = REPO_ROOT / "modelling" / "train.py"
EVAL_SCRIPT = REPO_ROOT / "eval.py"
SIZES = ("smoke", "demo", "full")
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # tiny models train fastest one thread per run, one run per core


# ---- the plan ----

def make_run(name, condition, steps, train, eval_args, **labels):
    """One planned run. `train` must not hold out_dir or init_from: the runner sets them."""
    reserved = {"out_dir", "init_from"} & set(train)
    if reserved:
        raise ValueError(f"train options {sorted(reserved)} are set by the runner")
    return {"name": name, "condition": condition, "steps": int(steps), "train": dict(train),
            "eval": dict(eval_args), **labels}


def train_command(run, run_dir, resume=False, python=None):
    """argv of modelling/train.py for this run (max_iters pinned to the planned steps)."""
    args = {"out_dir": str(run_dir), **run["train"], "max_iters": run["steps"]}
    if resume:
        args["init_from"] = "resume"
    return [python or sys.executable, str(TRAIN_SCRIPT)] + [f"--{k}={v}" for k, v in args.items()]


def eval_command(run, run_dir, python=None):
    cmd = [python or sys.executable, str(EVAL_SCRIPT), "--out_dir", str(run_dir)]
    for key, value in run["eval"].items():
        cmd += [f"--{key}", str(value)]
    return cmd


def plan_lines(runs, exp_dir):
    """The plan as plain shell commands, paths relative to the repository root: one `train && eval` line per
    run, runnable in any order and on any machine holding the same data/."""
    def relative(cmd):
        cmd = ["python"] + cmd[1:]
        return shlex.join(os.path.relpath(c, REPO_ROOT) if c.startswith(str(REPO_ROOT)) else c for c in cmd)
    lines = []
    for run in runs:
        run_dir = os.path.relpath(Path(exp_dir) / "runs" / run["name"], REPO_ROOT)
        lines.append(f"{relative(train_command(run, run_dir))} && {relative(eval_command(run, run_dir))}")
    return lines


def check_design(n_pairs, alpha=stats.ALPHA, n_primary=1):
    """{tested, reason, n_pairs, min_p, threshold}: a design whose smallest attainable p is not below
    alpha / n_primary is never called "tested"; its results are reported as underpowered."""
    tested, reason = stats.design_power(n_pairs, alpha, n_primary)
    return {"tested": tested, "reason": reason, "n_pairs": int(n_pairs), "min_p": stats.min_attainable_p(n_pairs),
            "threshold": alpha / max(1, n_primary), "alpha": alpha, "n_primary": int(n_primary)}


# ---- state of one run ----

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


def training_state(run_dir, n_steps):
    """'done' | 'resume' (stopped after a resume checkpoint) | 'restart' (died before one) | 'new'."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    if training_finished(run_dir, n_steps):
        return "done"
    if (run_dir / "ckpt" / "resume.pt").exists() and (run_dir / "config.json").exists():
        return "resume"
    return "restart"


def eval_complete(run_dir):
    """Every checkpoint of the run has a row in tables/summary.csv."""
    from modelling.checkpoints import list_checkpoints
    summary = Path(run_dir) / "tables" / "summary.csv"
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


# ---- experiment.json ----

class Experiment:
    """The experiment folder's state file, updated after every stage (thread-safe for parallel jobs). A
    re-run with a different design would mix incomparable runs in one folder, so it is refused."""

    def __init__(self, exp_dir, design):
        self.dir, self.design = Path(exp_dir), design
        path = self.dir / "experiment.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                raise UserError(f"{path} is not valid JSON — delete it to re-plan (finished runs are kept)")
            old = saved.get("design", {})
            diff = [k for k in design if k != "name" and old.get(k) != json.loads(json.dumps(design[k], default=str))]
            if diff:
                raise UserError(f"{self.dir} was planned with a different design (differs in: {', '.join(diff)}) "
                                f"— use a new --name, or delete that folder to start over")
            saved["design"] = design
            self.state = saved
        else:
            self.state = {"design": design, "status": {}, "provenance": provenance()}
        self.lock = threading.Lock()
        self.save()

    def save(self):
        with self.lock:
            self.state["updated"] = provenance()
            atomic_write_json(self.dir / "experiment.json", self.state)

    def update(self, run_name, **fields):
        with self.lock:
            self.state["status"].setdefault(run_name, {}).update(fields)
        self.save()


# ---- running ----

def child_env(jobs):
    """Environment of the stage subprocesses: one thread pool per job sized to the CPU share (a user's own
    OMP_NUM_THREADS wins), unbuffered output, and the experiment's project root."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[ROOT_ENV] = str(root().resolve())
    return env


def run_stage(cmd, log_path, what, env):
    """Run one stage as a subprocess, output appended to a log; a failure names the error line and the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise UserError(f"{what} failed (exit {proc.returncode}): {reason.strip()[-300:]} — full log: {log_path}; "
                        f"fix it and re-run the same command to resume")


def run_one(experiment, run, env):
    """Train (fresh, resumed or restarted) and evaluate one run; returns the training state it found."""
    run_dir = experiment.dir / "runs" / run["name"]
    log_path = experiment.dir / "logs" / f"{run['name']}.log"
    state = training_state(run_dir, run["steps"])
    if state == "restart":  # died before its first resume checkpoint: nothing worth keeping
        shutil.rmtree(run_dir)
    if state != "done":
        t0 = time.time()
        run_stage(train_command(run, run_dir, resume=state == "resume"), log_path, f"training {run['name']}", env)
        experiment.update(run["name"], train={"new": "trained", "restart": "restarted"}.get(state, "resumed"),
                          train_s=round(time.time() - t0, 1))
    if not eval_complete(run_dir):
        t0 = time.time()
        run_stage(eval_command(run, run_dir), log_path, f"eval of {run['name']}", env)
        if not eval_complete(run_dir):
            raise UserError(f"eval.py finished but {run_dir}/tables/summary.csv lacks some checkpoints — "
                            f"see {log_path}")
        experiment.update(run["name"], eval_s=round(time.time() - t0, 1))
    experiment.update(run["name"], done=True)
    return state


def pending(exp_dir, runs):
    """The runs not finished yet, in plan order."""
    return [r for r in runs if not run_finished(Path(exp_dir) / "runs" / r["name"], r["steps"])]


def run_all(exp_dir, design, runs, jobs=DEFAULT_JOBS):
    """Run every unfinished run (jobs at a time) and return the Experiment (its state file up to date)."""
    for script, what in ((TRAIN_SCRIPT, "modelling/train.py"), (EVAL_SCRIPT, "eval.py")):
        if not script.exists():
            raise UserError(f"{what} is missing from this checkout — restore it (git checkout {what})")
    experiment = Experiment(exp_dir, design)
    todo = pending(exp_dir, runs)
    if len(todo) < len(runs):
        print(f"skipping {len(runs) - len(todo)} finished run(s)")
    env = child_env(jobs)
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo), desc="runs", unit="run") as bar:
        futures = [pool.submit(run_one, experiment, run, env) for run in todo]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
        except BaseException:
            for f in futures:  # stop scheduling; runs in flight finish or are resumed next time
                f.cancel()
            raise
    experiment.state.setdefault("wall_s", {})[time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))] = \
        round(time.time() - t0, 1)
    experiment.save()
    return experiment


def add_arguments(parser, default_name="example", default_size="demo"):
    """The options every experiment script shares: --name, --size, --jobs, --plan."""
    parser.add_argument("--name", default=default_name, help=f"experiment folder name (default {default_name})")
    parser.add_argument("--size", choices=SIZES, default=default_size,
                        help="experiment size: smoke (tests, seconds), demo (2-core CPU, minutes), full (a GPU); "
                             "train.py's --preset is the model shape, set inside each size")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"runs trained/evaluated at once (default {DEFAULT_JOBS})")
    parser.add_argument("--plan", action="store_true", help="print the runs as shell commands, run nothing")


def check_arguments(args):
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise UserError(f"--name {args.name!r} must be a plain folder name — e.g. --name demo")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be >= 1 — e.g. --jobs 2")
