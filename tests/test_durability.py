"""Durability v2: model-similarity measures on synthetic numbers with known answers (and their nulls), the paired
plan and its power, the same-multiset check, and the `smoke` size end to end through the real train.py and
eval.py (resume, restart, skip, bad input, the analysis' outputs and description.json)."""
import json

import numpy as np
import pytest

from experiments.common import runner
from experiments.durability import similarity
from experiments.durability.analysis import check_same_multiset, multiset_hash
from experiments.durability.experiment_durability import ALPHA, SIZES, plan_runs
from experiments.durability.naming import BASELINE, DATA_SEED_OFFSET, GRID


# ---- similarity measures ----

def test_kl_divergence_known_value_and_properties():
    p, q = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert similarity.kl_divergence(p, q) == pytest.approx(expected)
    logits = np.random.default_rng(2).normal(size=(3, 7, 11))
    assert similarity.kl_divergence(logits, logits + 4.0) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    assert similarity.symmetric_kl(logits, logits[::-1]) == pytest.approx(similarity.symmetric_kl(logits[::-1], logits))
    assert similarity.symmetric_kl(logits, logits[::-1]) > 0


def test_procrustes_similarity_ignores_rotation_shift_and_scale():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    r, cos = similarity.procrustes_similarity(emb, 3.0 * emb @ rotation + 5.0)
    assert r == pytest.approx(1.0) and cos == pytest.approx(1.0)
    noisy = [similarity.procrustes_similarity(emb, emb @ rotation + s * rng.normal(size=emb.shape))[0]
             for s in (0.1, 0.5, 2.0)]
    unrelated = similarity.procrustes_similarity(emb, rng.normal(size=emb.shape))[0]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2] > unrelated
    with pytest.raises(ValueError):
        similarity.procrustes_similarity(emb, emb[:, :8])


def test_linear_cka_invariances_and_null():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 24))
    rotation, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    assert similarity.linear_cka(x, 2.5 * x @ rotation + 1.0) == pytest.approx(1.0)
    # the null: representations of the same inputs that share nothing -> CKA near 0 (d/n scale), far below 1
    assert similarity.linear_cka(x, rng.normal(size=(500, 24))) < 0.1
    partly = similarity.linear_cka(x, x @ rotation + rng.normal(size=x.shape))
    assert 0.3 < partly < 1.0
    with pytest.raises(ValueError):
        similarity.linear_cka(x, x[:10])


# ---- design ----

def _design(size):
    s = SIZES[size]
    return dict(dataset="d", vocab_size=512, metric=s["metric"], orders=list(s["orders"]), n_pairs=s["n_pairs"],
                grid=s["grid"], n_stories=s["n_stories"], selection_seed=0, train=s["train"], eval=s["eval"],
                selection={"steps": 40})


def test_demo_plan_pairs_share_init_and_selection_and_the_grid_crosses_init_with_order():
    design = _design("demo")
    runs = plan_runs(design)
    pairs = [r for r in runs if r["role"] == "pair"]
    grid = [r for r in runs if r["role"] == "grid"]
    assert len(pairs) == 8 * 2 and len(grid) == 3 * 3 - 3 and len({r["name"] for r in runs}) == len(runs) == 22
    for i in range(8):
        members = [r for r in pairs if r["init_seed"] == i]
        assert {r["condition"] for r in members} == {BASELINE, "asc_flesch_ease"}
        assert {r["train"]["seed"] for r in members} == {i} and {r["data_seed"] for r in members} == {DATA_SEED_OFFSET + i}
        assert len({(r["train"]["n_stories"], r["train"]["selection_seed"], r["steps"]) for r in members}) == 1
    assert {(r["init_seed"], r["data_seed"] - DATA_SEED_OFFSET) for r in grid} == {
        (i, j) for i in range(3) for j in range(3) if i != j}
    assert {r["condition"] for r in grid} == {GRID}
    assert all(r["train"]["dtype"] == "float32" for r in runs)  # pinned: no machine-dependent dtype=auto
    assert all(r["eval"]["steps"] == [40] for r in pairs) and all(r["eval"] is None for r in grid)
    both = plan_runs({**design, "orders": ["asc", "desc"]})
    assert len(both) == 30 and {r["condition"] for r in both} >= {"asc_flesch_ease", "desc_flesch_ease"}


def test_demo_and_full_designs_can_reject_and_smoke_is_refused():
    """The design's minimum attainable p is below alpha / number of primary tests (demo: 8 pairs, 1 test,
    0.0078 < 0.05; full: 16 pairs, 2 tests); the smoke size (2 pairs) is reported as underpowered, never "tested"."""
    for size in ("demo", "full"):
        s = SIZES[size]
        check = runner.check_design(s["n_pairs"], ALPHA, n_primary=len(s["orders"]))
        assert check["tested"] and check["min_p"] < check["threshold"] == ALPHA / len(s["orders"]), size
    assert SIZES["demo"]["n_pairs"] >= 8 and SIZES["full"]["n_pairs"] >= 16
    assert runner.check_design(8, ALPHA, 2)["min_p"] == pytest.approx(0.0078125)
    smoke = SIZES["smoke"]
    assert not runner.check_design(smoke["n_pairs"], ALPHA, len(smoke["orders"]))["tested"]


