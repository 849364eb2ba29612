"""modelling/samplers.py: selection separate from order, stable sorts with deterministic ties, seeded random order,
filters and budgets, clear errors; plus two real training runs whose orders differ but whose multiset is equal."""
import numpy as np
import pandas as pd
import pytest
import torch

from common.errors import UserError
from modelling.batch_log import BatchLog
from modelling.samplers import StorySampler
from tests.fixtures_run import TINY_CONFIG, train_args

IDS = np.arange(100, 160)  # 60 train stories
S = 8


@pytest.fixture
def metadata():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=len(IDS)).astype(float)  # many ties
    values[[3, 17]] = np.nan
    return pd.DataFrame({"n_words": values, "score": rng.normal(size=len(IDS)), "name": ["x"] * len(IDS)},
                        index=pd.Index(IDS, name="story_id"))


def all_ids(sampler, n_steps):
    return np.concatenate([sampler.step_ids(k) for k in range(1, n_steps + 1)])


def test_orders_of_one_selection_have_the_same_multiset_and_steps(metadata):
    samplers = [StorySampler(IDS, S, "random", 1, metadata),
                StorySampler(IDS, S, "sort_ascending", 1, metadata, sort_by="n_words"),
                StorySampler(IDS, S, "sort_descending", 1, metadata, sort_by="score")]
    assert {s.steps_per_epoch for s in samplers} == {60 // 8}
    assert len({s.selection_sha256 for s in samplers}) == 1
    orders = [all_ids(s, s.steps_per_epoch) for s in samplers]
    assert all(np.array_equal(np.sort(o), np.sort(orders[0])) for o in orders)
    assert len(np.unique(orders[0])) == 56 and not np.array_equal(orders[0], orders[1])
    # the trim to whole steps is a seeded subset, the same whatever the order
    assert np.array_equal(samplers[0].selection, samplers[1].selection)


def test_sorts_are_stable_ties_by_story_id_nan_last(metadata):
    for sampler, sign in (("sort_ascending", 1), ("sort_descending", -1)):
        s = StorySampler(IDS, 4, sampler, 0, metadata, sort_by="n_words", n_stories=60)
        order = all_ids(s, s.steps_per_epoch)
        values = metadata["n_words"].reindex(order).to_numpy()
        finite = values[~np.isnan(values)]
        assert np.all(np.diff(sign * finite) >= 0)
        assert np.all(np.isnan(values[-2:]))  # NaN last in both directions
        for v in np.unique(finite):  # ties in story-id order
            tied = order[values == v]
            assert np.array_equal(tied, np.sort(tied))
        # the same order every epoch for the sorted samplers, and from any data seed
        assert np.array_equal(s.step_ids(1), s.step_ids(s.steps_per_epoch + 1))
        again = StorySampler(IDS, 4, sampler, 99, metadata, sort_by="n_words")
        assert np.array_equal(all_ids(again, again.steps_per_epoch), order)


def test_random_order_is_seeded_and_reshuffled_per_epoch(metadata):
    a, b, c = (StorySampler(IDS, S, "random", seed) for seed in (5, 5, 6))
    n = a.steps_per_epoch
    assert np.array_equal(all_ids(a, 2 * n), all_ids(b, 2 * n))
    assert not np.array_equal(all_ids(a, n), all_ids(c, n))
    epoch1, epoch2 = all_ids(a, n), all_ids(a, 2 * n)[n * S:]
    assert np.array_equal(np.sort(epoch1), np.sort(epoch2)) and not np.array_equal(epoch1, epoch2)


def test_filter_budget_and_combined(metadata):
    above = StorySampler(IDS, 2, "filter_by_threshold", 0, metadata, filter_column="n_words", threshold=3)
    assert np.all(metadata["n_words"].reindex(above.selection) >= 3)
    below = StorySampler(IDS, 2, "filter_by_threshold", 0, metadata, filter_column="n_words", threshold=3,
                         filter_keep="below")
    assert np.all(metadata["n_words"].reindex(below.selection) < 3)
    n_valid = int(np.sum(~np.isnan(metadata["n_words"])))
    assert len(above.selection) + len(below.selection) in (n_valid, n_valid - 1, n_valid - 2)  # NaN never kept
    combined = StorySampler(IDS, 2, "combined", 0, metadata, sort_by="score", sort_order="descending",
                            filter_column="n_words", threshold=3)
    assert np.array_equal(combined.selection, above.selection)
    order = all_ids(combined, combined.steps_per_epoch)
    assert np.all(np.diff(metadata["score"].reindex(order).to_numpy()) <= 0)
    budget = StorySampler(IDS, S, "random", 3, n_stories=20)
    assert len(budget.selection) == 16 and budget.steps_per_epoch == 2
    assert np.array_equal(budget.selection, StorySampler(IDS, S, "sort_ascending", 3, metadata, sort_by="score",
                                                         n_stories=20).selection)


def test_budget_selection_is_independent_of_the_order_seed():
    """A story budget is drawn with selection_seed, so random orders with different data seeds (the durability
    baseline) train on the same stories; another selection_seed draws another subset."""
    picks = [StorySampler(IDS, S, "random", data_seed, n_stories=24).selection for data_seed in (0, 1, 2)]
    assert all(np.array_equal(picks[0], p) for p in picks[1:])
    orders = [all_ids(StorySampler(IDS, S, "random", d, n_stories=24), 3) for d in (0, 1)]
    assert not np.array_equal(orders[0], orders[1]) and sorted(orders[0]) == sorted(orders[1])
    other = StorySampler(IDS, S, "random", 0, n_stories=24, selection_seed=1).selection
    assert not np.array_equal(picks[0], other)


def test_sampler_errors(metadata):
    with pytest.raises(UserError, match="available: n_words, score"):
        StorySampler(IDS, S, "sort_ascending", 0, metadata, sort_by="nope")
    with pytest.raises(UserError, match="not a numeric metadata column"):
        StorySampler(IDS, S, "sort_ascending", 0, metadata, sort_by="name")
    with pytest.raises(UserError, match="needs --sort_by"):
        StorySampler(IDS, S, "sort_descending", 0, metadata)
    with pytest.raises(UserError, match="fewer than one step"):
        StorySampler(IDS, 64, "random", 0)
    with pytest.raises(UserError, match="unknown"):
        StorySampler(IDS, S, "shuffle", 0)


def test_two_real_runs_same_selection_different_order(meta_dataset, tok_dataset, monkeypatch):
    """train.py with the random and the sort_descending sampler over one selection: same multiset, same step
    count, and the sorted run's batch log follows the metadata column. (train.main in-process: no startup.)"""
    from modelling import train
    ws = tok_dataset["workspace"]
    monkeypatch.chdir(ws)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = {**TINY_CONFIG, "dataset": tok_dataset["dataset"], "vocab_size": tok_dataset["vocab_size"],
            "n_stories": 44, "max_iters": -1, "epochs": 2, "dim": 16, "n_layers": 1, "eval_interval": 100}
    try:
        train.main(train_args(**{**base, "out_dir": "out/order_random"}))
        train.main(train_args(**{**base, "out_dir": "out/order_sorted", "sampler": "sort_descending",
                                 "sort_by": "n_words"}))
    finally:
        torch.set_num_threads(n_threads)
    random_log, sorted_log = BatchLog(ws / "out/order_random"), BatchLog(ws / "out/order_sorted")
    assert len(random_log) == len(sorted_log) == 2 * (40 // 8)  # 44 stories -> 5 whole steps of 8, 2 epochs
    a, b = random_log.steps(1, len(random_log)), sorted_log.steps(1, len(sorted_log))
    assert np.array_equal(np.sort(a), np.sort(b)) and not np.array_equal(a, b)
    assert len(np.unique(a)) == 40 and np.all(np.bincount(a)[np.unique(a)] == 2)  # each story once per epoch
    table = ws / "data" / tok_dataset["dataset"] / f"tok{tok_dataset['vocab_size']}" / "metadata.parquet"
    n_words = pd.read_parquet(table).set_index("story_id")["n_words"]
    epoch = b[:40]
    assert np.all(np.diff(n_words.reindex(epoch).to_numpy()) <= 0)

