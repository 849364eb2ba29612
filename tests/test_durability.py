"""Durability experiment: statistics on synthetic numbers with known answers, the design/run plan, the
same-multiset check, and the `smoke` preset end to end through the real train.py and eval.py."""
import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps

from experiments.durability import stats
from experiments.durability.analysis import check_same_multiset, multiset_hash
from experiments.durability.experiment_durability import BASELINE, plan_runs


# ---- statistics (synthetic numbers) ----

def test_mean_ci_is_the_student_t_interval():
    mean, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # sd 1, n 3
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert np.isnan(stats.mean_ci([5.0])[1]) and np.isnan(stats.mean_ci([])[0])
    assert stats.mean_ci([1.0, np.nan, 3.0])[0] == 2.0  # missing values ignored


def test_mean_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(loc=1.5, scale=2.0, size=(4000, 3))
    covered = [lo <= 1.5 <= hi for _, lo, hi in map(stats.mean_ci, samples)]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)


def test_curve_band_per_step():
    mean, lo, hi = stats.curve_band([[1, 2, 3], [3, 4, np.nan]])
    assert list(mean) == [2, 3, 3] and np.isnan(lo[2]) and lo[0] < 2 < hi[0]


def test_permutation_pvalue_matches_full_enumeration():
    a, b = [0.3, 1.2, 0.8], [1.0, 1.9, 1.4]
    pooled = np.array(a + b)
    observed = abs(np.mean(a) - np.mean(b))
    diffs = [abs(pooled[list(idx)].mean() - np.delete(pooled, list(idx)).mean())
             for idx in itertools.combinations(range(6), 3)]
    expected = np.mean(np.array(diffs) >= observed - 1e-12)
    assert stats.permutation_pvalue(a, b) == pytest.approx(expected)
    # fully separated 3 vs 3: only the observed split and its mirror are as extreme -> 2/20
    assert stats.permutation_pvalue([10, 11, 12], [1, 2, 3]) == pytest.approx(0.1)
    assert stats.min_permutation_pvalue(3, 3) == pytest.approx(0.1)
    assert stats.permutation_pvalue([1, 1, 1], [1, 1, 1]) == 1.0


def test_bootstrap_diff_ci_separates_a_real_shift_and_not_noise():
    rng = np.random.default_rng(1)
    a, b = rng.normal(5.0, 0.1, 6), rng.normal(4.0, 0.1, 6)
    diff, lo, hi = stats.bootstrap_diff_ci(a, b)
    assert diff == pytest.approx(a.mean() - b.mean()) and 0.8 < lo < diff < hi < 1.2
    a, b = rng.normal(0.0, 1.0, 6), rng.normal(0.0, 1.0, 6)
    _, lo, hi = stats.bootstrap_diff_ci(a, b)
    assert lo < 0 < hi
    assert np.isnan(stats.bootstrap_diff_ci([1.0], [2.0, 3.0])[1])


def test_hedges_g_known_value():
    # means differ by -1, pooled SD 1, correction 1 - 3/(4*6-9) = 0.8
    assert stats.hedges_g([1, 2, 3], [2, 3, 4]) == pytest.approx(-0.8)
    assert stats.hedges_g([2, 2], [1, 1]) == np.inf and np.isnan(stats.hedges_g([1, 1], [1, 1]))


def test_fdr_qvalues_benjamini_hochberg():
    q = stats.fdr_qvalues([0.01, 0.04, np.nan, 0.03, 0.5])
    assert np.isnan(q[2])
    # sorted p 0.01, 0.03, 0.04, 0.5 (m=4): 0.04, 0.0533, 0.0533, 0.5
    assert q[[0, 3, 1, 4]] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_kl_divergence_known_value_and_properties():
    p, q = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert stats.kl_divergence(p, q) == pytest.approx(expected)
    logits = np.random.default_rng(2).normal(size=(3, 7, 11))
    assert stats.kl_divergence(logits, logits + 4.0) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    assert stats.kl_divergence(logits, logits[::-1]) > 0


def test_procrustes_similarity_ignores_rotation_shift_and_scale():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    r, cos = stats.procrustes_similarity(emb, 3.0 * emb @ rotation + 5.0)
    assert r == pytest.approx(1.0) and cos == pytest.approx(1.0)
    noisy = [stats.procrustes_similarity(emb, emb @ rotation + s * rng.normal(size=emb.shape))[0]
             for s in (0.1, 0.5, 2.0)]
    unrelated = stats.procrustes_similarity(emb, rng.normal(size=emb.shape))[0]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2] > unrelated
    with pytest.raises(ValueError):
        stats.procrustes_similarity(emb, emb[:, :8])


def test_compare_to_baseline_row():
    row = stats.compare_to_baseline([2.0, 2.1, 2.2], [1.0, 1.1, 1.2])
    assert row["n_seeds"] == 3 and row["diff_vs_baseline"] == pytest.approx(1.0)
    assert row["diff_ci_lo"] > 0 and row["p_perm"] == pytest.approx(0.1) and row["hedges_g"] > 5


# ---- design and checks ----

def test_plan_uses_the_same_init_seeds_in_every_condition():
    runs = plan_runs(["flesch_reading_ease", "vader_compound"], [0, 1, 2], [7, 8, 9])
    conditions = {r["condition"] for r in runs}
    assert conditions == {BASELINE, "asc_flesch_reading_ease", "desc_flesch_reading_ease",
                          "asc_vader_compound", "desc_vader_compound"}
    for c in conditions:
        assert sorted(r["init_seed"] for r in runs if r["condition"] == c) == [0, 1, 2]
    assert sorted(r["data_seed"] for r in runs if r["condition"] == BASELINE) == [7, 8, 9]
    assert len({r["name"] for r in runs}) == len(runs) == 15


def test_same_multiset_check_catches_a_single_swapped_story():
    ids = np.repeat(np.arange(50), 2)
    rng = np.random.default_rng(4)
    runs = [{"name": "a", "story_ids": ids}, {"name": "b", "story_ids": rng.permutation(ids)},
            {"name": "c", "story_ids": np.sort(ids)[::-1]}]
    check = check_same_multiset(runs)
    assert check["same_multiset"] and check["n_story_ids"] == 100 and check["n_distinct_stories"] == 50
    swapped = ids.copy()
    swapped[0] = 50  # one story replaced by another, same count
    check = check_same_multiset(runs + [{"name": "d", "story_ids": swapped}])
    assert not check["same_multiset"] and check["mismatched_runs"] == ["d"]
    assert multiset_hash(ids) == multiset_hash(rng.permutation(ids)) != multiset_hash(swapped)
