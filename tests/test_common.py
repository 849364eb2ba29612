"""Shared infrastructure: the run-folder lock (common/runlock.py) between real processes, and the project
root (common/paths.py) that every stage resolves data/ and out/ against."""
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from common.paths import ROOT_ENV, data_dir, default_run_dir, root, set_root, tok_dir
from common.runlock import RunLock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys; sys.path.insert(0, sys.argv[1]); from common.runlock import RunLock; "
        "lock = RunLock(sys.argv[2]).acquire(); print('held', flush=True); sys.stdin.read()")


def holder_process(folder):
    """A second process that takes the lock on `folder` and keeps it until its stdin closes (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO), str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "out" / "demo"
    proc = holder_process(run)
    try:
        with pytest.raises(UserError, match=rf"run folder {run} is in use by pid {proc.pid}\b"):
            RunLock(run).acquire()
        assert RunLock.holder(run)["pid"] == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # the holder finished: the folder is free again
    assert RunLock.holder(run) is None
    with RunLock(run):
        with pytest.raises(UserError, match="in use by pid"):  # a second lock in this same process, too
            RunLock(run).acquire()
    assert RunLock.holder(run) is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    proc = holder_process(run)
    proc.kill()  # dies without releasing: the lock file still names it
    proc.wait(timeout=30)
    assert str(proc.pid) in (run / ".lock").read_text()
    with RunLock(run) as lock:
        assert RunLock.holder(run)["pid"] != proc.pid and lock.path.exists()


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "taken").write_text("not a run")
    with pytest.raises(UserError, match="is a file, not a folder"):
        RunLock(tmp_path / "taken").acquire()
    assert (tmp_path / "taken").read_text() == "not a run"


def test_root_flag_then_environment_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert root() == Path(".") and tok_dir("storyworld", 512) == Path("data/storyworld/tok512")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env" / "data"
    set_root(tmp_path)  # a stage's --root wins over the environment
    assert default_run_dir() == tmp_path / "out" / "demo"
    assert tok_dir("tinystories", 0) == tmp_path / "data" / "TinyStories_all_data" / "tok0"
    set_root(None)
    assert root() == tmp_path / "env"
    with pytest.raises(UserError, match="project root not found"):
        set_root(tmp_path / "missing")
