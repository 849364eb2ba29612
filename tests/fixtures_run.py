"""Shared run fixture: `tiny_run` — a real run folder made by modelling/train.py on the `tok_dataset` corpus.

    tiny_run   Path of workspace/out/tiny (config.json, attn_probes.json, train/val logs, batch log, TINY_CKPTS
               checkpoints at steps 1, 2, 4, 8, 10, 16, 20, 30, 32, 40, ckpt/resume.pt)
    copied_run(tiny_run, name, stages)  a private copy out/<name> with later stages (eval, visualizers) run on it
    evaluated_run  the shared copy out/tiny_evaluated with eval and the three visualizers run on it (read-only)
"""
import pytest

from tests.fixtures_data import run_stage

TINY_STEPS = 40
TINY_CKPTS = [1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
TINY_CONFIG = dict(out_dir="out/tiny", max_iters=TINY_STEPS, eval_interval=10, eval_iters=2, batch_size=8,
                   max_seq_len=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                   learning_rate=1e-2, warmup_iters=5, min_lr=1e-3, n_probe_stories=2, probe_len=48,
                   dtype="float32", data_seed=7, seed=7)
# tiny models run fastest single-threaded, and the test machine is shared
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_args(**overrides):
    """--key=value arguments for modelling/train.py."""
    return [f"--{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def tiny_run(tok_dataset):
    """A tiny model (2 layers, dim 32) trained TINY_STEPS steps on tok_dataset; returns the run folder."""
    ws = tok_dataset["workspace"]
    run_stage(ws, "modelling/train.py", *train_args(dataset=tok_dataset["dataset"],
                                                    vocab_size=tok_dataset["vocab_size"], **TINY_CONFIG),
              env=ONE_THREAD)
    return ws / TINY_CONFIG["out_dir"]


def kill_training_at(ws, args, marker, timeout=300):
    """Start modelling/train.py with `args` in workspace ws, SIGKILL it as soon as the file `marker` (a
    checkpoint) exists, and return the step of the ckpt/resume.pt it left behind."""
    import os
    import signal
    import subprocess
    import time

    from modelling.checkpoints import load_checkpoint
    from tests.fixtures_data import PYTHON, REPO
    proc = subprocess.Popen([PYTHON, str(REPO / "modelling/train.py"), *args], cwd=ws, env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return load_checkpoint(marker.parent / "resume.pt")["step"]


def copied_run(tiny_run, name, stages=(), ignore=("tables", "visualize", "eval_prompts.json")):
    """Copy the shared tiny run to workspace/out/<name> (replacing an older copy), so a test's own eval/visualize
    settings never touch the original or another test's copy, and run `stages` on the copy: each
    (script, args), run with --out_dir out/<name> appended and one thread.
    Returns {"ws": workspace, "dir": the copy, "procs": {script: CompletedProcess}}."""
    import shutil

    ws = tiny_run.parents[1]
    run_dir = ws / "out" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns(*ignore))
    procs = {script: run_stage(ws, script, *args, "--out_dir", f"out/{name}", env=ONE_THREAD)
             for script, args in stages}
    return {"ws": ws, "dir": run_dir, "procs": procs}


EVALUATED_RUN = "tiny_evaluated"
EVAL_ARGS = ("--n_prompts", 2, "--max_new_tokens", 12, "--steps", 1, 4, 10, 20, 30, 40)


@pytest.fixture(scope="session")
def evaluated_run(tiny_run, meta_dataset):
    """One copy of the tiny run with every later stage run on it, shared read-only by the visualize and dash
    tests: eval.py (EVAL_ARGS), visualize_attn.py (every step), visualize_embd.py, visualize_sat_curves.py (one
    metric panel; saturation.csv covers every column). Returns copied_run's dict."""
    return copied_run(tiny_run, EVALUATED_RUN, [
        ("eval.py", EVAL_ARGS),
        ("visualize_attn.py", ()),
        ("visualize_embd.py", ()),
        ("visualize_sat_curves.py", ("--metrics", "flesch_ease")),
    ])
