"""The batch log of a run: the packed segments of every optimizer step (format 2).

out/RUN/batch_log.bin        int64 little-endian records of 4 fields per segment: story_id, start, n_tokens, row
                             (modelling/data.py SEGMENT_DTYPE), steps one after the other, each step's segments
                             grouped by packed row in placement order
out/RUN/batch_log_steps.bin  int64 per step: the number of segment records up to and including that step, so
                             step k (1-based) is records [ends[k-2], ends[k-1]) — O(1) lookup by step
out/RUN/batch_log.json       (atomic) format, layout, segments per step, how many steps are durable (fsync at
                             every checkpoint), targets trained and row positions used (padding).

A segment (story_id, start, n_tokens) trains the story's targets start+1 … start+n_tokens of its sequence
(BOS + story + BOS), i.e. tokens start … start+n_tokens-1 as input. On resume the writer truncates both files to
the checkpoint's step. A torn tail (records ahead of the step index) is ignored by the reader.
Format 1 (one story id per row, truncated stories) is refused: its runs did not train every token.
"""
import json
import os
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import atomic_write_json, provenance
from modelling.data import SEGMENT_DTYPE

FORMAT = 2
BIN_NAME = "batch_log.bin"
STEPS_NAME = "batch_log_steps.bin"
META_NAME = "batch_log.json"
LAYOUT = ("batch_log.bin: int64 LE records (story_id, start, n_tokens, row) per segment; batch_log_steps.bin: "
          "int64 LE cumulative record count per step (step k = records [ends[k-2], ends[k-1]))")


class BatchLog:
    """Read-only view: len(log) = complete steps on disk; log.step(k) -> segments of step k;
    log.steps(a, b) -> segments of steps a..b; log.step_bounds(a, b) -> record offsets."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        meta_path, bin_path, steps_path = self.dir / META_NAME, self.dir / BIN_NAME, self.dir / STEPS_NAME
        if not meta_path.exists() or not bin_path.exists():
            raise UserError(f"batch log not found in {self.dir} (batch_log.json/.bin) — train a run with "
                            f"modelling/train.py --out_dir={self.dir}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise UserError(f"corrupt batch log metadata {meta_path}: {e} — re-run the training") from e
        if self.meta.get("format") != FORMAT or not steps_path.exists():
            raise UserError(f"{self.dir} has a batch log of format {self.meta.get('format', 1)} (one truncated "
                            f"story per row; not every token was trained) — this version reads format {FORMAT}: "
                            f"re-run the training into a new --out_dir")
        n_records = bin_path.stat().st_size // SEGMENT_DTYPE.itemsize
        ends = np.fromfile(steps_path, dtype="<i8")
        # complete steps present: the writer may be ahead of the last fsync; a torn tail is ignored
        self.n_steps = int(np.searchsorted(ends, n_records, side="right")) if len(ends) else 0
        self._ends = np.concatenate([[0], ends[:self.n_steps]]).astype(np.int64)
        n_used = int(self._ends[-1])
        self._records = np.memmap(bin_path, dtype=SEGMENT_DTYPE, mode="r", shape=(n_used,)) if n_used \
            else np.zeros(0, dtype=SEGMENT_DTYPE)

    def __len__(self):
        return self.n_steps

    def _check(self, k):
        if not 1 <= k <= self.n_steps:
            raise UserError(f"step {k} not in the batch log of {self.dir} (steps 1..{self.n_steps})")

    def step_bounds(self, a, b):
        """Record offsets [start, end) of steps a..b inclusive (a > b: empty)."""
        a, b = int(a), int(b)
        if b < a:
            return 0, 0
        self._check(a)
        self._check(b)
        return int(self._ends[a - 1]), int(self._ends[b])

    def step(self, k):
        """Segments of optimizer step k (1-based): SEGMENT_DTYPE array, grouped by packed row."""
        return self.steps(k, k)

    def steps(self, a, b):
        """Segments of steps a..b inclusive, concatenated in training order."""
        start, end = self.step_bounds(a, b)
        return np.array(self._records[start:end])

    def segments_per_step(self):
        """Number of segments in each logged step (int64 array of length len(log))."""
        return np.diff(self._ends)


class BatchLogWriter:
    """Appends one step's packed segments per call; durable (fsync + batch_log.json) at every checkpoint."""

    def __init__(self, run_dir, segments_per_step, max_seq_len, resume_step=0, extra_meta=None):
        self.dir = Path(run_dir)
        self.segments_per_step, self.max_seq_len = int(segments_per_step), int(max_seq_len)
        self.extra_meta = {**(extra_meta or {}), "provenance": provenance()}  # once: git is slow on a busy box
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ends, self.n_targets, self.n_rows = [], 0, 0
        if resume_step:
            try:
                log = BatchLog(self.dir)
            except UserError as e:
                raise UserError(f"cannot resume: {e}") from e
            if len(log) < resume_step:
                raise UserError(f"batch log in {self.dir} has {len(log)} steps, fewer than the resume step "
                                f"{resume_step} — cannot resume")
            self.ends = log._ends[1:resume_step + 1].tolist()
            kept = log.steps(1, resume_step)
            self.n_targets = int(kept["n_tokens"].sum())
            self.n_rows = int(sum(len(np.unique(log.step(k)["row"])) for k in range(1, resume_step + 1)))
        n_keep = self.ends[-1] if self.ends else 0
        self.f = self._open(BIN_NAME, n_keep * SEGMENT_DTYPE.itemsize, resume_step)
        self.f_steps = self._open(STEPS_NAME, len(self.ends) * 8, resume_step)
        self.sync()

    def _open(self, name, keep_bytes, resume_step):
        path = self.dir / name
        f = open(path, "r+b" if (resume_step and path.exists()) else "wb")
        f.truncate(keep_bytes)  # drop steps written after the checkpoint we resume from
        f.seek(keep_bytes)
        return f

    @property
    def steps_written(self):
        return len(self.ends)

    def append(self, packed):
        """One step's packed segments (SEGMENT_DTYPE with rows set)."""
        packed = np.ascontiguousarray(packed, dtype=SEGMENT_DTYPE)
        self.f.write(packed.tobytes())
        self.ends.append((self.ends[-1] if self.ends else 0) + len(packed))
        self.f_steps.write(np.asarray([self.ends[-1]], dtype="<i8").tobytes())  # after the records it covers
        self.n_targets += int(packed["n_tokens"].sum())
        self.n_rows += len(np.unique(packed["row"]))

    def sync(self):
        for f in (self.f, self.f_steps):
            f.flush()
            os.fsync(f.fileno())
        positions = self.n_rows * self.max_seq_len
        atomic_write_json(self.dir / META_NAME, {
            "format": FORMAT, "layout": LAYOUT, "segments_per_step": self.segments_per_step,
            "max_seq_len": self.max_seq_len, "steps_written": self.steps_written,
            "n_targets": self.n_targets, "n_rows": self.n_rows,
            "padding_fraction": round(1 - self.n_targets / positions, 6) if positions else None,
            **self.extra_meta})

    def close(self):
        if not self.f.closed:
            self.sync()
            self.f.close()
            self.f_steps.close()
