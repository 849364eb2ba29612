"""Durability experiment: statistics on synthetic numbers with known answers, the design/run plan, the
same-multiset check, and the `smoke` preset end to end through the real train.py and eval.py."""
import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps

from common.paths import ROOT_ENV
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


def test_curve_band_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    seeds_by_step = rng.normal(loc=1.5, scale=2.0, size=(3, 20000))  # 3 seeds, 20000 independent "steps"
    _, lo, hi = stats.curve_band(seeds_by_step)
    assert np.mean((lo <= 1.5) & (1.5 <= hi)) == pytest.approx(0.95, abs=0.006)


def test_curve_band_equals_mean_ci_per_step():
    matrix = np.array([[1.0, 2.0, 3.0, 7.0], [3.0, 4.5, np.nan, np.nan], [2.0, 4.0, 5.0, np.nan]])
    band = np.array(stats.curve_band(matrix)).T
    for j in range(matrix.shape[1]):
        assert band[j] == pytest.approx(np.array(stats.mean_ci(matrix[:, j])), nan_ok=True)
    assert np.isnan(band[3, 1]) and band[3, 0] == 7.0


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


def test_same_multiset_check_catches_a_single_swapped_segment():
    from modelling.data import story_segments
    segments = np.concatenate([story_segments(np.arange(50), np.arange(50) % 7 + 10, 8)] * 2)
    rng = np.random.default_rng(4)

    def run(name, seg):
        return {"name": name, "segments": seg, "story_ids": seg["story_id"]}
    runs = [run("a", segments), run("b", rng.permutation(segments)), run("c", segments[::-1])]
    check = check_same_multiset(runs)
    assert check["same_multiset"] and check["n_story_ids"] == len(segments) and check["n_distinct_stories"] == 50
    swapped = segments.copy()
    swapped[0]["start"] = 8  # one chunk of story 0 replaced by a wrong one, same count
    check = check_same_multiset(runs + [run("d", swapped)])
    assert not check["same_multiset"] and check["mismatched_runs"] == ["d"]
    assert multiset_hash(segments) == multiset_hash(rng.permutation(segments)) != multiset_hash(swapped)


# ---- the smoke preset end to end (real train.py + eval.py) ----

SCRIPT = "experiments/durability/experiment_durability.py"
SMOKE_OPTIONS = ["--preset", "smoke", "--dataset", "storyworld", "--vocab_size", "512", "--jobs", "2"]
SMOKE = ["--name", "smoke"] + SMOKE_OPTIONS


@pytest.fixture(scope="session")
def smoke_experiment(meta_dataset):
    """The smoke preset run once in the shared workspace: 3 conditions × 2 seeds through the real stages.
    Before it starts, two runs are left as a crash would leave them: desc_flesch_ease_s1 stopped at step 16
    (train.py's own run, cut short with max_iters) and asc_flesch_ease_s1 a folder with a torn config.json
    and no checkpoint. The experiment must resume the first and restart the second."""
    from tests.fixtures_data import run_stage
    ws = meta_dataset["workspace"]
    exp_dir = ws / "out" / "experiments" / "durability" / "smoke"
    plan = dict(line.split(" ", 1) for line in run_stage(ws, SCRIPT, *SMOKE, "--plan").stdout.splitlines())
    stopped = [a for a in plan["desc_flesch_ease_s1"].split()[1:] if not a.startswith("--max_iters=")]
    run_stage(ws, "modelling/train.py", *stopped, "--max_iters=16")
    broken = exp_dir / "runs" / "asc_flesch_ease_s1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"config": {"dim"')
    proc = run_stage(ws, SCRIPT, *SMOKE)
    return {**meta_dataset, "exp_dir": exp_dir, "stdout": proc.stdout,
            "experiment": json.loads((exp_dir / "experiment.json").read_text())}


