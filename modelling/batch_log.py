"""The batch log of a run: the ordered story ids of every optimizer step.

out/RUN/batch_log.bin is a flat little-endian int64 array; step k (1-based) holds stories_per_step ids at
[(k-1)*S, k*S). out/RUN/batch_log.json (atomic) says S, the layout and how many steps were made durable (fsync
at every checkpoint). Lookup of any step is O(1) through a memmap. On resume the writer truncates the file to
the checkpoint's step, so the ids after a resume continue exactly where the checkpoint left off.
"""
import json
import os
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import atomic_write_json, provenance

BIN_NAME = "batch_log.bin"
META_NAME = "batch_log.json"
LAYOUT = "int64 little-endian story ids; step k (1-based) at [(k-1)*S, k*S), S = stories_per_step"


class BatchLog:
    """Read-only view: len(log) = complete steps on disk, log.step(k) -> ids, log.steps(a, b) -> ids of a..b."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        meta_path, bin_path = self.dir / META_NAME, self.dir / BIN_NAME
        if not meta_path.exists() or not bin_path.exists():
            raise UserError(f"batch log not found in {self.dir} (batch_log.json/.bin) — train a run with "
                            f"modelling/train.py --out_dir={self.dir}")
        try:
            self.meta = json.loads(meta_path.read_text())
            self.stories_per_step = int(self.meta["stories_per_step"])
        except (ValueError, KeyError) as e:
            raise UserError(f"corrupt batch log metadata {meta_path}: {e} — re-run the training") from e
        # complete steps present (the writer may be ahead of the last fsync; a torn tail is ignored)
        n_ids = bin_path.stat().st_size // 8
        self.n_steps = n_ids // self.stories_per_step
        self._ids = (np.memmap(bin_path, dtype="<i8", mode="r", shape=(self.n_steps * self.stories_per_step,))
                     if self.n_steps else np.zeros(0, dtype="<i8"))

    def __len__(self):
        return self.n_steps

    def _check(self, k):
        if not 1 <= k <= self.n_steps:
            raise UserError(f"step {k} not in the batch log of {self.dir} (steps 1..{self.n_steps})")

    def step(self, k):
        """Ordered story ids of optimizer step k (1-based) as an int64 array."""
        k = int(k)
        self._check(k)
        s = self.stories_per_step
        return np.asarray(self._ids[(k - 1) * s:k * s], dtype=np.int64)

    def steps(self, a, b):
        """Ids of steps a..b inclusive, concatenated in training order."""
        a, b = int(a), int(b)
        if b < a:
            return np.zeros(0, dtype=np.int64)
        self._check(a)
        self._check(b)
        s = self.stories_per_step
        return np.asarray(self._ids[(a - 1) * s:b * s], dtype=np.int64)


class BatchLogWriter:
    """Appends one step's ids per call; durable (fsync + batch_log.json) at every checkpoint."""

    def __init__(self, run_dir, stories_per_step, resume_step=0, extra_meta=None):
        self.dir = Path(run_dir)
        self.stories_per_step = int(stories_per_step)
        self.extra_meta = {**(extra_meta or {}), "provenance": provenance()}  # once: git is slow on a busy box
        self.path = self.dir / BIN_NAME
        self.dir.mkdir(parents=True, exist_ok=True)
        keep = resume_step * self.stories_per_step * 8
        if resume_step and (not self.path.exists() or self.path.stat().st_size < keep):
            raise UserError(f"batch log {self.path} is shorter than the resume step {resume_step} — cannot resume")
        self.f = open(self.path, "r+b" if (resume_step and self.path.exists()) else "wb")
        self.f.truncate(keep)  # drop steps written after the checkpoint we resume from
        self.f.seek(keep)
        self.steps_written = resume_step
        self.sync()

    def append(self, story_ids):
        ids = np.ascontiguousarray(story_ids, dtype="<i8")
        assert ids.shape == (self.stories_per_step,), f"expected {self.stories_per_step} ids, got {ids.shape}"
        self.f.write(ids.tobytes())
        self.steps_written += 1

    def sync(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        atomic_write_json(self.dir / META_NAME, {
            "stories_per_step": self.stories_per_step, "layout": LAYOUT, "steps_written": self.steps_written,
            **self.extra_meta})

    def close(self):
        if not self.f.closed:
            self.sync()
            self.f.close()
