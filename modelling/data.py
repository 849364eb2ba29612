"""Training data as segments of stories, packed into rows with attention kept inside each segment.

A story's training sequence is its tokens from the shared reader (BOS + story) followed by BOS, the
end-of-story marker llama2.c's stream layout puts there (the next story's BOS; run.c stops generating at it).
A story of n_tokens tokens (its BOS included) therefore has exactly n_tokens targets.

Segments. The targets are cut into consecutive chunks of at most max_seq_len at offsets 0, M, 2M, … — they
depend only on the story and M, never on the order. Segment (story_id, start, n_tokens) has inputs
seq[start:start+n] and targets seq[start+1:start+n+1]. A later chunk's first input is the story token at
`start` (it continues the story, no BOS is inserted), its RoPE positions restart at 0, and it cannot attend to
the previous chunk. Every target of a story is in exactly one segment.

Rows. A step's segments are packed into rows of max_seq_len positions, first-fit decreasing. Inside a row
each segment attends causally to itself only (block-diagonal causal mask, `segment_ids`); positions restart
at 0 per segment. Pads: input 0, target -1 (ignored by the loss), segment id -1 (pads attend among
themselves, so no attention row is empty). A batch whose rows each hold one segment needs no mask: it is
plain causal attention, exactly as before packing.
"""
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

PAD_INPUT = 0
PAD_TARGET = -1
PAD_SEGMENT = -1
# one record per segment; `row` is the packed row within its step (-1 before packing)
SEGMENT_DTYPE = np.dtype([("story_id", "<i8"), ("start", "<i8"), ("n_tokens", "<i8"), ("row", "<i8")])


