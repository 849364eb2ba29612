"""Follow a run that is still training: yield each checkpoint once it has landed, stop when the trainer is done.

    for step, path, landed in watch_checkpoints(run_dir, done_steps):   eval.py --watch
        ...evaluate it...
    WatchLog(run_dir).add(step, landed, started, finished)              tables/watch.csv (the lag per checkpoint)

Why this never reads a half-written checkpoint: the recorder writes ckpt/step_NNNNNN.pt to a temp file beside it
(`.step_NNNNNN.pt.XXXX.tmp`, common/io.atomic_path: fsync, then rename), and list_checkpoints only matches the
final name, so a checkpoint is visible only once it is complete.
Why it never misses the last one: the trainer holds the run folder's lock (common/runlock.py) from before it
writes config.json until after its last checkpoint. The loop reads "is the lock free?" BEFORE listing the
checkpoints, so when it sees the lock free and nothing new, every checkpoint the trainer wrote is already done.
A trainer that dies (the kernel drops its lock) ends the watch the same way, after the checkpoints it wrote.
"""
import json
import os
import time
from pathlib import Path

import pandas as pd

from common.errors import UserError
from common.io import atomic_path
from common.runlock import RunLock
from modelling.checkpoints import list_checkpoints

POLL_S = 2.0           # seconds between looks at ckpt/ while the trainer runs
START_TIMEOUT_S = 600  # how long to wait for the trainer to write config.json
WATCH_LOG = "watch.csv"
WATCH_FIELDS = ["step", "landed", "eval_start", "eval_end", "lag_s", "eval_s", "trainer_running"]


def wait_for_run(run_dir, timeout_s=START_TIMEOUT_S, poll_s=POLL_S):
    """Block until run_dir/config.json exists (the trainer writes it under its lock, first thing)."""
    cfg = Path(run_dir) / "config.json"
    t0 = time.time()
    while not cfg.is_file():
        if time.time() - t0 > timeout_s:
            raise UserError(f"no training run appeared in {run_dir} within {timeout_s:.0f}s (no config.json) — "
                            f"start modelling/train.py --out_dir={run_dir} first, or raise --watch_timeout")
        time.sleep(poll_s)


def trainer_running(run_dir):
    """True while a process holds the run folder's lock (train.py holds it for the whole run)."""
    return RunLock.holder(run_dir) is not None


def watch_checkpoints(run_dir, done=(), poll_s=POLL_S, on_idle=None):
    """Yield (step, path, landed: the file's mtime) for every checkpoint not in `done`, oldest step first, as
    they land; return when the trainer has released the run folder and every checkpoint is yielded.
    on_idle(): called once each time the loop catches up and starts waiting (e.g. to refresh a summary)."""
    seen = set(int(s) for s in done)
    waiting = False
    while True:
        finished = not trainer_running(run_dir)  # before listing: see the docstring at the top
        new = [(s, p) for s, p in list_checkpoints(run_dir) if s not in seen]
        if new:
            waiting = False
            step, path = new[0]  # one at a time: a newer one may land meanwhile, the order stays by step
            seen.add(step)
            yield step, path, os.stat(path).st_mtime
            continue
        if finished:
            return
        if not waiting and on_idle is not None:
            on_idle()
        waiting = True
        time.sleep(poll_s)


class WatchLog:
    """tables/watch.csv: one row per checkpoint evaluated by --watch: when it landed (file mtime), when its
    evaluation started and ended (Unix seconds), lag_s = eval_end - landed, eval_s, trainer_running (the trainer
    still held the run folder when the evaluation ended)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "tables" / WATCH_LOG
        self.rows = pd.read_csv(self.path).to_dict("records") if self.path.exists() else []

    def add(self, step, landed, started, ended, running):
        self.rows = [r for r in self.rows if int(r["step"]) != int(step)]
        self.rows.append({"step": int(step), "landed": round(landed, 3), "eval_start": round(started, 3),
                          "eval_end": round(ended, 3), "lag_s": round(ended - landed, 3),
                          "eval_s": round(ended - started, 3), "trainer_running": int(running)})
        df = pd.DataFrame(self.rows, columns=WATCH_FIELDS).sort_values("step")
        with atomic_path(self.path, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)


def expected_steps(run_dir):
    """The checkpoint steps the run's config.json announces (train.py records checkpoint_steps)."""
    try:
        info = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(s) for s in info.get("checkpoint_steps", [])]
