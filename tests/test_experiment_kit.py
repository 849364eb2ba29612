"""The experiment kit (experiments/common): statistics on numbers with known answers, the null behaviour of
each test, the refusal of a design too small to reject, robustness at n = 2, the plan's shell commands and
description.json round trips. No training: these run in a second or two."""
import itertools
import json
import shlex

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import gammaln

from common.errors import UserError
from experiments.common import describe, runner, stats


# ---- sign-flip test ----

def test_sign_flip_p_matches_enumeration_on_known_data():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, -0.2])
    observed = abs(d.sum())
    sums = [abs(np.dot(signs, d)) for signs in itertools.product([-1, 1], repeat=len(d))]
    expected = np.mean(np.array(sums) >= observed - 1e-12)
    p, method = stats.sign_flip_p(d)
    assert method == "exact" and p == pytest.approx(expected)
    assert p == pytest.approx(14 / 64)
    # by hand, d = (1, 1, 1, 1, -2): sum 2; flipping a subset of total s gives 2 - 2s, as extreme when s <= 0
    # or s >= 2. With k of the 1s flipped, s = k (-2 kept) or k - 2 (-2 flipped): s <= 0 in 1 + 11 patterns
    # (k = 0; k <= 2), s >= 2 in 11 + 1 (k >= 2; k = 4) -> 24 of 32
    assert stats.sign_flip_p([1, 1, 1, 1, -2])[0] == pytest.approx(24 / 32)


def test_sign_flip_p_extremes_and_min_attainable():
    for n in (2, 5, 8, 12):
        p, _ = stats.sign_flip_p(np.arange(1.0, n + 1))  # all positive: only the pattern and its mirror
        assert p == pytest.approx(stats.min_attainable_p(n)) == pytest.approx(2.0 ** (1 - n))
    assert stats.min_attainable_p(8) == pytest.approx(0.0078125)
    assert stats.sign_flip_p([0.0, 0.0, 0.0])[0] == 1.0  # no difference at all
    assert stats.sign_flip_p([1.0, -1.0])[0] == 1.0


def test_sign_flip_p_monte_carlo_beyond_exact_is_seeded_and_close():
    d = np.random.default_rng(3).normal(0.4, 1.0, 24)
    p1, method = stats.sign_flip_p(d, seed=1)
    assert method == "monte carlo" and p1 == stats.sign_flip_p(d, seed=1)[0]
    # the exact answer for the same data (forced enumeration) agrees within Monte Carlo error
    exact, _ = stats.sign_flip_p(d, exact_max_n=24)
    assert abs(p1 - exact) < 4 * np.sqrt(exact * (1 - exact) / stats.MONTE_CARLO_DRAWS) + 1e-4


def test_sign_flip_p_is_uniform_under_the_null():
    """Null: symmetric differences around 0 -> P(p <= 0.05) <= 0.05 (the test is exact, so not above it)."""
    rng = np.random.default_rng(0)
    ps = np.array([stats.sign_flip_p(rng.normal(0, 1, 8))[0] for _ in range(2000)])
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
    assert np.mean(ps <= 0.5) == pytest.approx(0.5, abs=0.05)


# ---- interval, power, effect size ----

@pytest.mark.parametrize("n", [8, 16])
def test_t_interval_covers_95_percent_at_the_design_sizes(n):
    rng = np.random.default_rng(n)
    hits = 0
    trials = 4000
    for _ in range(trials):
        _, lo, hi = stats.t_interval(rng.normal(0.3, 0.1, n))
        hits += lo <= 0.3 <= hi
    assert hits / trials >= 0.93
    assert hits / trials == pytest.approx(0.95, abs=0.015)


def test_t_interval_known_values_and_degenerate_input():
    mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) / np.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2 - half, 2 + half))
    assert stats.t_interval([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))  # zero variance: width 0
    assert np.isnan(stats.t_interval([1.0])[1]) and np.isnan(stats.t_interval([])[0])


