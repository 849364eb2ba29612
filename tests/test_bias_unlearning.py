"""experiments/bias_unlearning: the plan (branches hang off real parent checkpoints, the design can reject), the
derived measures on known tables, and (slow) the smoke size end to end through the kit."""
import json

import numpy as np
import pandas as pd
import pytest

from common.paths import ROOT_ENV
from experiments.bias_unlearning import experiment_bias_unlearning as exp
from experiments.common import describe, runner
from modelling.schedule import checkpoint_steps
from tests.fixtures_data import run_stage

SCRIPT = "experiments/bias_unlearning/experiment_bias_unlearning.py"


def test_every_size_branches_at_parent_checkpoints_and_demo_can_reject():
    for name, size in exp.SIZES.items():
        stages = exp.stage_steps(size["parent_steps"])
        assert stages[-1] == size["parent_steps"] and stages[0] < stages[1] < stages[2]
        assert set(stages) <= set(checkpoint_steps(size["parent_steps"], size["eval_interval"])), name
        assert size["train"]["dtype"] == "float32"
    for name in ("demo", "full"):  # at least 6 seeds: the smallest sign-flip p (2 / 2^6) is below 0.05
        assert runner.check_design(len(exp.SIZES[name]["seeds"]))["tested"]
    assert exp.measured_steps(64, 128) == {68, 80, 128} and exp.measured_steps(0, 16, (2, 8, 16)) == {2, 4, 8, 16}


def test_plan_lines_branch_from_the_stage_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    exp.main(["--size", "smoke", "--name", "p", "--plan"])
    lines = capsys.readouterr().out.splitlines()
    size = exp.SIZES["smoke"]
    n_branches = len(size["seeds"]) * 3 * len(exp.BRANCH_CORPORA)
    assert len([ln for ln in lines if "train.py" in ln]) == len(size["seeds"]) + n_branches
    branch = next(ln for ln in lines if "st8_counter_s1" in ln)
    assert "--init_from=" in branch and "runs/parent_s1/ckpt/step_000008.pt" in branch
    assert "--dataset=bu_smoke_counter" in branch and "--seed=1" in branch and "eval.py" not in branch
    assert not (tmp_path / "out").exists()  # --plan runs nothing


def _branch(run, stage, corpus, amps, seed=0, weat=0.5):
    """A branch's measures: amp (model - corpus) at branch point then each checkpoint, CI +-0.05."""
    rows = []
    for k, amp in enumerate(amps):
        rows.append({"run": run, "role": "branch", "init_seed": seed, "stage": stage, "corpus": corpus,
                     "step": stage + k * 4, "source": "parent" if k == 0 else "own", "tokens_after": k * 1000.0,
                     "overt_bias": 0.3 + amp, "amp": amp, "amp_lo": amp - 0.05, "amp_hi": amp + 0.05,
                     "weat_d_last": weat - 0.1 * k, "corpus_stereo_rate": 0.5})
    return rows


def test_time_to_unlearn_is_the_first_checkpoint_within_the_interval():
    rows = _branch("a", 8, "counter", [0.4, 0.2, 0.03, -0.01]) + _branch("b", 8, "neutral", [0.4, 0.3, 0.2, 0.1])
    m = pd.DataFrame(rows)
    m["within_ci"] = (m["amp_lo"] <= 0) & (m["amp_hi"] >= 0)
    got = exp.time_to_unlearn(m).set_index("run")
    assert got.loc["a", "tokens_to_unlearn"] == 2000.0 and got.loc["a", "weat_when_unlearned"] == pytest.approx(0.3)
    assert np.isnan(got.loc["b", "tokens_to_unlearn"]) and got.loc["b", "budget_tokens"] == 3000.0  # censored
    assert got.loc["a", "amp_start"] == 0.4 and got.loc["a", "amp_end"] == -0.01


