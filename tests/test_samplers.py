"""modelling/samplers.py over segments: selection separate from order, every token of every selected story a
target exactly once per epoch, stable sorts with deterministic ties, seeded random order, filters and budgets,
clear errors; plus two real training runs whose orders differ but whose segment multiset is equal."""
import numpy as np
import pandas as pd
import pytest

from common.errors import UserError
from modelling.batch_log import BatchLog
from modelling.data import segment_keys
from modelling.samplers import SegmentSampler
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, TINY_CONFIG, train_args

IDS = np.arange(100, 160)  # 60 train stories
LENGTHS = np.random.default_rng(1).integers(5, 40, size=200)  # tokens per story id (BOS included)
M = 16  # max_seq_len: stories longer than 16 tokens are cut into chunks
S = 8


def n_tokens_of(ids):
    return LENGTHS[np.asarray(ids)]


def make(sampler="random", data_seed=0, metadata=None, segments_per_step=S, **kw):
    return SegmentSampler(IDS, n_tokens_of, M, segments_per_step, sampler, data_seed, metadata, **kw)


@pytest.fixture
def metadata():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=len(IDS)).astype(float)  # many ties
    values[[3, 17]] = np.nan
    return pd.DataFrame({"n_words": values, "score": rng.normal(size=len(IDS)), "name": ["x"] * len(IDS)},
                        index=pd.Index(IDS, name="story_id"))


def all_segments(sampler, n_steps):
    return np.concatenate([sampler.step_segments(k) for k in range(1, n_steps + 1)])


