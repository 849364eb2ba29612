"""Which stories a run trains on (selection) and in which order (sampler), kept apart so that two orders of one
selection see exactly the same multiset of stories in the same number of steps.

Selection: the train split, optionally filtered by a metadata column against a threshold, optionally cut to a
budget of n_stories (a random subset drawn with the data seed), trimmed to a whole number of steps (again a
seeded random subset), then repeated for each epoch.
Order, per epoch:
    random           a fresh permutation per epoch from (data_seed, epoch)
    sort_ascending   by a metadata column, stable: ties by story_id; NaN last
    sort_descending  the same, largest first; ties still by story_id; NaN last
    filter_by_threshold   the filtered selection in random order
    combined         the filtered selection sorted by sort_by in sort_order
Step k (1-based) holds the stories at [(k-1)*S, k*S) of the concatenated epochs, S = stories per step, so
the whole schedule is a pure function of (selection, sampler settings, data_seed, step): resuming needs only
the step number.
"""
import hashlib

import numpy as np
import pandas as pd

from common.errors import UserError
from metadata.table import read_metadata

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


def select_stories(train_ids, stories_per_step, selection_seed, metadata=None, filter_column="", threshold=0.0,
                   filter_keep="above", n_stories=0):
    """Sorted story ids of the selection: filtered, budgeted, trimmed to a multiple of stories_per_step."""
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    if filter_column:
        values = column_values(metadata, filter_column, ids, "filter_column")
        keep = values >= threshold if filter_keep == "above" else values < threshold  # NaN compares False
        ids = ids[keep]
    n_keep = len(ids) if n_stories <= 0 else min(int(n_stories), len(ids))
    n_keep -= n_keep % stories_per_step  # whole steps only, so every order takes the same number of steps
    if n_keep == 0:
        raise UserError(f"the selection has {len(ids)} stories, fewer than one step of {stories_per_step} "
                        f"(batch_size*gradient_accumulation_steps*world) — relax the filter or the batch size")
    if n_keep < len(ids):  # a seeded random subset, independent of the order (data_seed) used later
        pick = np.random.default_rng([selection_seed, 0]).permutation(len(ids))[:n_keep]
        ids = np.sort(ids[pick])
    return ids


def order_epoch(selection, epoch, sampler, data_seed, sort_values=None, descending=False):
    """The selection's order in one epoch (0-based). sort_values: aligned with selection (sorted modes)."""
    if sampler in ("random", "filter_by_threshold"):
        return np.random.default_rng([data_seed, epoch + 1]).permutation(selection)
    key = -sort_values if descending else sort_values  # NaN stays NaN and lexsort puts it last
    return selection[np.lexsort((selection, key))]  # stable: ties by story_id


class StorySampler:
    """step_ids(k) -> the ordered story ids of optimizer step k (1-based), for any k, in O(S) after the first
    call of its epoch."""

    def __init__(self, train_ids, stories_per_step, sampler="random", data_seed=0, metadata=None, sort_by="",
                 sort_order="ascending", filter_column="", threshold=0.0, filter_keep="above", n_stories=0,
                 selection_seed=0):
        if sampler not in SAMPLERS:
            raise UserError(f"sampler={sampler!r} unknown; use one of {', '.join(SAMPLERS)}")
        if sampler in ("sort_ascending", "sort_descending", "combined") and not sort_by:
            raise UserError(f"sampler={sampler} needs --sort_by=<metadata column>")
        if sampler in ("filter_by_threshold", "combined") and not filter_column:
            raise UserError(f"sampler={sampler} needs --filter_column=<metadata column> and --threshold=<value>")
        self.sampler = sampler
        self.data_seed = int(data_seed)
        self.stories_per_step = int(stories_per_step)
        self.selection = select_stories(train_ids, self.stories_per_step, int(selection_seed), metadata,
                                        filter_column if sampler in ("filter_by_threshold", "combined") else "",
                                        threshold, filter_keep, n_stories)
        self.sort_values = None
        self.descending = sampler == "sort_descending" or (sampler == "combined" and sort_order == "descending")
        if sampler in ("sort_ascending", "sort_descending", "combined"):
            self.sort_values = column_values(metadata, sort_by, self.selection, "sort_by")
        self.steps_per_epoch = len(self.selection) // self.stories_per_step
        self._epoch, self._order = None, None

    @property
    def selection_sha256(self):
        """Fingerprint of the selection, checked on resume."""
        return hashlib.sha256(self.selection.astype("<i8").tobytes()).hexdigest()

    def epoch_order(self, epoch):
        if epoch != self._epoch:
            self._order = order_epoch(self.selection, epoch, self.sampler, self.data_seed, self.sort_values,
                                      self.descending)
            self._epoch = epoch
        return self._order

    def step_ids(self, step):
        epoch, i = divmod(int(step) - 1, self.steps_per_epoch)
        s = self.stories_per_step
        return self.epoch_order(epoch)[i * s:(i + 1) * s]
