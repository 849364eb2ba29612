"""Packed vs padded rows: real target tokens per second of one training step (forward, backward, AdamW), same
process, same model, same stories, interleaved repetitions.

Layouts of the same S segments per step (modelling/data.py):
    truncated  round 1's layout: one story per row cut at max_seq_len (trains only each story's first chunk)
    padded     every segment in its own row (all tokens trained, pads up to the longest row)
    packed     first-fit-decreasing rows with a block-diagonal mask (all tokens trained)
Rows of the table: tok/s of each layout, the packed/truncated and packed/padded ratios (median of the
repetitions, min–max in the note), and the padding fraction of each layout, at max_seq_len 256 and 512.
"""
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train import prepare_workspace  # noqa: E402
from modelling.config import resolve_dtype  # noqa: E402
from modelling.data import SegmentBatches, one_per_row, pack_rows  # noqa: E402
from modelling.model import ModelArgs, Transformer  # noqa: E402

SHAPE = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32)  # the demo model
SEGMENTS_PER_STEP = 16
LAYOUTS = ("truncated", "padded", "packed")


def layout_rows(segments, layout, max_seq_len):
    """The step's segments arranged as `layout` (rows numbered in the `row` field)."""
    if layout == "packed":
        return pack_rows(segments, max_seq_len)
    if layout == "truncated":
        segments = segments[segments["start"] == 0]
    return one_per_row(segments)


def measure(batches, steps, layout, model, optimizer, ctx):
    """(target tokens, row positions, seconds) of training `steps` in `layout`."""
    n_tokens = n_positions = 0
    t0 = time.perf_counter()
    for segments in steps:
        rows = layout_rows(segments, layout, batches.max_seq_len)
        x, y, positions, segment_ids = batches.batch(rows)
        with ctx:
            model(x, y, positions=positions, segment_ids=segment_ids)
        model.last_loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n_tokens += int((y >= 0).sum())
        n_positions += x.numel()
    return n_tokens, n_positions, time.perf_counter() - t0


def run(quick=False):
    from tokenization.dataset import TokenizedDataset
    ws = prepare_workspace()
    here = os.getcwd()
    os.chdir(ws)
    try:
        ds = TokenizedDataset("storyworld", 512)
    finally:
        os.chdir(here)
    dtype = resolve_dtype("auto", "cpu")
    ctx = nullcontext() if dtype == "float32" else torch.autocast("cpu", dtype=getattr(torch, dtype))
    n_steps, reps = (4, 3) if quick else (10, 5)
    rng = np.random.default_rng(0)
    story_ids = rng.choice(ds.story_ids("train"), size=SEGMENTS_PER_STEP * n_steps * 2, replace=False)
    rows = []
    for max_seq_len in (256, 512):
        batches = SegmentBatches(ds, max_seq_len)
        segments = rng.permutation(batches.segments(story_ids))
        steps = [segments[i:i + SEGMENTS_PER_STEP] for i in range(0, n_steps * SEGMENTS_PER_STEP, SEGMENTS_PER_STEP)]
        torch.manual_seed(0)
        model = Transformer(ModelArgs(vocab_size=512, max_seq_len=max_seq_len, **SHAPE))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        measure(batches, steps[:2], "packed", model, optimizer, ctx)  # warm-up
        tok_s = {layout: [] for layout in LAYOUTS}
        pad = {}
        for _ in range(reps):
            for layout in LAYOUTS:
                n_tokens, n_positions, seconds = measure(batches, steps, layout, model, optimizer, ctx)
                tok_s[layout].append(n_tokens / seconds)
                pad[layout] = 1 - n_tokens / n_positions
        for layout in LAYOUTS:
            rows.append({"bench": "packing", "metric": f"{layout} tok/s @{max_seq_len}",
                         "value": statistics.median(tok_s[layout]), "unit": "tok/s",
                         "note": f"pad {pad[layout]:.1%}, {dtype}, dim {SHAPE['dim']}, {SEGMENTS_PER_STEP} segments/step"})
        for other in ("truncated", "padded"):
            ratios = [a / b for a, b in zip(tok_s["packed"], tok_s[other])]
            rows.append({"bench": "packing", "metric": f"packed/{other} @{max_seq_len}",
                         "value": statistics.median(ratios), "unit": "x",
                         "note": f"min {min(ratios):.2f}, max {max(ratios):.2f} over {reps} interleaved reps; "
                                 f"load {os.getloadavg()[0]:.1f}"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