def test_mde_paired_known_values_and_power():
    # the paired t-test's textbook value: 6 pairs at alpha 0.05 and 80% power need d ≈ 1.43
    assert stats.mde_paired(1.0, 6, 0.05) == pytest.approx(1.4345, abs=2e-3)
    assert stats.mde_paired(2.0, 6, 0.05) == pytest.approx(2 * stats.mde_paired(1.0, 6, 0.05))
    assert stats.mde_paired(1.0, 16, 0.025) < stats.mde_paired(1.0, 8, 0.025) < stats.mde_paired(1.0, 2, 0.025)
    # the MDE really has 80% power: simulate the t-test at that effect
    rng = np.random.default_rng(5)
    effect = stats.mde_paired(1.0, 8, 0.05)
    rejections = sps.ttest_1samp(rng.normal(effect, 1.0, (4000, 8)), 0, axis=1).pvalue < 0.05
    assert np.mean(rejections) == pytest.approx(0.8, abs=0.03)
    assert stats.mde_paired(0.0, 8) == 0.0 and np.isnan(stats.mde_paired(1.0, 1)) and np.isnan(
        stats.mde_paired(np.nan, 8))
    assert np.isfinite(stats.mde_paired(1.0, 2))  # n = 2 works (huge, but a number)


def test_hedges_g_av_known_value_null_and_degenerate():
    a, b = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    g, lo, hi = stats.hedges_g_av(a, b)
    sd_av = (2.0 + 1.0) / 2
    j = np.exp(gammaln(2.0) - gammaln(1.5)) / np.sqrt(2.0)  # J(df = 2(n-1) = 4)
    assert g == pytest.approx(2.0 / sd_av * j) and lo < g < hi
    assert stats.hedges_g_av([1.0, 2.0], [0.5, 1.0])[0] > 0  # n = 2 gives a number
    assert all(np.isnan(stats.hedges_g_av([1.0, 1.0], [0.0, 0.0])))  # zero spread: undefined, no raise
    rng = np.random.default_rng(2)
    g_null = [stats.hedges_g_av(rng.normal(0, 1, 8), rng.normal(0, 1, 8))[0] for _ in range(1000)]
    assert abs(np.mean(g_null)) < 0.05  # null: centred on 0


def test_bh_q_on_a_known_vector():
    q = stats.bh_q([0.01, 0.04, np.nan, 0.03, 0.5])
    assert np.isnan(q[2])
    # sorted p 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.0533, 0.0533, 0.5
    assert q[[0, 3, 1, 4]] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    p = np.random.default_rng(0).uniform(size=30)
    assert stats.bh_q(p) == pytest.approx(sps.false_discovery_control(p, method="bh"))


# ---- the design check and compare_paired ----

def test_design_too_small_is_refused_as_tested():
    assert stats.needed_pairs(0.05, 1) == 6 and stats.needed_pairs(0.05, 2) == 7
    small = runner.check_design(5, alpha=0.05, n_primary=1)  # min p 0.0625 >= 0.05
    assert not small["tested"] and "underpowered" in small["reason"] and small["min_p"] == 0.0625
    assert not runner.check_design(6, alpha=0.05, n_primary=2)["tested"]  # 0.03125 >= 0.025
    ok = runner.check_design(8, alpha=0.05, n_primary=2)
    assert ok["tested"] and ok["min_p"] < ok["threshold"] == 0.025
    # the strongest possible result of a too-small design is still not "significant"
    row = stats.compare_paired(np.arange(1.0, 6.0), alpha=0.05)
    assert row["p"] == pytest.approx(0.0625) and not row["tested"] and not row["significant"]
    row = stats.compare_paired(np.arange(1.0, 9.0), alpha=0.05, n_primary=2)
    assert row["tested"] and row["significant"] and row["p"] < row["threshold"]