def story_segments(story_ids, n_tokens, max_seq_len):
    """Segments of the stories, in the given story order and chunk order. n_tokens: per story, BOS included
    (= its number of targets)."""
    story_ids = np.asarray(story_ids, dtype=np.int64)
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    m = int(max_seq_len)
    chunks = np.maximum(1, -(-n_tokens // m))
    seg = np.zeros(int(chunks.sum()), dtype=SEGMENT_DTYPE)
    seg["story_id"] = np.repeat(story_ids, chunks)
    first = np.repeat(np.cumsum(chunks) - chunks, chunks)
    seg["start"] = (np.arange(len(seg)) - first) * m
    seg["n_tokens"] = np.minimum(np.repeat(n_tokens, chunks) - seg["start"], m)
    seg["row"] = -1
    return seg


def segment_keys(segments):
    """One int64 per segment, (story_id, start) -> story_id * 2^32 + start: sortable, comparable."""
    return np.asarray(segments["story_id"], np.int64) * (1 << 32) + np.asarray(segments["start"], np.int64)


def pack_rows(segments, max_seq_len, min_rows=1):
    """The segments with `row` set, grouped by row (rows in order, segments in placement order).

    First-fit decreasing: longest segment first (ties by their order in `segments`), into the first row with
    room, else a new row. If fewer than min_rows rows result (each micro-batch and rank needs a row), segments
    are moved off the fullest multi-segment rows into new rows."""
    segments = np.asarray(segments, dtype=SEGMENT_DTYPE)
    cap = int(max_seq_len)
    rows, room = [], []
    for i in np.argsort(-segments["n_tokens"], kind="stable"):
        n = int(segments["n_tokens"][i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(cap - n)
    while len(rows) < min(min_rows, len(segments)):
        r = max(range(len(rows)), key=lambda j: (len(rows[j]) > 1, cap - room[j]))
        moved = rows[r].pop()
        room[r] += int(segments["n_tokens"][moved])
        rows.append([moved])
        room.append(cap - int(segments["n_tokens"][moved]))
    out = segments[[i for row in rows for i in row]].copy()
    out["row"] = np.repeat(np.arange(len(rows)), [len(row) for row in rows])
    return out


def one_per_row(segments):
    """The segments with `row` set to one row each (padded, unpacked: llama2.c's one-sequence-per-row layout;
    train.py --pack=False, for comparisons)."""
    out = np.asarray(segments, dtype=SEGMENT_DTYPE).copy()
    out["row"] = np.arange(len(out))
    return out


def split_rows(packed, n_parts):
    """The packed segments of a step split into n_parts groups of whole rows (row r goes to group r % n_parts),
    for gradient-accumulation micro-batches and DDP ranks. Each group keeps its rows' order."""
    return [packed[packed["row"] % n_parts == p] for p in range(n_parts)]


def row_layout(packed):
    """(row index 0..R-1 within this group, offset in its row) per segment, and each row's fill."""
    _, row_of = np.unique(packed["row"], return_inverse=True)
    offset = np.zeros(len(packed), dtype=np.int64)
    fill = np.zeros(int(row_of.max()) + 1 if len(packed) else 0, dtype=np.int64)
    for k, (r, n) in enumerate(zip(row_of.tolist(), packed["n_tokens"].tolist())):
        offset[k] = fill[r]
        fill[r] += n
    return row_of, offset, fill


class SegmentBatches:
    """Tensors for the model from segments, reading tokens through the shared dataset reader."""

    def __init__(self, dataset, max_seq_len, bos_id=1):
        self.ds = dataset  # tokenization.dataset.TokenizedDataset
        self.max_seq_len = int(max_seq_len)
        self.bos_id = int(bos_id)

    def sequence(self, story_id):
        """BOS + story + end-of-story BOS: inputs and targets of all of the story's segments."""
        return np.append(np.asarray(self.ds.tokens(int(story_id)), dtype=np.int64), self.bos_id)

    def segments(self, story_ids):
        """All segments of the stories (in story order, then chunk order)."""
        return story_segments(story_ids, self.ds.n_tokens(story_ids), self.max_seq_len)

    def batch(self, packed, device="cpu", fixed_width=False):
        """(x, y, positions, segment_ids) for packed segments (their `row` fields number the rows; a group
        may hold any subset of a step's rows). Width = the fullest row. positions and segment_ids are None
        when every row holds a single segment: plain causal attention, positions 0..T-1.
        fixed_width (train.py --compile): every row max_seq_len wide and positions/segment_ids always given,
        so that only the number of rows changes from step to step and torch.compile builds one graph."""
        row_of, offset, fill = row_layout(packed)
        shape = (len(fill), self.max_seq_len if fixed_width else int(fill.max()))
        x = np.full(shape, PAD_INPUT, dtype=np.int64)
        y = np.full(shape, PAD_TARGET, dtype=np.int64)
        pos = np.zeros(shape, dtype=np.int64)
        seg = np.full(shape, PAD_SEGMENT, dtype=np.int64)
        for k, (sid, start, n, _) in enumerate(packed.tolist()):
            r, at = row_of[k], offset[k]
            seq = self.sequence(sid)[start:start + n + 1]
            x[r, at:at + n] = seq[:-1]
            y[r, at:at + n] = seq[1:]
            pos[r, at:at + n] = np.arange(n)
            seg[r, at:at + n] = k
        arrays = (x, y) if np.bincount(row_of).max() == 1 and not fixed_width else (x, y, pos, seg)
        if str(device).startswith("cuda"):
            tensors = [torch.from_numpy(a).pin_memory().to(device, non_blocking=True) for a in arrays]
        else:
            tensors = [torch.from_numpy(a).to(device) for a in arrays]
        return tuple(tensors) + (None, None)[:4 - len(tensors)]


def token_nll(model, x, y, positions=None, segment_ids=None):
    """Per-position next-token negative log-likelihood [B, T] in float32 (0 where the target is a pad).
    The one padded cross-entropy shared by training's evaluation, eval.py and the checkpoint scorer."""
    logits = model(x, positions=positions, segment_ids=segment_ids)
    nll = F.cross_entropy(logits.float().transpose(1, 2), y.clamp(min=0), reduction="none")
    return nll.masked_fill(y < 0, 0.0)


@torch.no_grad()
def segment_losses(model, batches, segments, rows_per_batch=16, ctx=nullcontext(), device="cpu"):
    """Summed nll per segment, in the order of `segments`, packed rows_per_batch rows at a time. Sums over a
    story's segments give its exact loss under training's segmentation."""
    packed = pack_rows(segments, batches.max_seq_len)
    nll_sum = np.zeros(len(packed))
    for first in range(0, int(packed["row"].max()) + 1 if len(packed) else 0, rows_per_batch):
        take = np.flatnonzero((packed["row"] >= first) & (packed["row"] < first + rows_per_batch))
        x, y, pos, seg = batches.batch(packed[take], device)
        with ctx:
            nll = token_nll(model, x, y, pos, seg).cpu().numpy()
        row_of, offset, _ = row_layout(packed[take])
        for k, r, at, n in zip(take, row_of, offset, packed["n_tokens"][take]):
            nll_sum[k] = nll[r, at:at + n].sum()
    # packing reordered the segments: map back by (story_id, start)
    order = np.argsort(segment_keys(packed), kind="stable")
    return nll_sum[order[np.searchsorted(segment_keys(packed)[order], segment_keys(segments))]]


def story_loss(model, batches, story_ids, rows_per_batch=16, ctx=nullcontext(), device="cpu"):
    """Token-weighted mean loss over every target of the stories (all their segments)."""
    segments = batches.segments(story_ids)
    nll = segment_losses(model, batches, segments, rows_per_batch, ctx, device)
    return float(nll.sum() / max(1, segments["n_tokens"].sum()))
