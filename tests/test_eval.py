"""eval.py on the tiny run: KV-cache generation equals the no-cache loop, the tables and their join with the
batch log, incremental re-runs and the probe arithmetic (cached continuation log-probs = full forward)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import eval as ev
from common.paths import ROOT_ENV
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, copied_run

EVAL_ARGS = ["--n_prompts", "3", "--max_new_tokens", "24", "--val_stories", "8"]
FIRST_STEPS = [1, 2, 4, 8, 10]


@pytest.fixture(scope="session")
def eval_run(tiny_run, meta_dataset):
    """A copy of the tiny run (other areas' tests evaluate the original with their own settings), evaluated
    in two passes: the first five checkpoints, then the rest (incremental)."""
    copy = copied_run(tiny_run, "tiny_eval", [("eval.py", [*EVAL_ARGS, "--steps", *FIRST_STEPS])])
    ws, run_dir, first = copy["ws"], copy["dir"], copy["procs"]["eval.py"]
    gens_first = pd.read_csv(run_dir / "tables" / "generations.csv")
    second = run_stage(ws, "eval.py", "--out_dir", "out/tiny_eval", *EVAL_ARGS, env=ONE_THREAD)
    return {"ws": ws, "dir": run_dir, "first": first, "second": second, "gens_first": gens_first}


def test_kv_cache_generation_equals_no_cache_loop(eval_run):
    from modelling.checkpoints import list_checkpoints, load_model
    prompts = json.loads((eval_run["dir"] / "eval_prompts.json").read_text())["prompts"]
    for step, path in list_checkpoints(eval_run["dir"])[-2:]:
        model, _ = load_model(path)
        # 100 new tokens pass max_seq_len=128 after a 33-token prompt, so the crop path is covered too
        batched = ev.generate(model, prompts, 100)
        for p, got in zip(prompts, batched):
            idx = torch.tensor([p["tokens"]])
            want = model.generate(idx, 100, use_cache=False)[0, len(p["tokens"]):].tolist()
            assert got == want, (step, p["prompt_id"])


def test_generations_probes_and_summary_tables(eval_run):
    tables = eval_run["dir"] / "tables"
    gens = pd.read_csv(tables / "generations.csv")
    steps = [1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
    assert sorted(gens["step"].unique()) == steps
    assert len(gens) == len(steps) * 4  # 3 val prefixes + the BOS prompt
    for col in ["step", "prompt_id", "prompt_kind", "prompt_text", "generated_text", "expected_text", "bleu",
                "rougeL", "prefix_token_acc", "first_divergence", "ppl_ref", "n_words", "sentiment", "toxicity"]:
        assert col in gens.columns, col
    bos = gens[gens["prompt_kind"] == "bos"]
    assert len(bos) == len(steps) and bos["bleu"].isna().all() and bos["prefix_token_acc"].isna().all()
    val = gens[gens["prompt_kind"] == "val_prefix"]
    assert val["expected_text"].str.len().gt(20).all() and val["bleu"].between(0, 100).all()
    assert val["first_divergence"].between(0, 24).all()

    probes = pd.read_csv(tables / "probes.csv")
    for probe in ["val_loss", "icl_score", "bias_seen", "bias_amplification", "tox_mass", "p_she:nurse", "tox:0"]:
        assert (probes["probe"] == probe).sum() == len(steps), probe
    tox = probes[probes["probe"] == "tox_mass"]["value"]
    assert tox.between(0, 1).all() and (tox > 0).all()

    summary = pd.read_csv(tables / "summary.csv")
    assert summary["step"].tolist() == steps
    from modelling.batch_log import BatchLog
    trained = np.cumsum(BatchLog(eval_run["dir"]).steps(1, max(steps))["n_tokens"].reshape(-1, 8).sum(1))
    assert summary["tokens_seen"].tolist() == [int(trained[s - 1]) for s in steps]  # targets trained so far
    assert summary["val_loss"].iloc[-1] < summary["val_loss"].iloc[0] - 0.5  # it learns in 40 steps
    for col in ["out_n_words", "out_bleu", "in_n_words", "cum_n_words", "bias_amplification", "weat_d_L1",
                "gen_stereo_rate", "tox_mass", "icl_score"]:
        assert col in summary.columns, col


def test_summary_join_uses_exactly_the_batch_log_segments(eval_run, meta_dataset):
    """in_/cum_ metrics: each trained segment's story value weighted by the tokens trained there."""
    from modelling.batch_log import BatchLog
    summary = pd.read_csv(eval_run["dir"] / "tables" / "summary.csv")
    meta = pd.read_parquet(meta_dataset["dir"] / "metadata.parquet").set_index("story_id")
    log = BatchLog(eval_run["dir"])
    prev = 0
    cum = []
    for _, row in summary.iterrows():
        step = int(row["step"])
        segments = log.steps(prev + 1, step)
        cum.append(segments)
        assert row["n_segments_interval"] == len(segments) == log.segments_per_step()[prev:step].sum()
        assert row["n_tokens_interval"] == segments["n_tokens"].sum()
        for metric in ["n_words", "sentiment", "flesch_ease", "ppl_ref"]:
            expected = np.average(meta.loc[segments["story_id"], metric], weights=segments["n_tokens"])
            assert row[f"in_{metric}"] == pytest.approx(expected, rel=1e-9), (step, metric)
            every = np.concatenate(cum)
            expected = np.average(meta.loc[every["story_id"], metric], weights=every["n_tokens"])
            assert row[f"cum_{metric}"] == pytest.approx(expected, rel=1e-9)
        prev = step
    # an off-by-one interval would pick other stories: the interval means differ between neighbours
    assert summary["in_n_words"].nunique() > len(summary) // 2


def test_incremental_rerun_and_settings_guard(eval_run):
    assert "evaluating 5 checkpoint(s)" in eval_run["first"].stdout
    assert "evaluating 5 checkpoint(s)" in eval_run["second"].stdout and "(5 already done)" in eval_run["second"].stdout
    gens = pd.read_csv(eval_run["dir"] / "tables" / "generations.csv")
    old = gens[gens["step"].isin(FIRST_STEPS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, eval_run["gens_first"].reset_index(drop=True))
    again = run_stage(eval_run["ws"], "eval.py", "--out_dir", "out/tiny_eval", *EVAL_ARGS, env=ONE_THREAD)
    assert "already evaluated" in again.stdout
    changed = run_stage(eval_run["ws"], "eval.py", "--out_dir", "out/tiny_eval", "--n_prompts", "2",
                        "--max_new_tokens", "24", "--val_stories", "8", check=False)
    assert changed.returncode == 2 and "--rebuild" in changed.stderr and "n_prompts 3 -> 2" in changed.stderr
    assert len(pd.read_csv(eval_run["dir"] / "tables" / "generations.csv")) == len(gens)  # nothing lost


@pytest.mark.parametrize("args, message", [
    (["--out_dir", "out/nowhere"], "not a training run"),
    (["--out_dir", "out/tiny_eval", "--steps", "999"], "no checkpoint at step(s) [999]"),
])
def test_bad_input_one_line(eval_run, args, message):
    res = run_stage(eval_run["ws"], "eval.py", *args, check=False)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cached_continuation_logprobs_equal_full_forward(eval_run, monkeypatch):
    from modelling.checkpoints import list_checkpoints, load_model
    monkeypatch.setenv(ROOT_ENV, str(eval_run["ws"]))
    from tokenization.dataset import TokenizedDataset
    model, _ = load_model(list_checkpoints(eval_run["dir"])[-1][1])
    sp = TokenizedDataset("storyworld", 512).tokenizer
    items = [ev.split_continuation(sp, 1, "The nurse came to help.", w) for w in ("She", "He", "Suddenly")]
    items.append(ev.split_continuation(sp, 1, "Tom said it was", "bullshit"))
    got = ev.continuation_logprobs(model, items)
    for (ctx, cont), lp in zip(items, got):
        seq = torch.tensor([list(ctx) + list(cont)])
        logp = torch.log_softmax(model(seq)[0], -1)
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert lp == pytest.approx(want, abs=1e-4)


def test_compare_and_bos_cut():
    assert ev.compare([5, 6, 7, 8], [5, 6, 9, 8], acc_tokens=20) == (0.75, 2.0)
    assert ev.compare([5, 6], [5, 6, 7, 8], acc_tokens=3) == (pytest.approx(2 / 3), 2.0)
    assert np.isnan(ev.compare([5], [], 20)[0])
    assert ev.cut_at_bos([4, 5, 1, 6], 1) == [4, 5]