def test_no_arguments_prints_the_demo_plan_and_its_expected_duration(meta_dataset):
    """The published command without arguments: experiment `example`, the demo preset on storyworld/512.
    (--plan stops after the plan; without it the same lines come first, then the runs.)"""
    from tests.fixtures_data import run_stage
    out = run_stage(meta_dataset["workspace"], SCRIPT, "--plan").stdout
    assert "durability experiment example (demo preset) → out/experiments/durability/example" in out
    assert "random, asc_flesch_ease, desc_flesch_ease, asc_sentiment, desc_sentiment × init seeds [0, 1, 2] = " \
           "15 runs" in out
    # a 4,000-story selection of the 4,000-story fixture's train split = the whole split (batch fitted to it)
    minutes = float(out.split("expected ≈ ")[1].split(" min")[0])
    assert 1 <= minutes <= 60, out
    assert out.count("--sampler=") == 15


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_smoke_writes_every_output(smoke_experiment):
    import pandas as pd
    exp_dir = smoke_experiment["exp_dir"]
    experiment = smoke_experiment["experiment"]
    assert experiment["analysis"]["same_multiset"] is True
    runs = pd.read_csv(exp_dir / "runs.csv")
    assert sorted(runs.run) == sorted(r["name"] for r in experiment["design"]["runs"]) and len(runs) == 6
    assert runs.multiset_sha256.nunique() == 1
    # each condition got the order it asked for (Spearman of stream position vs flesch_ease)
    rho = runs.groupby("condition").rho_flesch_ease.mean()
    assert rho["asc_flesch_ease"] > 0.95 and rho["desc_flesch_ease"] < -0.95 and abs(rho["random"]) < 0.1
    results = pd.read_csv(exp_dir / "results.csv")
    assert {"val_loss", "out_flesch_ease"} <= set(results.outcome)
    assert set(results.condition) == {"random", "asc_flesch_ease", "desc_flesch_ease"}
    val = results[results.outcome == "val_loss"].set_index("condition")
    assert (val["mean"] < 6.0).all()  # trained below the uniform-guess loss ln(512) = 6.24
    assert val.loc["random", "diff_vs_baseline"] == 0
    assert val.loc["asc_flesch_ease", "diff_vs_baseline"] == pytest.approx(
        val.loc["asc_flesch_ease", "mean"] - val.loc["random", "mean"])
    divergence = pd.read_csv(exp_dir / "divergence.csv").set_index("condition")
    assert (divergence.kl_within > 0).all() and (divergence.procrustes_within < 1).all()
    curves = pd.read_csv(exp_dir / "curves.csv")
    assert set(curves.column) >= {"val_loss", "in_flesch_ease"}
    for png in ("curves", "input_order", "endpoint", "divergence", "sat_compare"):
        assert (exp_dir / "figures" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (exp_dir / "report.md").read_text()
    assert "Same multiset of segments in all 6 runs" in report and "**yes**" in report


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_every_run_trained_on_the_whole_train_split_once(smoke_experiment, monkeypatch):
    """Independent of the experiment's own check: read each batch log with the shared reader."""
    import pandas as pd
    from modelling.batch_log import BatchLog
    from tokenization.dataset import TokenizedDataset
    monkeypatch.setenv(ROOT_ENV, str(smoke_experiment["workspace"]))  # the shared readers' project root
    ds = TokenizedDataset("storyworld", 512)
    train_ids = ds.story_ids("train")
    n_tokens = ds.n_tokens(np.sort(train_ids))
    meta = pd.read_parquet(smoke_experiment["dir"] / "metadata.parquet").set_index("story_id")
    for run in smoke_experiment["experiment"]["design"]["runs"]:
        log = BatchLog(smoke_experiment["exp_dir"] / "runs" / run["name"])
        segments = log.steps(1, len(log))
        assert np.array_equal(np.unique(segments["story_id"]), np.sort(train_ids)), run["name"]
        with_chunks = pd.Series(segments["n_tokens"]).groupby(segments["story_id"]).sum()
        assert with_chunks.sort_index().tolist() == n_tokens.tolist(), run["name"]  # every token once
        if run["sampler"] != "random":  # sorted across steps (a step lists its segments by packed row)
            sign = 1 if run["sampler"] == "sort_ascending" else -1
            per_step = [sign * meta.loc[log.step(k)["story_id"], "flesch_ease"].to_numpy() for k in range(1, len(log))]
            per_step = [v[np.isfinite(v)] for v in per_step]
            assert all(b.min() >= a.max() for a, b in zip(per_step, per_step[1:]) if len(a) and len(b)), run["name"]


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_rerun_skips_finished_runs(smoke_experiment):
    from tests.fixtures_data import run_stage
    ckpts = sorted(smoke_experiment["exp_dir"].glob("runs/*/ckpt/*.pt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    proc = run_stage(smoke_experiment["workspace"], SCRIPT, *SMOKE)
    assert "skipping 6 finished run(s)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_training_state_of_damaged_runs(smoke_experiment, tmp_path):
    import shutil
    from experiments.durability.experiment_durability import planned_steps, training_state
    design = smoke_experiment["experiment"]["design"]
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_experiment["exp_dir"] / "runs" / "random_s0", run_dir)
    n_steps = planned_steps(design)
    assert training_state(run_dir, n_steps) == "done"
    (run_dir / "ckpt" / f"step_{n_steps:06d}.pt").unlink()  # killed before the last checkpoint
    assert training_state(run_dir, n_steps) == "resume"
    (run_dir / "ckpt" / "resume.pt").unlink()  # killed before any resume state
    assert training_state(run_dir, n_steps) == "restart"
    assert training_state(tmp_path / "absent", n_steps) == "new"


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_a_stopped_run_is_resumed_and_a_broken_one_restarted(smoke_experiment):
    import pandas as pd
    from modelling.batch_log import BatchLog
    status = smoke_experiment["experiment"]["status"]
    assert status["desc_flesch_ease_s1"]["train"] == "resumed"
    assert status["asc_flesch_ease_s1"]["train"] == "restarted"
    assert status["random_s0"]["train"] == "trained" and all(s["done"] for s in status.values())
    runs = smoke_experiment["exp_dir"] / "runs"
    resumed, sibling = BatchLog(runs / "desc_flesch_ease_s1"), BatchLog(runs / "desc_flesch_ease_s0")
    # a sorted order does not depend on the seeds, so the resumed run's ids equal its uninterrupted sibling's
    assert np.array_equal(resumed.steps(1, len(resumed)), sibling.steps(1, len(sibling)))
    steps = pd.read_csv(runs / "desc_flesch_ease_s1" / "train_log.csv")["step"]
    assert list(steps) == list(range(1, len(sibling) + 1))  # no step lost or logged twice across the resume


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_bad_input_is_one_line_and_exit_2(smoke_experiment):
    from tests.fixtures_data import run_stage
    ws = smoke_experiment["workspace"]
    proc = run_stage(ws, SCRIPT, *SMOKE, "--metrics", "no_such_metric", check=False)
    assert proc.returncode == 2 and "unknown metadata column(s) no_such_metric" in proc.stderr
    assert "flesch_ease" in proc.stderr  # lists the available columns
    proc = run_stage(ws, SCRIPT, *SMOKE, "--init_seeds", "0,1,2", "--data_seeds", "0,1,2", check=False)
    assert proc.returncode == 2 and "different design (differs in: init_seeds, data_seeds" in proc.stderr
    proc = run_stage(ws, SCRIPT, "--name", "x", "--preset", "smoke", "--n_stories", "-5", check=False)
    assert proc.returncode == 2 and "--n_stories -5 must be >= 0" in proc.stderr
    proc = run_stage(ws, SCRIPT, "--name", "x", "--preset", "smoke", "--set", "seed=3", check=False)
    assert proc.returncode == 2 and "chosen by the experiment" in proc.stderr
    assert not (ws / "out" / "experiments" / "durability" / "x").exists()


@pytest.mark.slow  # the smoke preset: 6 real train.py + eval.py runs
def test_a_run_with_other_stories_fails_the_check(smoke_experiment):
    """Swap one story id in a copy of the experiment: the analysis refuses and records the evidence."""
    import shutil
    from tests.fixtures_data import run_stage
    ws, exp_dir = smoke_experiment["workspace"], smoke_experiment["exp_dir"]
    copy = exp_dir.parent / "tampered"
    shutil.copytree(exp_dir, copy)
    bin_path = copy / "runs" / "asc_flesch_ease_s0" / "batch_log.bin"
    records = np.fromfile(bin_path, dtype="<i8").reshape(-1, 4)
    records[5, :3] = records[6, :3]  # one segment seen twice, another never
    records.tofile(bin_path)
    proc = run_stage(ws, SCRIPT, "--name", "tampered", *SMOKE_OPTIONS, check=False)
    assert proc.returncode == 2 and "asc_flesch_ease_s0 trained on a different multiset" in proc.stderr
    analysis = json.loads((copy / "experiment.json").read_text())["analysis"]
    assert analysis["same_multiset"] is False and analysis["multiset"]["mismatched_runs"] == ["asc_flesch_ease_s0"]