def test_same_multiset_check_catches_a_single_swapped_segment():
    from modelling.data import story_segments
    segments = np.concatenate([story_segments(np.arange(50), np.arange(50) % 7 + 10, 8)] * 2)
    rng = np.random.default_rng(4)

    def run(name, seg):
        return {"name": name, "segments": seg}
    runs = [run("a", segments), run("b", rng.permutation(segments)), run("c", segments[::-1])]
    check = check_same_multiset(runs)
    assert check["same_multiset"] and check["n_segments"] == len(segments) and check["n_distinct_stories"] == 50
    swapped = segments.copy()
    swapped[0]["start"] = 8  # one chunk of story 0 replaced by a wrong one, same count
    check = check_same_multiset(runs + [run("d", swapped)])
    assert not check["same_multiset"] and check["mismatched_runs"] == ["d"]
    assert multiset_hash(segments) == multiset_hash(rng.permutation(segments)) != multiset_hash(swapped)


# ---- the smoke size end to end (real train.py + eval.py) ----

SCRIPT = "experiments/durability/experiment_durability.py"
SMOKE_OPTIONS = ["--size", "smoke", "--dataset", "storyworld", "--vocab_size", "512", "--jobs", "2"]
SMOKE = ["--name", "smoke"] + SMOKE_OPTIONS


def test_no_arguments_prints_the_demo_plan(meta_dataset):
    """The published command without arguments: experiment `example`, demo size, storyworld/512."""
    from tests.fixtures_data import run_stage
    out = run_stage(meta_dataset["workspace"], SCRIPT, "--plan").stdout
    assert "durability experiment example (demo size) → out/experiments/durability/example" in out
    assert "random, asc_flesch_ease × init seeds 0..7" in out and "22 runs" in out
    assert "power: tested — min attainable p 0.00781 < 0.05" in out
    minutes = float(out.split("expected ≈ ")[1].split(" min")[0])
    assert 1 <= minutes <= 30, out
    commands = [line for line in out.splitlines() if line.startswith("python modelling/train.py")]
    assert len(commands) == 22 and sum(" && python eval.py " in c for c in commands) == 16