def test_compare_paired_row_is_robust_at_tiny_n():
    row = stats.compare_paired(([1.0, 2.0], [0.5, 1.0]))
    assert row["n"] == 2 and row["diff"] == pytest.approx(0.75) and row["ci_lo"] < 0.75 < row["ci_hi"]
    assert np.isfinite(row["mde"]) and np.isfinite(row["g_av"]) and row["p"] == 0.5 and not row["tested"]
    one = stats.compare_paired([0.4])
    assert one["n"] == 1 and np.isnan(one["p"]) and np.isnan(one["ci_lo"]) and "need ≥ 2" in one["reason"]
    none = stats.compare_paired(([np.nan, 1.0], [2.0, np.nan]))  # no complete pair
    assert none["n"] == 0 and np.isnan(none["diff"])
    flat = stats.compare_paired(np.zeros(8))
    assert flat["p"] == 1.0 and flat["ci_lo"] == flat["ci_hi"] == 0.0 and not flat["significant"]
    assert json.dumps(describe._json_safe(row))  # a row always serialises


def test_compare_paired_null_has_no_excess_rejections():
    rng = np.random.default_rng(11)
    rows = [stats.compare_paired((rng.normal(0, 1, 8), rng.normal(0, 1, 8)), alpha=0.05) for _ in range(600)]
    assert np.mean([r["significant"] for r in rows]) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 600)


def test_crossed_variance_recovers_known_components():
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(400):
        grid = rng.normal(0, 2.0, (3, 1)) + rng.normal(0, 0.0, (1, 3)) + rng.normal(0, 0.5, (3, 3))
        estimates.append(stats.crossed_variance(grid))
    assert np.sqrt(np.mean([e["sd_residual"] ** 2 for e in estimates])) == pytest.approx(0.5, rel=0.1)
    assert np.mean([e["sd_init"] for e in estimates]) > 1.0
    assert np.mean([e["sd_order"] for e in estimates]) < 0.3  # null source: near 0
    assert np.isnan(stats.crossed_variance([[1.0, 2.0]])["sd_init"])


# ---- runner ----

def _runs():
    return [runner.make_run(f"{c}_s{s}", c, 12, {"dataset": "tiny", "seed": s, "sampler": c}, {"n_prompts": 2},
                            init_seed=s) for c in ("random", "sort_ascending") for s in (0, 1)]


def test_plan_lines_are_plain_runnable_commands(tmp_path):
    runs = _runs()
    lines = runner.plan_lines(runs, runner.REPO_ROOT / "out" / "experiments" / "kit" / "x")
    assert len(lines) == 4
    train, evaluate = lines[0].split(" && ")
    argv = shlex.split(train)
    assert argv[:2] == ["python", "modelling/train.py"]
    assert "--out_dir=out/experiments/kit/x/runs/random_s0" in argv and "--max_iters=12" in argv
    assert shlex.split(evaluate)[:4] == ["python", "eval.py", "--out_dir", "out/experiments/kit/x/runs/random_s0"]
    with pytest.raises(ValueError):
        runner.make_run("a", "b", 3, {"out_dir": "x"}, {})
    assert runner.training_state(tmp_path / "nope", 12) == "new"
    assert runner.pending(tmp_path, runs) == runs  # nothing run yet: everything pending


def test_experiment_state_refuses_a_different_design(tmp_path):
    runner.Experiment(tmp_path, {"name": "x", "pairs": 8})
    runner.Experiment(tmp_path, {"name": "x", "pairs": 8})  # same design: fine (resume)
    with pytest.raises(UserError, match="different design.*pairs"):
        runner.Experiment(tmp_path, {"name": "x", "pairs": 4})


# ---- description.json ----

