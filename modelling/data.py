"""Training rows from story ids: one story per row, so a batch is exactly the ids the batch log records.

Row of a story = its tokens from the shared reader (BOS + story) followed by BOS, the end-of-story marker that
llama2.c's stream layout puts there (the next story's BOS; run.c stops generating at it), truncated to
max_seq_len + 1 tokens. x = row[:-1], y = row[1:]; rows are right-padded to the longest row of the micro-batch
with pad input 0 and pad target -1 (ignored by the loss; causal attention keeps pads out of real positions).
"""
import numpy as np
import torch

PAD_INPUT = 0
PAD_TARGET = -1


class StoryBatches:
    def __init__(self, dataset, max_seq_len, bos_id=1):
        self.ds = dataset  # tokenization.dataset.TokenizedDataset
        self.max_seq_len = int(max_seq_len)
        self.bos_id = int(bos_id)
        index = dataset.index
        # n_tokens includes the leading BOS; + the end BOS, truncated, minus one for the x/y shift
        self._n_targets = np.minimum(index["n_tokens"].to_numpy(np.int64), self.max_seq_len)
        self._row_of = None if np.array_equal(index["story_id"].to_numpy(), np.arange(len(index))) else \
            {int(s): i for i, s in enumerate(index["story_id"].to_numpy())}

    def _pos(self, story_id):
        return int(story_id) if self._row_of is None else self._row_of[int(story_id)]

    def n_targets(self, story_ids):
        """Number of real (non-pad) target tokens the stories contribute."""
        return int(sum(self._n_targets[self._pos(s)] for s in story_ids))

    def row(self, story_id):
        tokens = np.asarray(self.ds.tokens(int(story_id)), dtype=np.int64)
        return np.append(tokens, self.bos_id)[: self.max_seq_len + 1]

    def batch(self, story_ids, device="cpu"):
        """(x, y) int64 tensors [len(story_ids), T] with T = longest row - 1 (pads: x=0, y=-1)."""
        rows = [self.row(s) for s in story_ids]
        t = max(len(r) for r in rows) - 1
        x = np.full((len(rows), t), PAD_INPUT, dtype=np.int64)
        y = np.full((len(rows), t), PAD_TARGET, dtype=np.int64)
        for i, r in enumerate(rows):
            x[i, :len(r) - 1] = r[:-1]
            y[i, :len(r) - 1] = r[1:]
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if str(device).startswith("cuda"):
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)