def test_half_life_interpolates_the_crossing_for_good_and_censors_what_never_gets_halfway():
    tokens = [0, 1000, 2000, 4000, 8000]
    # from 0.4 toward 0: halfway is 0.2, crossed between 1000 (0.3) and 2000 (0.1) -> 1500
    assert exp.half_life(tokens, [0.4, 0.3, 0.1, 0.05, 0.0], 0.0) == (pytest.approx(1500.0), False)
    # toward the counter corpus's -0.4: halfway is 0.0, reached exactly at 8000
    assert exp.half_life(tokens, [0.4, 0.3, 0.1, 0.05, 0.0], -0.4) == (pytest.approx(8000.0), False)
    # never halfway within the budget: censored (NaN, True), not averaged as a number
    hl, censored = exp.half_life(tokens, [0.4, 0.38, 0.35, 0.3, 0.25], 0.0)
    assert np.isnan(hl) and censored
    # a dip past halfway that recovers (the fresh-optimizer transient every branch shows) is not unlearning:
    # censored; a later crossing for good counts from where it stays (between 2000 and 4000 here)
    hl, censored = exp.half_life(tokens, [0.4, 0.1, 0.35, 0.38, 0.39], 0.0)
    assert np.isnan(hl) and censored
    assert exp.half_life(tokens, [0.4, 0.1, 0.3, 0.1, 0.05], 0.0)[0] == pytest.approx(3000.0)
    # a start within MIN_GAP of the target has nothing to move: NaN and not censored
    hl, censored = exp.half_life(tokens, [0.02, 0.0, -0.01, 0.0, 0.01], 0.0)
    assert np.isnan(hl) and not censored
    # upward (the control learning toward its corpus's higher rate) works the same way
    assert exp.half_life(tokens, [0.1, 0.2, 0.3, 0.35, 0.4], 0.5)[0] == pytest.approx(2000.0)
    # a branch table: the half-lives land in time_to_unlearn's rows, per run
    m = pd.DataFrame(_branch("a", 8, "counter", [0.4, 0.2, 0.03, -0.01]))
    m["within_ci"] = (m["amp_lo"] <= 0) & (m["amp_hi"] >= 0)
    m["corpus_stereo_rate"] = 0.1
    row = exp.time_to_unlearn(m).iloc[0]  # overt 0.7, 0.5, 0.33, 0.29; halfway to 0 is 0.35 -> 1000 + 0.15/0.17 * 1000
    assert row["half_life_zero"] == pytest.approx(1000 + 150 / 170 * 1000) and not row["half_life_zero_censored"]
    assert np.isnan(row["half_life_corpus"]) and row["half_life_corpus_censored"]  # halfway to -0.4 is 0.15


@pytest.mark.slow
def test_smoke_size_end_to_end(tmp_path, monkeypatch):
    """The smoke size through the kit in a fresh root: corpora on one tokenizer, parents, branches continuing
    the parents' step axis, every measured checkpoint, the derived tables, report and description."""
    run_stage(tmp_path, SCRIPT, "--size", "smoke", "--name", "t", "--jobs", "2",
              env={ROOT_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}, timeout=900)
    exp_dir = tmp_path / "out/experiments/bias_unlearning/t"
    manifests = {c: json.loads((tmp_path / f"data/bu_smoke_{c}/tok512/manifest.json").read_text())
                 for c in exp.CORPORA}
    assert len({m["tokenizer_sha256"] for m in manifests.values()}) == 1
    assert manifests["counter"]["tokenizer_from"]["dataset"] == "bu_smoke_parent"
    branch_cfg = json.loads((exp_dir / "runs/st8_counter_s1/config.json").read_text())
    assert branch_cfg["lineage"]["parent_step"] == 8 and branch_cfg["n_steps"] == 8 + exp.SIZES["smoke"]["branch_steps"]
    m = pd.read_csv(exp_dir / "measures.csv")
    # a branch's first row is its parent's stage checkpoint: the same weights read the same overt bias
    point = m[(m["run"] == "st8_counter_s1") & (m["source"] == "parent")].iloc[0]
    parent = m[(m["run"] == "parent_s1") & (m["step"] == 8)].iloc[0]
    assert point["p_stereo"] == pytest.approx(parent["p_stereo"], abs=1e-9) and point["tokens_after"] == 0
    assert point["corpus_stereo_rate"] < 0.3 < 0.7 < parent["corpus_stereo_rate"]  # counter vs parent corpus
    assert (m[m["role"] == "branch"].groupby("run")["tokens_after"].max() > 0).all()
    results = pd.read_csv(exp_dir / "results.csv")
    assert results["primary"].sum() == 1 and results.loc[results["primary"], "n"].iloc[0] == 2
    description = describe.read_description(exp_dir)
    assert description["kind"] == "bias_unlearning" and len(description["curves"]["runs"]) == len(m["run"].unique())
    report = (exp_dir / "report.md").read_text()
    assert "Primary result" in report and "underpowered" in report  # 2 seeds cannot reject: said so