@pytest.fixture(scope="session")
def smoke_experiment(meta_dataset):
    """The smoke size run once in the shared workspace: 2 pairs × (random, asc) + 2 grid cells = 6 runs. Before it
    starts, two runs are left as a crash would leave them: asc_flesch_ease_s1 stopped after step 4 (train.py's own
    run, cut short with max_iters) and random_s1_d0 a folder with a torn config.json and no checkpoint."""
    from tests.fixtures_data import run_stage
    ws = meta_dataset["workspace"]
    exp_dir = ws / "out" / "experiments" / "durability" / "smoke"
    plan = run_stage(ws, SCRIPT, *SMOKE, "--plan").stdout
    line = next(x for x in plan.splitlines() if "runs/asc_flesch_ease_s1 " in x)
    stopped = [a for a in line.split(" && ")[0].split()[2:] if not a.startswith("--max_iters=")]
    run_stage(ws, "modelling/train.py", *stopped, "--max_iters=4")
    broken = exp_dir / "runs" / "random_s1_d0"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"config": {"dim"')
    proc = run_stage(ws, SCRIPT, *SMOKE, timeout=3600)  # ≈ 40 s idle; a shared CI box can be far slower
    return {**meta_dataset, "exp_dir": exp_dir, "stdout": proc.stdout,
            "experiment": json.loads((exp_dir / "experiment.json").read_text())}


@pytest.mark.slow  # the smoke size: 6 real train.py + eval.py runs
def test_smoke_writes_every_output_and_calls_itself_underpowered(smoke_experiment):
    import pandas as pd
    from experiments.common import describe
    exp_dir = smoke_experiment["exp_dir"]
    experiment = smoke_experiment["experiment"]
    assert experiment["analysis"]["same_multiset"] is True and experiment["analysis"]["tested"] is False
    assert "power: NOT tested — underpowered: with 2 pairs" in smoke_experiment["stdout"]
    runs = pd.read_csv(exp_dir / "runs.csv")
    assert len(runs) == 6 and runs.multiset_sha256.nunique() == 1
    rho = runs.groupby("condition").rho_flesch_ease.mean()
    assert rho["asc_flesch_ease"] > 0.95 and abs(rho["random"]) < 0.2
    primary = pd.read_csv(exp_dir / "primary.csv")
    assert list(primary.comparison) == ["asc_flesch_ease − random"] and primary.n[0] == 2
    assert not primary.tested[0] and not primary.significant[0] and primary.min_p[0] == 0.5
    per_run = runs.set_index("run")
    assert primary["diff"][0] == pytest.approx(np.mean([per_run.loc[f"asc_flesch_ease_s{i}", "val_loss_sub"] -
                                                        per_run.loc[f"random_s{i}", "val_loss_sub"] for i in (0, 1)]))
    assert (runs.val_loss_sub < np.log(512)).all()  # trained below the uniform guess
    exploratory = pd.read_csv(exp_dir / "exploratory.csv")
    assert {"val_loss", "val_loss_sub_mean_over_checkpoints"} <= set(exploratory.outcome)
    assert (exploratory.q.dropna() >= exploratory.p.dropna()).all()
    variance = pd.read_csv(exp_dir / "variance.csv").set_index("outcome")
    assert variance.loc["val_loss_sub", "n_init"] == 2 and variance.loc["val_loss_sub", "sd_residual"] >= 0
    sim = pd.read_csv(exp_dir / "similarity.csv").set_index("kind")
    assert sim.loc["same init: two random orders", "n_pairs"] == 2
    assert (sim.cka_hidden <= 1 + 1e-9).all() and (sim.symmetric_kl > 0).all()
    for png in ("trajectories", "pairs", "grid", "similarity"):
        assert (exp_dir / "figures" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (exp_dir / "report.md").read_text()
    assert report.index("## Minimum detectable effect") < report.index("## Result") and "not tested" in report
    description = describe.read_description(exp_dir)
    assert description["kind"] == "durability" and len(description["curves"]["runs"]) == 6
    curve = pd.read_csv(exp_dir / description["curves"]["runs"][0]["path"])
    assert {"step", "val_loss_sub"} <= set(curve.columns) and curve.step.iloc[-1] == experiment["design"]["runs"][0]["steps"]


@pytest.mark.slow  # the smoke size: 6 real train.py + eval.py runs
def test_a_stopped_run_is_resumed_a_broken_one_restarted_and_a_rerun_skips(smoke_experiment):
    import pandas as pd
    from modelling.batch_log import BatchLog
    from tests.fixtures_data import run_stage
    status = smoke_experiment["experiment"]["status"]
    assert status["asc_flesch_ease_s1"]["train"] == "resumed" and status["random_s1_d0"]["train"] == "restarted"
    assert status["random_s0"]["train"] == "trained" and all(s["done"] for s in status.values())
    runs = smoke_experiment["exp_dir"] / "runs"
    resumed, sibling = BatchLog(runs / "asc_flesch_ease_s1"), BatchLog(runs / "asc_flesch_ease_s0")
    # a sorted order does not depend on the seeds: the resumed run's segments equal its uninterrupted sibling's
    assert np.array_equal(resumed.steps(1, len(resumed)), sibling.steps(1, len(sibling)))
    steps = pd.read_csv(runs / "asc_flesch_ease_s1" / "train_log.csv")["step"]
    assert list(steps) == list(range(1, len(sibling) + 1))  # no step lost or logged twice across the resume
    ckpts = sorted(runs.glob("*/ckpt/*.pt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    proc = run_stage(smoke_experiment["workspace"], SCRIPT, *SMOKE)
    assert "skipping 6 finished run(s)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before


@pytest.mark.slow  # the smoke size: 6 real train.py + eval.py runs
def test_bad_input_is_one_line_and_exit_2(smoke_experiment):
    from tests.fixtures_data import run_stage
    ws = smoke_experiment["workspace"]
    proc = run_stage(ws, SCRIPT, *SMOKE, "--metric", "no_such_metric", check=False)
    assert proc.returncode == 2 and "unknown metadata column 'no_such_metric'" in proc.stderr
    assert "flesch_ease" in proc.stderr  # lists the available columns
    proc = run_stage(ws, SCRIPT, *SMOKE, "--pairs", "3", check=False)
    assert proc.returncode == 2 and "different design (differs in: n_pairs" in proc.stderr
    proc = run_stage(ws, SCRIPT, "--name", "x", "--size", "smoke", "--grid", "1", check=False)
    assert proc.returncode == 2 and "--grid 1" in proc.stderr
    proc = run_stage(ws, SCRIPT, "--name", "x", "--size", "smoke", "--set", "seed=3", check=False)
    assert proc.returncode == 2 and "chosen by the experiment" in proc.stderr
    assert not (ws / "out" / "experiments" / "durability" / "x").exists()


@pytest.mark.slow  # the smoke size: 6 real train.py + eval.py runs
def test_a_run_with_other_segments_fails_the_check(smoke_experiment):
    """Swap one segment in a copy of the experiment: the analysis refuses and records the evidence."""
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