def _fake_experiment(tmp_path):
    exp = tmp_path / "experiments" / "kit" / "demo"
    runs = []
    for condition, shift in (("random", 0.0), ("sorted", 0.5)):
        for seed in (0, 1, 2):
            name = f"{condition}_s{seed}"
            summary = exp / "runs" / name / "tables" / "summary.csv"
            summary.parent.mkdir(parents=True)
            pd.DataFrame({"step": [1, 2, 4], "tokens_seen": [10, 20, 40],
                          "val_loss": [5.0 + shift + seed, 4.0 + shift + seed, 3.0 + shift + seed],
                          "unused": [0, 0, 0]}).to_csv(summary, index=False)
            runs.append({"name": name, "condition": condition, "init_seed": seed})
    (exp / "report.md").write_text("# demo\n")
    return exp, runs


def test_wall_time_lines_report_sessions_invocations_and_per_run_means(tmp_path):
    """The one wall-time record every experiment report reads: a run_all session, a command's invocation
    (recorded with the real clock) and the per-run means, each selectable."""
    import time
    experiment = runner.Experiment(tmp_path, {"name": "x"})
    assert runner.wall_time_lines(tmp_path) == []  # nothing ran yet: no invented figures
    experiment.state["sessions"] = [{"started_utc": "2026-12-02T10:00:00Z", "wall_s": 600.0, "runs": 4, "jobs": 2,
                                     "machine": {"cpu": "CPU-X", "cores": 2, "flags": {"avx512_bf16": True},
                                                 "load_avg": [1.0, 1.0, 1.0]}, "load_avg_end": [2.0, 1.5, 1.0]}]
    experiment.update("a", train_s=100.0, eval_s=20.0)
    experiment.update("b", train_s=300.0)
    runner.record_invocation(experiment, time.time() - 90, 0.5, "trained 4 runs, scored 8 checkpoints")
    lines = runner.wall_time_lines(tmp_path)
    assert len(lines) == 3 and all(line.startswith("- ") for line in lines)
    assert "4 runs with --jobs 2: **10.0 min**" in lines[0] and "CPU-X" in lines[0] and "avx512_bf16" in lines[0]
    assert "1.5 min wall (trained 4 runs, scored 8 checkpoints; load average 0.5" in lines[1]
    assert lines[2] == "- Per run (mean over 2): train 200 s, eval 20 s wall."
    assert runner.wall_time_lines(tmp_path, parts=("invocations",)) == [lines[1]]


def test_description_round_trip_and_condition_bands(tmp_path):
    exp, runs = _fake_experiment(tmp_path)
    entries = describe.write_run_curves(exp, runs, ["val_loss"])
    assert list(pd.read_csv(exp / entries[0]["path"]).columns) == ["step", "tokens_seen", "val_loss"]
    describe.write_description(exp, "kit", "a demo", curve_runs=entries, curve_columns=["val_loss"],
                               primary=[{"outcome": "val_loss", "p": np.nan}], baseline="random")
    description = describe.read_description(exp)
    assert description["primary"][0]["p"] is None and description["curves"]["runs"][3]["labels"] == {"init_seed": 0}
    assert describe.find_experiments(tmp_path) == ["kit/demo"]
    bands = describe.condition_bands(describe.run_curves(exp, description), "val_loss")
    sorted_band = bands[bands["condition"] == "sorted"].set_index("step")
    assert sorted_band.loc[1, "mean"] == pytest.approx(6.5) and sorted_band.loc[1, "n"] == 3
    half = sps.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert sorted_band.loc[4, "ci_hi"] == pytest.approx(4.5 + half)


def test_description_rejects_missing_and_escaping_paths(tmp_path):
    exp, runs = _fake_experiment(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        describe.write_description(exp, "kit", "t", tables=[{"name": "r", "path": "results.csv"}])
    describe.write_description(exp, "kit", "t")
    data = json.loads((exp / "description.json").read_text())
    data["figures"] = [{"path": "../../../secret.png"}]
    (exp / "description.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="leaves the experiment folder"):
        describe.read_description(exp)
    (exp / "description.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        describe.read_description(exp)
