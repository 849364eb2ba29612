"""One writer per run folder: `with RunLock(out_dir):` around everything a stage writes there.

The lock is an fcntl.flock on <folder>/.lock, held for the life of the open file. The kernel drops it when the
holder exits, however it exits, so a lock left by a dead process is simply taken over; the file only carries
the holder's pid (and command) so that the second writer's error can name it. A second writer — another
process, or a second RunLock in this one — is refused with a UserError naming the holder's pid.
"""
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from common.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """Exclusive, non-blocking lock on a run folder (created if missing). Use as a context manager, or
    acquire()/release(). `holder()` reads who holds a folder's lock (None if nobody)."""

    def __init__(self, folder, what="run folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._file = None

    def acquire(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.what} {self.folder} is a file, not a folder — pick another path")
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            pid = holder.get("pid", "unknown")
            raise UserError(f"{self.what} {self.folder} is in use by pid {pid}"
                            f"{' (' + holder['cmd'] + ')' if holder.get('cmd') else ''} — wait for it to finish, "
                            f"stop it, or pick another folder") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "cmd": " ".join(sys.argv)[:200], "since": time.time()}) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self):
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # an unlocked file names nobody
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    @staticmethod
    def holder(folder):
        """{'pid', 'cmd', 'since'} of the live holder of folder's lock, or None when it is free."""
        path = Path(folder) / LOCK_NAME
        if not path.exists():
            return None
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                return _parse(f.read())
            fcntl.flock(f, fcntl.LOCK_UN)
            return None


def _parse(text):
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except json.JSONDecodeError:
        return {}
