"""Shared run fixture: `tiny_run` — a real run folder made by modelling/train.py on the `tok_dataset` corpus.

    tiny_run   Path of workspace/out/tiny (config.json, attn_probes.json, train/val logs, batch log, TINY_CKPTS
               checkpoints at steps 1, 2, 4, 8, 10, 16, 20, 30, 32, 40, ckpt/resume.pt)
"""
import pytest

from tests.fixtures_data import run_stage

TINY_STEPS = 40
TINY_CKPTS = [1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
TINY_CONFIG = dict(out_dir="out/tiny", max_iters=TINY_STEPS, eval_interval=10, eval_iters=2, batch_size=8,
                   max_seq_len=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                   learning_rate=3e-3, warmup_iters=5, min_lr=3e-4, n_probe_stories=2, probe_len=48,
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
