"""Shared data fixtures, built once per test session by the real stage scripts in a temp workspace.

    workspace    a temp folder used as the working directory of stage scripts (holds data/ and out/)
    tok_dataset  a storyworld corpus of TOK_STORIES stories, vocab TOK_VOCAB, pretokenized in `workspace`:
                 a dict {"workspace": Path, "dataset": "storyworld", "vocab_size": 512, "n_stories": 4000,
                 "dir": Path of data/storyworld/tok512}
    run_stage(workspace, "tokenization/pretokenize.py", "pretokenize", "--dataset", …, check=True)
                 runs a stage with the .venv python, cwd=workspace; raises with its stderr on failure
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
TOK_STORIES = 4000
TOK_VOCAB = 512


def run_stage(workspace, script_relpath, *args, check=True, timeout=600, env=None):
    """Run `python <repo>/<script_relpath> args…` with cwd=workspace; returns the CompletedProcess.
    With check=True a non-zero exit raises AssertionError carrying the command's stderr."""
    cmd = [PYTHON, str(REPO / script_relpath), *map(str, args)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[1:])} exited {proc.returncode} in {workspace}:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A temp working directory shared by the session's stage runs (data/ and out/ live under it)."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def tok_dataset(workspace):
    """storyworld with TOK_STORIES stories, a TOK_VOCAB-piece vocab, pretokenized in `workspace`."""
    run_stage(workspace, "download/download_datasets.py", "storyworld", "--n_stories", TOK_STORIES,
              "--shard_size", 1000, "--seed", 0)
    run_stage(workspace, "tokenization/pretokenize.py", "train_vocab", "--dataset", "storyworld",
              "--vocab_size", TOK_VOCAB)
    run_stage(workspace, "tokenization/pretokenize.py", "pretokenize", "--dataset", "storyworld",
              "--vocab_size", TOK_VOCAB)
    return {"workspace": Path(workspace), "dataset": "storyworld", "vocab_size": TOK_VOCAB,
            "n_stories": TOK_STORIES, "dir": Path(workspace) / "data" / "storyworld" / f"tok{TOK_VOCAB}"}
