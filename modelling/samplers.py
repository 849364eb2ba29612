"""Which stories a run trains on (selection) and in which order their segments come (sampler), kept apart so
that two orders of one selection train exactly the same multiset of segments in the same number of steps.

Selection: the train split, optionally filtered by a metadata column against a threshold, optionally cut to a
budget of n_stories (a random subset drawn with selection_seed), then repeated for each epoch. Every story is
cut into segments of at most max_seq_len targets (modelling/data.py), so every token of every selected story is
a target exactly once per epoch.
Order of the segments, per epoch:
    random           a fresh permutation per epoch from (data_seed, epoch)
    sort_ascending   by the story's value of a metadata column; ties by story_id; a story's segments stay
                     together in chunk order; NaN last
    sort_descending  the same, largest first; ties still by story_id; NaN last
    filter_by_threshold   the filtered selection in random order
    combined         the filtered selection sorted by sort_by in sort_order
Step k (1-based) of an epoch holds the segments at [(k-1)*S, k*S) of that epoch's order, S = segments per
step; the last step of an epoch holds the remainder. The whole schedule is a pure function of (selection,
sampler settings, data_seed, step): resuming needs only the step number.
"""
import hashlib

import numpy as np
import pandas as pd

from common.errors import UserError
from metadata.table import read_metadata
from modelling.data import story_segments

SAMPLERS = ("random", "sort_ascending", "sort_descending", "filter_by_threshold", "combined")
FILTER_KEEP = ("above", "below")  # above: value >= threshold; below: value < threshold (NaN never kept)
SORT_ORDERS = ("ascending", "descending")


def load_metadata(dataset, vocab_size):
    """The per-story metadata table indexed by story_id (issue 3's compute_metadata writes it)."""
    return read_metadata(dataset, vocab_size).set_index("story_id")


def column_values(metadata, column, story_ids, what):
    """Float values of one metadata column for story_ids; unknown/non-numeric column -> UserError."""
    usable = [c for c in metadata.columns if pd.api.types.is_numeric_dtype(metadata[c])]
    if column not in metadata.columns or column not in usable:
        raise UserError(f"{what}={column!r} is not a numeric metadata column; available: {', '.join(usable)}")
    return metadata[column].reindex(story_ids).to_numpy(dtype=np.float64)


def select_stories(train_ids, selection_seed, metadata=None, filter_column="", threshold=0.0,
                   filter_keep="above", n_stories=0):
    """Sorted story ids of the selection: filtered, then a seeded random subset of n_stories (0 = all)."""
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    if filter_column:
        values = column_values(metadata, filter_column, ids, "filter_column")
        keep = values >= threshold if filter_keep == "above" else values < threshold  # NaN compares False
        ids = ids[keep]
    if len(ids) == 0:
        raise UserError("the selection is empty — relax --filter_column/--threshold")
    if 0 < n_stories < len(ids):  # a seeded random subset, independent of the order (data_seed) used later
        pick = np.random.default_rng([selection_seed, 0]).permutation(len(ids))[:int(n_stories)]
        ids = np.sort(ids[pick])
    return ids


def order_epoch(segments, epoch, sampler, data_seed, sort_values=None, descending=False):
    """Indices into `segments` in this epoch's order (0-based epoch). sort_values: per segment (its story's
    value) for the sorted modes."""
    if sampler in ("random", "filter_by_threshold"):
        return np.random.default_rng([data_seed, epoch + 1]).permutation(len(segments))
    key = -sort_values if descending else sort_values  # NaN stays NaN and lexsort puts it last
    return np.lexsort((segments["start"], segments["story_id"], key))  # ties by story, chunks in order


class SegmentSampler:
    """step_segments(k) -> the segments of optimizer step k (1-based), for any k, in O(S) after the first
    call of its epoch. `selection` (story ids) and `segments` (their segments, story order) are fixed."""

    def __init__(self, train_ids, n_tokens_of, max_seq_len, segments_per_step, sampler="random", data_seed=0,
                 metadata=None, sort_by="", sort_order="ascending", filter_column="", threshold=0.0,
                 filter_keep="above", n_stories=0, selection_seed=0):
        """n_tokens_of: story ids -> tokens per story (TokenizedDataset.n_tokens)."""
        if sampler not in SAMPLERS:
            raise UserError(f"sampler={sampler!r} unknown; use one of {', '.join(SAMPLERS)}")
        if sampler in ("sort_ascending", "sort_descending", "combined") and not sort_by:
            raise UserError(f"sampler={sampler} needs --sort_by=<metadata column>")
        if sampler in ("filter_by_threshold", "combined") and not filter_column:
            raise UserError(f"sampler={sampler} needs --filter_column=<metadata column> and --threshold=<value>")
        self.sampler = sampler
        self.data_seed = int(data_seed)
        self.segments_per_step = int(segments_per_step)
        self.max_seq_len = int(max_seq_len)
        self.selection = select_stories(train_ids, int(selection_seed), metadata,
                                        filter_column if sampler in ("filter_by_threshold", "combined") else "",
                                        threshold, filter_keep, n_stories)
        self.segments = story_segments(self.selection, n_tokens_of(self.selection), self.max_seq_len)
        self.sort_values = None
        self.descending = sampler == "sort_descending" or (sampler == "combined" and sort_order == "descending")
        if sampler in ("sort_ascending", "sort_descending", "combined"):
            story_values = column_values(metadata, sort_by, self.selection, "sort_by")
            self.sort_values = story_values[np.searchsorted(self.selection, self.segments["story_id"])]
        self.steps_per_epoch = -(-len(self.segments) // self.segments_per_step)
        self._epoch, self._order = None, None

    @property
    def n_tokens(self):
        """Targets in one epoch of the selection (every token of every selected story)."""
        return int(self.segments["n_tokens"].sum())

    @property
    def selection_sha256(self):
        """Fingerprint of the selection and its segmentation, checked on resume."""
        h = hashlib.sha256(self.selection.astype("<i8").tobytes())
        h.update(f"max_seq_len={self.max_seq_len}".encode())
        return h.hexdigest()

    def epoch_order(self, epoch):
        if epoch != self._epoch:
            self._order = order_epoch(self.segments, epoch, self.sampler, self.data_seed, self.sort_values,
                                      self.descending)
            self._epoch = epoch
        return self._order

    def step_segments(self, step):
        """The step's segments (SEGMENT_DTYPE, row unset) in sampler order."""
        epoch, i = divmod(int(step) - 1, self.steps_per_epoch)
        s = self.segments_per_step
        return self.segments[self.epoch_order(epoch)[i * s:(i + 1) * s]]
