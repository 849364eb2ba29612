"""eval.py --watch beside a training run that is still going: every checkpoint evaluated once it has landed,
never a partial file, a stopped (not finished) trainer waited for, and an exit when the run is done."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_data import PYTHON, REPO, run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, train_args

WATCH_STEPS = 120  # log-spaced checkpoints 1 … 64 and the last: 8 checkpoints
EVAL_ARGS = ("--n_prompts", 1, "--max_new_tokens", 8, "--val_stories", 8, "--trajectories", "--audit_stories", 8)
TIMEOUT_S = 300


def popen(ws, script, *args):
    """The stage in the background, its output into a file (a pipe nobody reads would block tqdm)."""
    log = open(ws / f"{Path(script).stem}_{time.time_ns()}.log", "w+")
    proc = subprocess.Popen([PYTHON, str(REPO / script), *map(str, args)], cwd=ws, stdout=log,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD})
    proc.log = log
    return proc


def tail(proc):
    proc.log.seek(0)
    return proc.log.read()[-3000:]


def wait_for(condition, what, procs=()):
    t0 = time.time()
    while not condition():
        for p in procs:
            assert p.poll() is None or condition(), f"{what}: a process exited early ({p.args[1]}: {p.poll()})"
        assert time.time() - t0 < TIMEOUT_S, f"timed out waiting for {what}"
        time.sleep(0.2)


def watch_rows(run_dir):
    path = run_dir / "tables" / "watch.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "trainer_running"])


@pytest.mark.slow
def test_watch_evaluates_every_checkpoint_of_a_running_trainer(tok_dataset, meta_dataset):
    ws = tok_dataset["workspace"]
    run_dir = ws / "out" / "watched"
    cfg = {**TINY_CONFIG, "out_dir": "out/watched", "max_iters": WATCH_STEPS, "eval_interval": 1000}
    # the watcher first: it waits for the trainer's config.json
    watcher = popen(ws, "eval.py", "--out_dir", "out/watched", "--watch", *EVAL_ARGS)
    trainer = popen(ws, "modelling/train.py", *train_args(dataset=tok_dataset["dataset"],
                                                          vocab_size=tok_dataset["vocab_size"], **cfg))
    try:
        first = run_dir / "ckpt" / "step_000001.pt"
        wait_for(first.exists, "the first checkpoint", [trainer])
        os.kill(trainer.pid, signal.SIGSTOP)  # a trainer that is alive but not finished (maybe mid-write)
        partial = run_dir / "ckpt" / ".step_000999.pt.abcd.tmp"  # what atomic_path leaves while it writes
        partial.write_bytes(b"half a checkpoint")
        wait_for(lambda: 1 in set(watch_rows(run_dir)["step"]), "step 1 evaluated", [watcher])
        time.sleep(3 * 2.0)  # several polls with the trainer stopped: the watcher must keep waiting
        assert watcher.poll() is None, "the watcher exited while the trainer still held the run"
        partial.unlink()
        os.kill(trainer.pid, signal.SIGCONT)
        assert trainer.wait(TIMEOUT_S) == 0, tail(trainer)
        assert watcher.wait(TIMEOUT_S) == 0, tail(watcher)
    finally:
        for p in (trainer, watcher):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    config = json.loads((run_dir / "config.json").read_text())
    expected = config["checkpoint_steps"]
    assert len(expected) == 8
    on_disk = sorted(int(p.name[5:11]) for p in (run_dir / "ckpt").glob("step_*.pt"))
    assert on_disk == expected
    state = json.loads((run_dir / "tables" / "eval.json").read_text())
    assert state["steps_done"] == expected
    log = watch_rows(run_dir)
    assert log["step"].tolist() == expected  # each once, in step order
    assert (log["eval_end"] >= log["landed"]).all() and (log["lag_s"] > 0).all()
    assert log.loc[log["step"] == 1, "trainer_running"].item() == 1  # evaluated while the run was training
    summary = pd.read_csv(run_dir / "tables" / "summary.csv")
    assert summary["step"].tolist() == expected and summary["val_loss"].notna().all()
    traj = pd.read_csv(run_dir / "tables" / "trajectories.csv")
    assert sorted(traj["step"].unique()) == expected and len(traj) == 16 * len(expected)


def test_watch_refuses_steps_and_times_out_without_a_trainer(tok_dataset):
    ws = tok_dataset["workspace"]
    proc = run_stage(ws, "eval.py", "--out_dir", "out/never", "--watch", "--steps", "1", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --watch")
    proc = run_stage(ws, "eval.py", "--out_dir", "out/never", "--watch", "--watch_timeout", "0.5", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: no training run appeared in") and "train.py" in last
    assert not (ws / "out" / "never" / "tables").exists()
