"""eval.py on the tiny run: KV-cache generation equals the no-cache loop, the tables and their join with the
batch log, incremental re-runs and the probe arithmetic (cached continuation log-probs = full forward)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

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
        # greedy until BOS or the window: ~95 new tokens after a <= 33-token prompt at max_seq_len=128
        batched = ev.generate(model, prompts, bos=1, temperature=0)
        for p, got in zip(prompts, batched):
            idx = torch.tensor([p["tokens"]])
            want = model.generate(idx, len(got), use_cache=False)[0, len(p["tokens"]):].tolist()
            assert got == want, (step, p["prompt_id"])


def test_generation_stops_at_bos_or_the_trained_window_and_seeds_reproduce(eval_run):
    from modelling.checkpoints import list_checkpoints, load_model
    prompts = json.loads((eval_run["dir"] / "eval_prompts.json").read_text())["prompts"]
    seeds = [p["sample_seed"] for p in prompts]
    max_len = 128
    model, _ = load_model(list_checkpoints(eval_run["dir"])[-1][1])
    # an output layer whose BOS logit is raised, so some samples end the story early and others do not
    biased = torch.nn.Linear(model.output.in_features, model.output.out_features)
    with torch.no_grad():
        biased.weight.copy_(model.output.weight)
        biased.bias.zero_()
        biased.bias[1] = 4.0
    model.output = biased
    out = ev.generate(model, prompts, bos=1, temperature=1.0, seeds=seeds)
    ended = [ids[-1] == 1 for ids in out]
    for p, ids in zip(prompts, out):
        assert 1 not in ids[:-1]  # nothing after the end-of-story token
        assert ids[-1] == 1 or len(p["tokens"]) + len(ids) == max_len + 1  # else the whole trained window
        assert len(p["tokens"]) + len(ids) <= max_len + 1  # never fed past position max_seq_len - 1
    assert any(ended) and all(len(ids) < 100 for ids, e in zip(out, ended) if e)
    # a prompt's sample depends only on its seed, not on the batch it ran in
    assert ev.generate(model, prompts[1:2], bos=1, temperature=1.0, seeds=seeds[1:2])[0] == out[1]
    assert ev.generate(model, prompts[1:2], bos=1, temperature=1.0, seeds=[seeds[1] + 1000])[0] != out[1]
    gens = pd.read_csv(eval_run["dir"] / "tables" / "generations.csv")
    assert gens["sample_seed"].tolist() == (gens["prompt_id"] + ev.SEED).tolist()  # recorded per prompt
    assert (gens["new_tokens"] <= 24).all()  # --max_new_tokens caps it further


def test_prompts_cut_at_word_boundaries_from_the_fixed_validation_sample(eval_run, monkeypatch):
    monkeypatch.chdir(eval_run["ws"])
    from tokenization.dataset import TokenizedDataset
    ds = TokenizedDataset("storyworld", 512)
    prompts = json.loads((eval_run["dir"] / "eval_prompts.json").read_text())["prompts"]
    val = [p for p in prompts if p["kind"] == "val_prefix"]
    ranked = ds.validation_sample("iid", n=None, ranked=True).tolist()
    assert [p["story_id"] for p in val] == [s for s in ranked if ds.index["n_tokens"][s] >= 1 + 32 + 16][:3]
    for p in val:
        story = ds.tokens(p["story_id"]).tolist()
        assert p["tokens"] + p["expected"] == story[:129]  # prompt + reference = the story inside the window
        assert ds.tokenizer.id_to_piece(p["expected"][0]).startswith("\u2581")  # the next piece starts a word
        assert 4 <= len(p["tokens"]) - 1 <= 32
    assert any(len(p["tokens"]) < 33 for p in val) or all(
        ds.tokenizer.id_to_piece(ds.tokens(p["story_id"])[33]).startswith("\u2581") for p in val)
    text = "Lily and Tom went to the park. They played"
    assert ev.first_words(text, 6) == "Lily and Tom went to the" and ev.first_words(text, 7) == text[:30]
    assert ev.length_matched("A b c. D e", "X y z")[2] == 3


def test_untrained_generations_flagged_references_not(eval_run):
    gens = pd.read_csv(eval_run["dir"] / "tables" / "generations.csv")
    first = gens[(gens["step"] == 1) & (gens["prompt_kind"] == "val_prefix")]
    # one step from random init: pieces glued into non-words (oov far above OOV_MAX), readability not scored
    assert first["oov"].mean() > 0.5 and first["degenerate"].mean() > 0.9
    assert first["flesch_ease"].isna().mean() > 0.9 and first["nan_reason"].str.contains("degenerate").mean() > 0.9
    # the reference continuations (real validation stories) pass: vocabulary from the train split
    refs = gens[gens["prompt_kind"] == "val_prefix"]
    assert (refs["ref_degenerate"] == 0).all() and refs["ref_oov"].max() < 0.05 and refs["ref_flesch_ease"].notna().all()
    # length-matched: both sides cut to the same number of words
    assert (refs["n_words"] == refs["matched_words"]).all() and (refs["ref_n_words"] == refs["matched_words"]).all()


def test_two_runs_with_other_seeds_share_the_validation_sample(eval_run, tok_dataset):
    from tests.fixtures_run import TINY_CONFIG, train_args
    ws = eval_run["ws"]
    cfg = {**TINY_CONFIG, "out_dir": "out/tiny_seed2", "max_iters": 2, "seed": 99, "data_seed": 123}
    run_stage(ws, "modelling/train.py", *train_args(dataset="storyworld", vocab_size=512, **cfg), env=ONE_THREAD)
    run_stage(ws, "eval.py", "--out_dir", "out/tiny_seed2", *EVAL_ARGS, "--steps", "2", env=ONE_THREAD)
    state = [json.loads((d / "tables" / "eval.json").read_text()) for d in (eval_run["dir"], ws / "out/tiny_seed2")]
    assert state[0]["validation_samples"] == state[1]["validation_samples"]
    assert state[0]["validation_samples"]["val_loss_novel"]["n_stories"] == 8
    assert state[0]["prompts_sha256"] == state[1]["prompts_sha256"]


def test_generations_probes_and_summary_tables(eval_run):
    tables = eval_run["dir"] / "tables"
    gens = pd.read_csv(tables / "generations.csv")
    steps = [1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
    assert sorted(gens["step"].unique()) == steps
    assert len(gens) == len(steps) * 4  # 3 val prefixes + the BOS prompt
    assert gens.loc[gens["prompt_kind"] == "val_prefix", "matched_words"].notna().all()
    for col in ["step", "prompt_id", "prompt_kind", "prompt_text", "generated_text", "expected_text", "bleu",
                "rougeL", "prefix_token_acc", "first_divergence", "ppl_ref", "n_words", "sentiment", "toxicity"]:
        assert col in gens.columns, col
    bos = gens[gens["prompt_kind"] == "bos"]
    assert len(bos) == len(steps) and bos["bleu"].isna().all() and bos["prefix_token_acc"].isna().all()
    val = gens[gens["prompt_kind"] == "val_prefix"]
    assert val["expected_text"].str.len().gt(20).all() and val["bleu"].between(0, 100).all()
    assert val["first_divergence"].between(0, 24).all()

    probes = pd.read_csv(tables / "probes.csv")
    for probe in ["val_loss", "val_loss_novel", "icl_score", "bias_seen", "bias_amplification", "tox_mass",
                  "p_she:nurse", "tox:0"]:
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
                "gen_stereo_rate", "tox_mass", "icl_score", "val_loss_novel", "out_new_tokens", "ref_new_tokens",
                "out_ended", "ref_ended"]:
        assert col in summary.columns, col
    assert summary["val_loss_novel"].iloc[-1] < summary["val_loss_novel"].iloc[0] - 0.5
    # per metric the mean over the validation prompts and its 95% t-interval, for output and reference
    val = gens[gens["prompt_kind"] == "val_prefix"]
    for metric in ["n_words", "oov", "rep4", "sentiment", "ppl_ref", "bleu"]:
        for prefix, col in (("out_", metric), ("ref_", f"ref_{metric}")):
            if metric == "bleu" and prefix == "ref_":
                continue
            name = col if prefix == "ref_" else f"out_{metric}"
            assert {name, f"{name}_lo", f"{name}_hi"} <= set(summary.columns), name
            last = summary.iloc[-1]
            values = val.loc[val["step"] == last["step"], col].dropna()
            assert last[name] == pytest.approx(values.mean())
            if values.std() > 0:
                half = stats.t.ppf(0.975, len(values) - 1) * values.std() / np.sqrt(len(values))
                assert last[f"{name}_lo"] == pytest.approx(values.mean() - half)
                assert last[f"{name}_lo"] < last[name] < last[f"{name}_hi"]


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
