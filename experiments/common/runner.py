"""Plan and run an experiment's runs (conditions × seeds) through the real modelling/train.py and eval.py.

A run is a plain dict: {name, condition, steps, train: {train.py option: value}, eval: {eval.py option: value},
...any labels the analysis wants (init_seed, data_seed, ...)}; eval None = train only (the experiment measures
its checkpoints itself); a `branch_from` label (a parent checkpoint path) makes train.py branch from it. The runner
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
from common.machine import machine_info
from common.paths import ROOT_ENV, root
from experiments.common import stats

TRAIN_SCRIPT = REPO_ROOT / "modelling" / "train.py"
EVAL_SCRIPT = REPO_ROOT / "eval.py"
SIZES = ("smoke", "demo", "full")
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # tiny models train fastest one thread per run, one run per core


# ---- the plan ----

def make_run(name, condition, steps, train, eval_args, **labels):
    """One planned run. `train` must not hold out_dir or init_from: the runner sets them. eval_args None: the
    run is only trained (its outcomes come from train.py's own logs)."""
    reserved = {"out_dir", "init_from"} & set(train)
    if reserved:
        raise ValueError(f"train options {sorted(reserved)} are set by the runner")
    return {"name": name, "condition": condition, "steps": int(steps), "train": dict(train),
            "eval": None if eval_args is None else dict(eval_args), **labels}


def train_command(run, run_dir, resume=False, python=None):
    """argv of modelling/train.py for this run (max_iters pinned to the planned steps)."""
    args = {"out_dir": str(run_dir), **run["train"], "max_iters": run["steps"]}
    if resume or run.get("branch_from"):  # branch_from: a parent checkpoint (train.py branches from it)
        args["init_from"] = "resume" if resume else run["branch_from"]
    return [python or sys.executable, str(TRAIN_SCRIPT)] + [f"--{k}={v}" for k, v in args.items()]


def eval_command(run, run_dir, python=None):
    cmd = [python or sys.executable, str(EVAL_SCRIPT), "--out_dir", str(run_dir)]
    for key, value in run["eval"].items():
        cmd += [f"--{key}"] + ([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)])
    return cmd


def plan_lines(runs, exp_dir):
    """The plan as plain shell commands: one `train && eval` line per run, runnable in any order and on any
    machine holding the same data/, from the repository root (scripts relative to it) with run folders relative
    to the project root (which the stages resolve --out_dir against; usually the same folder)."""
    def relative(cmd):
        cmd = ["python"] + cmd[1:]
        return shlex.join(os.path.relpath(c, REPO_ROOT) if c.startswith(str(REPO_ROOT)) else c for c in cmd)
    base = root().resolve()
    lines = []
    for run in runs:
        path = (Path(exp_dir) / "runs" / run["name"]).resolve()
        run_dir = path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
        line = relative(train_command(run, run_dir))
        if run["eval"] is not None:
            line += f" && {relative(eval_command(run, run_dir))}"
        lines.append(line)
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
    offset = int(BatchLog(run_dir).meta.get("step_offset") or 0)  # a branch counts on from its parent's step
    return logged >= n_steps and bool(checkpoints) and checkpoints[-1][0] == offset + n_steps


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


def eval_complete(run_dir, steps=None):
    """Every checkpoint of the run (or every one of `steps`, eval.py's --steps) has a row in
    tables/summary.csv."""
    from modelling.checkpoints import list_checkpoints
    summary = Path(run_dir) / "tables" / "summary.csv"
    if not summary.exists():
        return False
    try:
        done = set(pd.read_csv(summary, usecols=["step"])["step"])
    except (ValueError, pd.errors.ParserError):
        return False
    wanted = list(steps) if steps else [step for step, _ in list_checkpoints(run_dir)]
    return bool(wanted) and all(step in done for step in wanted)


def run_finished(run_dir, run):
    return training_finished(run_dir, run["steps"]) and (
        run["eval"] is None or eval_complete(run_dir, run["eval"].get("steps")))


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
    if run["eval"] is not None and not eval_complete(run_dir, run["eval"].get("steps")):
        t0 = time.time()
        run_stage(eval_command(run, run_dir), log_path, f"eval of {run['name']}", env)
        if not eval_complete(run_dir, run["eval"].get("steps")):
            raise UserError(f"eval.py finished but {run_dir}/tables/summary.csv lacks some checkpoints — "
                            f"see {log_path}")
        experiment.update(run["name"], eval_s=round(time.time() - t0, 1))
    experiment.update(run["name"], done=True)
    return state


def pending(exp_dir, runs):
    """The runs not finished yet, in plan order."""
    return [r for r in runs if not run_finished(Path(exp_dir) / "runs" / r["name"], r)]


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
    start = machine_info()
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
    if todo:  # each session that ran something: its wall time, the machine and the load at start and end
        experiment.state.setdefault("sessions", []).append(
            {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "wall_s": round(time.time() - t0, 1),
             "runs": len(todo), "jobs": jobs, "machine": start, "load_avg_end": machine_info()["load_avg"]})
        experiment.save()
    return experiment


def record_invocation(experiment, t0, load_start, what):
    """One command's wall time in experiment.json `invocations` (an experiment whose command does more than
    run_all — scoring, measuring — records it here; run_all's `sessions` hold the runs' part)."""
    experiment.state.setdefault("invocations", []).append(
        {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "wall_s": round(time.time() - t0, 1),
         "what": what, "load_avg_start": round(load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2)})
    experiment.save()


def wall_time_lines(exp_dir, parts=("sessions", "invocations", "runs")):
    """The report's wall-time lines ("- ..."), from experiment.json: each run_all session (runs, --jobs, wall
    time, machine, load at start and end), each recorded invocation of the experiment's command, and the mean
    train / eval seconds per run — those of `parts`. The one place every experiment's report takes its cost from."""
    try:
        state = json.loads((Path(exp_dir) / "experiment.json").read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for s in state.get("sessions", []) if "sessions" in parts else []:
        m = s.get("machine", {})
        flags = ", ".join(f for f, on in m.get("flags", {}).items() if on) or "none"
        lines.append(f"- {s['runs']} runs with --jobs {s['jobs']}: **{s['wall_s'] / 60:.1f} min** wall, started "
                     f"{s['started_utc']} on {m.get('cpu')} ({m.get('cores')} cores; flags {flags}); load average "
                     f"(1/5/15 min) {m.get('load_avg')} at start, {s.get('load_avg_end')} at end (the wall time is "
                     f"this load's).")
    for w in state.get("invocations", []) if "invocations" in parts else []:
        lines.append(f"- The command, started {w['started_utc']}: {w['wall_s'] / 60:.1f} min wall ({w['what']}; load "
                     f"average {w['load_avg_start']:.1f} at the start, {w['load_avg_end']:.1f} at the end).")
    status = state.get("status", {}).values()
    train = [s["train_s"] for s in status if "train_s" in s]
    evals = [s["eval_s"] for s in status if "eval_s" in s]
    if train and "runs" in parts:
        lines.append(f"- Per run (mean over {len(train)}): train {sum(train) / len(train):.0f} s"
                     + (f", eval {sum(evals) / len(evals):.0f} s" if evals else "") + " wall.")
    return lines


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