DIRECTION_TRAIN = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, multiple_of=16, batch_size=16, max_seq_len=256,
                       learning_rate=1e-2, min_lr=1e-3, warmup_iters=10, eval_iters=1, n_probe_stories=1, probe_len=32,
                       dtype="float32", seed=1, data_seed=1, vocab_size=2048)
PARENT_STEPS, BRANCH_STEPS = 400, 100


@pytest.mark.slow
def test_a_counter_biased_branch_lowers_the_stereotype_and_the_control_does_not(tmp_path):
    """Direction test (fixed seeds): a 1-layer model learns the occupation-pronoun association of a fully biased
    storyworld corpus (--occupation_bias 1.0); branched for the same budget onto new stories at 0.0 its p of the
    stereotyped pronoun falls, onto new stories at 1.0 (the control for more training) it does not."""
    import os
    import subprocess

    import torch

    from metadata import bias_probe
    from modelling.checkpoints import load_model
    from tests.fixtures_data import PYTHON, REPO
    from tests.fixtures_run import ONE_THREAD, train_args
    from tokenization.dataset import TokenizedDataset
    ws = tmp_path
    for name, n, seed, bias in (("dp", 3000, 0, 1.0), ("dc", 1500, 5, 0.0), ("dk", 1500, 6, 1.0)):
        run_stage(ws, "download/download_datasets.py", "storyworld", "--name", name, "--n_stories", n,
                  "--shard_size", n, "--seed", seed, "--occupation_bias", bias)
    run_stage(ws, "tokenization/pretokenize.py", "train_vocab", "--dataset", "dp", "--vocab_size", 2048)
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "dp", "--vocab_size", 2048)
    for name in ("dc", "dk"):
        run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", name, "--vocab_size", 2048,
                  "--tokenizer_from", "dp")
    run_stage(ws, "modelling/train.py", *train_args(dataset="dp", out_dir="out/parent", max_iters=PARENT_STEPS,
                                                    eval_interval=PARENT_STEPS, **DIRECTION_TRAIN), env=ONE_THREAD)
    parent_ckpt = f"out/parent/ckpt/step_{PARENT_STEPS:06d}.pt"
    procs = [subprocess.Popen([PYTHON, str(REPO / "modelling/train.py"), *train_args(
        dataset=name, out_dir=f"out/{name}", init_from=parent_ckpt, max_iters=BRANCH_STEPS,
        eval_interval=BRANCH_STEPS, **DIRECTION_TRAIN)], cwd=ws, env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in ("dc", "dk")]
    for proc in procs:
        assert proc.wait(timeout=900) == 0, proc.stderr.read()[-2000:]
    torch.set_num_threads(1)
    cwd = os.getcwd()
    try:
        os.chdir(ws)
        ds = TokenizedDataset("dk", 2048)
        inputs = bias_probe.prepare(ds.tokenizer, int(ds.manifest["bos_id"]), bias_probe.dataset_corpus_rates(ds))
        end = f"ckpt/step_{PARENT_STEPS + BRANCH_STEPS:06d}.pt"
        p = {name: bias_probe.overt_probe(load_model(path)[0], inputs)[1]["bias_seen"] + 0.5
             for name, path in (("parent", parent_ckpt), ("counter", f"out/dc/{end}"), ("control", f"out/dk/{end}"))}
    finally:
        os.chdir(cwd)
    print(p)
    assert p["parent"] > 0.55  # the parent learned the stereotype
    assert p["counter"] < p["parent"] - 0.05  # unlearning on the counter-biased corpus
    assert p["control"] > p["parent"] - 0.02  # more training on the same bias does not lower it
