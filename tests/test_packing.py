"""Packing: segments fixed per story, attention kept inside each segment of a packed row, positions restarting
per segment, every selected token trained exactly once per epoch in the tensors the model really received
(captured by a forward hook, as an auditor would), and a long-document corpus trained with every token fed."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from modelling.batch_log import BatchLog
from modelling.checkpoints import load_run
from modelling.data import SEGMENT_DTYPE, SegmentBatches, pack_rows, split_rows, story_segments
from modelling.model import ModelArgs, Transformer
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, train_args


def tiny_model(seed=0, max_seq_len=64, vocab=97):
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, multiple_of=16,
                                  max_seq_len=max_seq_len))
    return model.eval()


def token_losses(model, x, y, positions=None, segment_ids=None):
    logits = model(x, positions=positions, segment_ids=segment_ids)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")


def test_story_segments_tile_each_story_at_fixed_offsets():
    seg = story_segments([7, 8, 9], [5, 16, 40], 16)
    assert seg[["story_id", "start", "n_tokens"]].tolist() == [(7, 0, 5), (8, 0, 16), (9, 0, 16), (9, 16, 16),
                                                               (9, 32, 8)]
    packed = pack_rows(seg, 16)
    assert sorted(packed[["story_id", "start", "n_tokens"]].tolist()) == sorted(seg[["story_id", "start",
                                                                                     "n_tokens"]].tolist())
    fill = np.bincount(packed["row"], weights=packed["n_tokens"])
    assert np.all(fill <= 16) and len(fill) == 4  # 61 tokens need 4 rows of 16 (5 + 8 share one)
    # every micro-batch / rank gets at least one row
    assert len(np.unique(pack_rows(seg, 64, min_rows=3)["row"])) == 3
    assert sum(len(p) for p in split_rows(pack_rows(seg, 64, min_rows=3), 3)) == len(seg)


def test_packed_segment_loss_equals_its_loss_alone_and_ignores_its_neighbours():
    """A segment's per-token loss in a packed row equals its loss run alone (fp32, <= 1e-5); changing another
    segment of the same row changes nothing of it; its positions restart at 0."""
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 97, (1, 21), generator=g), torch.randint(3, 97, (1, 30), generator=g)
    alone = token_losses(model, a[:, :-1], a[:, 1:])[0]
    x = torch.cat([b[:, :-1], a[:, :-1]], 1)
    y = torch.cat([b[:, 1:], a[:, 1:]], 1)
    positions = torch.cat([torch.arange(29), torch.arange(20)])[None]
    segment_ids = torch.cat([torch.zeros(29, dtype=torch.long), torch.ones(20, dtype=torch.long)])[None]
    packed = token_losses(model, x, y, positions, segment_ids)[0, 29:]
    assert (packed - alone).abs().max() < 1e-5
    x2 = x.clone()
    x2[0, :29] = torch.randint(3, 97, (29,), generator=g)  # another segment of the row
    changed = token_losses(model, x2, y, positions, segment_ids)[0, 29:]
    assert (changed - packed).abs().max() == 0
    # without the mask and position restart the same row gives a different loss: the test can fail
    unmasked = token_losses(model, x, y)[0, 29:]
    assert (unmasked - alone).abs().max() > 1e-3
    # the explicit-attention path (probe capture) applies the same mask
    model(x, y, return_attn=True, positions=positions, segment_ids=segment_ids)
    attn = model.last_attn[0][0]  # [H, T, T]
    assert attn[:, 29:, :29].abs().max() == 0 and attn[:, :29, 29:].abs().max() == 0


def test_packed_batch_tensors_from_segments(tok_dataset, monkeypatch):
    from tokenization.dataset import TokenizedDataset
    monkeypatch.chdir(tok_dataset["workspace"])
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    batches = SegmentBatches(ds, 64)
    by_length = ds.index.sort_values("n_tokens")["story_id"].to_numpy()
    long_story, short = int(by_length[-1]), [int(s) for s in by_length[:4]]
    segments = batches.segments([long_story] + short)
    packed = pack_rows(segments, 64)
    x, y, positions, segment_ids = batches.batch(packed)
    seq = batches.sequence(long_story)
    assert x.shape[1] == 64 and positions is not None
    got = Counter()
    for r in range(x.shape[0]):
        for s in torch.unique(segment_ids[r]):
            if s < 0:
                assert torch.all(y[r][segment_ids[r] == s] == -1)  # pads are never targets
                continue
            where = segment_ids[r] == s
            assert torch.equal(positions[r][where], torch.arange(int(where.sum())))  # positions restart
            got[tuple(y[r][where].tolist())] += 1
    expected = Counter()
    for sid, start, n, _ in segments.tolist():
        expected[tuple(batches.sequence(sid)[start + 1:start + n + 1].tolist())] += 1
    assert got == expected and sum(len(k) * v for k, v in got.items()) == len(seq) - 1 + ds.n_tokens(short).sum()


def test_every_selected_token_is_trained_exactly_once_in_what_the_model_received(tok_dataset, monkeypatch):
    """Audit a real training run: a global forward hook records the (x, y, positions, segment_ids) every
    training forward received; their target sequences are exactly the selection's stories, chunked, once each,
    and the batch log says the same."""
    from modelling import train
    from tokenization.dataset import TokenizedDataset
    ws = tok_dataset["workspace"]
    monkeypatch.chdir(ws)
    seen = []

    def record(module, args, kwargs, output):
        if isinstance(module, Transformer) and module.training:
            seen.append((args[0].clone(), args[1].clone(), kwargs.get("positions"), kwargs.get("segment_ids")))

    handle = torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(train_args(dataset=tok_dataset["dataset"], vocab_size=tok_dataset["vocab_size"],
                              out_dir="out/audit", n_stories=40, batch_size=8, max_seq_len=96, dim=16, n_layers=1,
                              n_heads=2, n_kv_heads=2, multiple_of=16, eval_interval=1000, dtype="float32",
                              gradient_accumulation_steps=2))
    finally:
        handle.remove()
        torch.set_num_threads(n_threads)
    run = load_run(ws / "out/audit")
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    batches = SegmentBatches(ds, 96)
    selection = np.unique(run.batch_log.steps(1, len(run.batch_log))["story_id"])
    assert len(selection) == 40 and len(seen) == 2 * run.config["n_steps"]  # 2 micro-batches per step
    received = Counter()
    for x, y, positions, segment_ids in seen:
        for r in range(x.shape[0]):
            ids = segment_ids[r] if segment_ids is not None else torch.where(y[r] >= 0, 0, -1)
            for s in torch.unique(ids):
                if s >= 0:
                    received[tuple(y[r][ids == s].tolist())] += 1
    expected = Counter(tuple(batches.sequence(sid)[start + 1:start + n + 1].tolist())
                       for sid, start, n, _ in batches.segments(selection).tolist())
    assert received == expected
    n_targets = int(ds.n_tokens(selection).sum())
    assert sum(len(k) * v for k, v in received.items()) == n_targets == run.config["n_tokens_selection"]
    logged = run.batch_log.steps(1, len(run.batch_log))
    assert int(logged["n_tokens"].sum()) == n_targets and run.train_log["tokens_seen"].iloc[-1] == n_targets
    meta = json.loads((ws / "out/audit/batch_log.json").read_text())
    assert meta["format"] == 2 and meta["n_targets"] == n_targets and 0 <= meta["padding_fraction"] < 0.5


def test_old_batch_log_format_is_refused(tmp_path):
    (tmp_path / "batch_log.json").write_text(json.dumps({"stories_per_step": 8, "steps_written": 1}))
    (tmp_path / "batch_log.bin").write_bytes(np.arange(8, dtype="<i8").tobytes())
    from common.errors import UserError
    with pytest.raises(UserError, match="format 1 .* re-run the training"):
        BatchLog(tmp_path)


def test_long_document_corpus_trains_every_token(tok_dataset, tmp_path):
    """A `local` corpus of 12 documents of 5,000–20,000 words (storyworld stories concatenated) goes through
    download → vocab → pretokenize → train with every token fed and an exact index and batch log."""
    raw = json.loads((tok_dataset["workspace"] / "data/storyworld/data00.json").read_text())
    rng = np.random.default_rng(0)
    docs, i = [], 0
    while len(docs) < 12:
        target, words, parts = rng.integers(5000, 20000), 0, []
        while words < target:
            story = raw[i % len(raw)]["story"]
            parts.append(story)
            words += len(story.split())
            i += 1
        docs.append({"story": "\n\n".join(parts)})
    src = tmp_path / "long.json"
    src.write_text(json.dumps(docs))
    run_stage(tmp_path, "download/download_datasets.py", "local", "--name", "longdocs", src)
    run_stage(tmp_path, "tokenization/pretokenize.py", "train_vocab", "--dataset", "longdocs", "--vocab_size", 512)
    run_stage(tmp_path, "tokenization/pretokenize.py", "pretokenize", "--dataset", "longdocs", "--vocab_size", 512,
              "--val_fraction", 0.2)
    run_stage(tmp_path, "modelling/train.py", *train_args(
        dataset="longdocs", vocab_size=512, out_dir="out/long", batch_size=16, max_seq_len=128, dim=16,
        n_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, eval_interval=1000, eval_iters=1, max_iters=-1,
        n_stories=0, dtype="float32", n_probe_stories=0), env=ONE_THREAD)
    import pandas as pd
    index = pd.read_parquet(tmp_path / "data/longdocs/tok512/index.parquet")
    train_tokens = index.loc[index["split"] == "train", "n_tokens"]
    assert train_tokens.min() > 5000 and (index["split"] == "val").any()  # whole documents, far longer than a row
    log = BatchLog(tmp_path / "out/long")
    segments = log.steps(1, len(log))
    per_doc = pd.Series(segments["n_tokens"]).groupby(segments["story_id"]).sum()
    assert per_doc.sort_index().tolist() == index.loc[index["split"] == "train"].set_index("story_id")[
        "n_tokens"].sort_index().tolist()
    starts = pd.DataFrame(segments[["story_id", "start"]].tolist(), columns=["story_id", "start"])
    assert not starts.duplicated().any() and np.all(segments["n_tokens"] <= 128)
    assert np.dtype(SEGMENT_DTYPE).itemsize * len(segments) == (tmp_path / "out/long/batch_log.bin").stat().st_size