def test_every_token_is_a_target_exactly_once_per_epoch():
    s = make()
    seg = all_segments(s, s.steps_per_epoch)
    assert s.steps_per_epoch == -(-len(s.segments) // S) and len(seg) == len(s.segments)
    assert np.all(seg["n_tokens"] <= M) and np.all(seg["n_tokens"] > 0)
    for sid in IDS:  # the story's chunks tile [0, n_tokens) without gap or overlap
        mine = np.sort(seg[seg["story_id"] == sid], order="start")
        assert mine["start"][0] == 0 and np.array_equal(mine["start"][1:], np.cumsum(mine["n_tokens"])[:-1])
        assert mine["n_tokens"].sum() == LENGTHS[sid]
        assert np.all(mine["start"] % M == 0)  # offsets depend only on the story and M
    assert s.n_tokens == LENGTHS[IDS].sum()


def test_orders_of_one_selection_have_the_same_segment_multiset_and_steps(metadata):
    samplers = [make("random", 1, metadata), make("sort_ascending", 1, metadata, sort_by="n_words"),
                make("sort_descending", 1, metadata, sort_by="score")]
    assert len({s.steps_per_epoch for s in samplers}) == 1 and len({s.selection_sha256 for s in samplers}) == 1
    orders = [segment_keys(all_segments(s, s.steps_per_epoch)) for s in samplers]
    assert all(np.array_equal(np.sort(o), np.sort(orders[0])) for o in orders)
    assert not np.array_equal(orders[0], orders[1])


def test_sorts_are_stable_ties_by_story_id_chunks_in_order_nan_last(metadata):
    for sampler, sign in (("sort_ascending", 1), ("sort_descending", -1)):
        s = make(sampler, 0, metadata, segments_per_step=4, sort_by="n_words")
        seg = all_segments(s, s.steps_per_epoch)
        values = metadata["n_words"].reindex(seg["story_id"]).to_numpy()
        finite = values[~np.isnan(values)]
        assert np.all(np.diff(sign * finite) >= 0)
        nan_stories = metadata.index[metadata["n_words"].isna()]
        n_nan_segments = int(np.isin(seg["story_id"], nan_stories).sum())
        assert np.all(np.isnan(values[-n_nan_segments:]))  # NaN last in both directions
        keys = segment_keys(seg)
        for v in np.unique(finite):  # ties in story-id order, a story's chunks together and in order
            tied = keys[values == v]
            assert np.array_equal(tied, np.sort(tied))
        assert np.array_equal(s.step_segments(1), s.step_segments(s.steps_per_epoch + 1))
        again = make(sampler, 99, metadata, segments_per_step=4, sort_by="n_words")
        assert np.array_equal(all_segments(again, again.steps_per_epoch), seg)


def test_random_order_is_seeded_and_reshuffled_per_epoch():
    a, b, c = make(data_seed=5), make(data_seed=5), make(data_seed=6)
    n = a.steps_per_epoch
    assert np.array_equal(all_segments(a, 2 * n), all_segments(b, 2 * n))
    assert not np.array_equal(all_segments(a, n), all_segments(c, n))
    epoch1, epoch2 = segment_keys(all_segments(a, n)), segment_keys(all_segments(a, 2 * n))[len(a.segments):]
    assert np.array_equal(np.sort(epoch1), np.sort(epoch2)) and not np.array_equal(epoch1, epoch2)


def test_filter_budget_and_combined(metadata):
    above = make("filter_by_threshold", 0, metadata, filter_column="n_words", threshold=3)
    assert np.all(metadata["n_words"].reindex(above.selection) >= 3)
    below = make("filter_by_threshold", 0, metadata, filter_column="n_words", threshold=3, filter_keep="below")
    assert np.all(metadata["n_words"].reindex(below.selection) < 3)
    n_valid = int(np.sum(~np.isnan(metadata["n_words"])))
    assert len(above.selection) + len(below.selection) == n_valid  # NaN never kept, nothing trimmed
    combined = make("combined", 0, metadata, sort_by="score", sort_order="descending", filter_column="n_words",
                    threshold=3)
    assert np.array_equal(combined.selection, above.selection)
    order = all_segments(combined, combined.steps_per_epoch)["story_id"]
    assert np.all(np.diff(metadata["score"].reindex(order).to_numpy()) <= 0)
    budget = make(data_seed=3, n_stories=20)
    assert len(budget.selection) == 20
    assert np.array_equal(budget.selection, make("sort_ascending", 3, metadata, sort_by="score",
                                                 n_stories=20).selection)


def test_budget_selection_is_independent_of_the_order_seed():
    """A story budget is drawn with selection_seed, so random orders with different data seeds (the durability
    baseline) train on the same stories; another selection_seed draws another subset."""
    picks = [make(data_seed=d, n_stories=24).selection for d in (0, 1, 2)]
    assert all(np.array_equal(picks[0], p) for p in picks[1:])
    orders = [segment_keys(all_segments(make(data_seed=d, n_stories=24), 3)) for d in (0, 1)]
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(picks[0], make(n_stories=24, selection_seed=1).selection)


def test_sampler_errors(metadata):
    with pytest.raises(UserError, match="available: n_words, score"):
        make("sort_ascending", 0, metadata, sort_by="nope")
    with pytest.raises(UserError, match="not a numeric metadata column"):
        make("sort_ascending", 0, metadata, sort_by="name")
    with pytest.raises(UserError, match="needs --sort_by"):
        make("sort_descending", 0, metadata)
    with pytest.raises(UserError, match="selection is empty"):
        make("filter_by_threshold", 0, metadata, filter_column="n_words", threshold=100)
    with pytest.raises(UserError, match="unknown"):
        make("shuffle", 0)


def test_two_real_runs_same_selection_different_order(meta_dataset, tok_dataset, monkeypatch):
    """train.py with the random and the sort_descending sampler over one selection: same segment multiset, same
    step count, every token of the 44 stories trained once per epoch, and the sorted run follows the column."""
    ws = tok_dataset["workspace"]
    base = {**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"],
            "n_stories": 44, "max_iters": -1, "epochs": 2, "dim": 16, "n_layers": 1, "eval_interval": 100}
    run_stage(ws, "modelling/train.py", *train_args(**{**base, "out_dir": "out/order_random"}), env=ONE_THREAD)
    run_stage(ws, "modelling/train.py", *train_args(**{**base, "out_dir": "out/order_sorted",
                                                         "sampler": "sort_descending", "sort_by": "n_words"}),
              env=ONE_THREAD)
    random_log, sorted_log = BatchLog(ws / "out/order_random"), BatchLog(ws / "out/order_sorted")
    assert len(random_log) == len(sorted_log)
    a, b = random_log.steps(1, len(random_log)), sorted_log.steps(1, len(sorted_log))
    assert np.array_equal(np.sort(segment_keys(a)), np.sort(segment_keys(b)))
    assert not np.array_equal(segment_keys(a), segment_keys(b))
    from tokenization.dataset import TokenizedDataset
    monkeypatch.chdir(ws)
    ds = TokenizedDataset(tok_dataset["dataset"], tok_dataset["vocab_size"])
    stories = np.unique(a["story_id"])
    assert len(stories) == 44
    trained = np.bincount(a["story_id"], weights=a["n_tokens"])[stories]
    assert np.array_equal(trained, 2 * ds.n_tokens(stories))  # every token, once per epoch
    table = ws / "data" / tok_dataset["dataset"] / f"tok{tok_dataset['vocab_size']}" / "metadata.parquet"
    n_words = pd.read_parquet(table).set_index("story_id")["n_words"]
    # sorted across steps (inside a step the log lists segments by packed row)
    per_step = [n_words.reindex(sorted_log.step(k)["story_id"]).to_numpy() for k in range(1, len(sorted_log) // 2)]
    assert all(later.max() <= earlier.min() for earlier, later in zip(per_step, per_step[1:]))
