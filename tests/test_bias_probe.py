"""The bias probes (metadata/bias_probe.py) mean what they say.

Null (fast): untrained models (several seeds) on the vocab-512 fixture corpus read calibrated p_she = 0.5 ± 0.05
for every occupation, although the raw pronoun log-odds alone are far from 0.5 there (piece counts differ:
"her" is one piece and "him" two); their residual-stream association is not significant; the corpus side
reads the fixture corpus's built-in stereotype (storyworld's default --occupation_bias 0.8); their sampled
continuations pick the stereotyped pronoun at a rate whose interval holds 0.5.

Direction (slow, `-m slow`): two storyworld corpora with the same --seed and --occupation_bias 0.5 vs 0.9, so
the texts differ only in the gendered words that refer to occupation helpers (and the helpers' names); one
SentencePiece vocab of VOCAB pieces trained on the biased corpus and used for both (the unbiased one is
pretokenized with --vocab_size 0 --tokenizer; at 2048 every storyworld occupation is one piece); the same
1-layer model (dim 64), seed, data order and STEPS steps for both (two trainings in parallel, one thread
each); then bias_probe on the last checkpoint. The 0.5 model's amplification interval contains 0; the 0.9
model separates from it on the overt probe, on the sampled-generation rate and on the residual-stream WEAT.
Numbers measured with this set-up: see the README (section 3, "Bias probe").
"""
import os
import subprocess

import numpy as np
import pytest

from metadata import bias_probe as bp
from tests.fixtures_data import PYTHON, REPO, run_stage
from tests.fixtures_run import ONE_THREAD, train_args

NULL_SEEDS = (0, 1, 2, 3)
NULL_TOL = 0.05

N_STORIES = 3000
VOCAB = 2048
STEPS = 800
SEED = 1
TRAIN = dict(max_iters=STEPS, eval_interval=STEPS, eval_iters=1, batch_size=16, max_seq_len=256, dim=64,
             n_layers=1, n_heads=4, n_kv_heads=4, multiple_of=16, learning_rate=1e-2, warmup_iters=10,
             min_lr=1e-3, n_probe_stories=1, probe_len=32, dtype="float32", seed=SEED, data_seed=SEED,
             n_stories=0, epochs=10)
OVERT_MARGIN = 0.05   # bias_seen (p of the stereotyped pronoun - 0.5): biased - unbiased
WEAT_MARGIN = 0.5     # effect size after the last layer: biased - unbiased


def _inputs(workspace, dataset, vocab_size):
    """(dataset, bias_probe inputs with the corpus rates of its train split); cwd must be the workspace."""
    from tokenization.dataset import TokenizedDataset
    os.chdir(workspace)
    ds = TokenizedDataset(dataset, vocab_size)
    return ds, bp.prepare(ds.tokenizer, int(ds.manifest["bos_id"]), bp.dataset_corpus_rates(ds))


def test_weat_finds_a_planted_association_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 16)), rng.normal(size=(3, 16))
    x = a.mean(0) + 0.3 * rng.normal(size=(5, 16))   # targets near the A words
    y = b.mean(0) + 0.3 * rng.normal(size=(7, 16))
    d, p, _ = bp.weat(x, y, a, b)
    assert d > 1.5 and p == pytest.approx(1 / 792)  # C(12, 5) splits, the observed one is the most extreme
    mixed = np.concatenate([x, y])[rng.permutation(12)]
    d_mixed, p_mixed, _ = bp.weat(mixed[:5], mixed[5:], a, b)
    assert abs(d_mixed) < 1.5 and p_mixed > 0.05


def test_untrained_models_read_the_null(tok_dataset, monkeypatch):
    import torch

    from modelling.model import ModelArgs, Transformer
    monkeypatch.chdir(tok_dataset["workspace"])
    ds, inputs = _inputs(tok_dataset["workspace"], tok_dataset["dataset"], tok_dataset["vocab_size"])
    corpus = inputs["corpus"]
    # the corpus side: the fixture corpus is storyworld at --occupation_bias 0.8
    seen = corpus[corpus["seen"]]
    stereotype = seen.index.map(bp.wordlists.OCCUPATIONS.get).to_numpy()
    female, male = stereotype == "female", stereotype == "male"
    assert female.sum() >= 3 and male.sum() >= 3
    assert (seen.loc[female, "p_she_corpus"] > 0.65).all() and (seen.loc[male, "p_she_corpus"] < 0.35).all()
    assert not corpus.loc["plumber", "seen"]  # not a storyworld occupation

    torch.set_num_threads(1)
    p_she, raw, weat_p, gen_rates = [], [], [], []
    for seed in NULL_SEEDS:
        torch.manual_seed(seed)
        model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=ds.vocab_size,
                                      multiple_of=16, max_seq_len=128)).eval()
        occ, head = bp.overt_probe(model, inputs)
        p_she += occ["p_she"].tolist()
        lp = bp.word_logprobs(model, inputs["items"], inputs["starts_word"])
        df = inputs["overt"]
        raw += (1 / (1 + np.exp(-(lp[df["i_f"]] - lp[df["i_m"]])))).tolist()  # uncalibrated, per template
        assoc, _ = bp.covert_association(model, inputs)
        weat_p += [v for k, v in assoc.items() if k.startswith("weat_p_") and np.isfinite(v)]
        assert abs(head["bias_seen"]) < 0.02 and abs(head["bias_unseen"]) < 0.02
        gen, _ = bp.covert_generation(model, inputs)
        gen_rates.append((round(gen["gen_stereo_rate"], 3), gen["gen_stereo_n"]))
        assert gen["gen_stereo_n"] == 0 or gen["gen_stereo_rate_lo"] <= 0.5 <= gen["gen_stereo_rate_hi"]
    p_she, raw = np.array(p_she), np.array(raw)
    print(f"untrained p_she {p_she.min():.3f}..{p_she.max():.3f} (raw per template {raw.min():.3f}.."
          f"{raw.max():.3f}); WEAT p {np.round(weat_p, 3).tolist()}; generation (rate, n) {gen_rates}")
    assert np.all(np.abs(p_she - 0.5) < NULL_TOL), (p_she.min(), p_she.max())
    assert np.abs(raw - 0.5).max() > 2 * NULL_TOL  # without the neutral subject the null fails at this vocab
    assert len(weat_p) >= 2 * len(NULL_SEEDS) and min(weat_p) > 0.01


@pytest.mark.slow
def test_bias_probes_follow_occupation_bias_knob(tmp_path):
    import torch

    from modelling.checkpoints import list_checkpoints, load_model
    ws = tmp_path
    for name, bias in (("swbias", 0.9), ("swnone", 0.5)):
        run_stage(ws, "download/download_datasets.py", "storyworld", "--name", name, "--n_stories", N_STORIES,
                  "--shard_size", N_STORIES, "--seed", 0, "--occupation_bias", bias)
    run_stage(ws, "tokenization/pretokenize.py", "train_vocab", "--dataset", "swbias", "--vocab_size", VOCAB)
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "swbias", "--vocab_size", VOCAB)
    tok = ws / "data" / "swbias" / f"tok{VOCAB}" / "tokenizer.model"
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "swnone", "--vocab_size", 0,
              "--tokenizer", tok)
    runs = {"swbias": (VOCAB, ws / "out" / "bias"), "swnone": (0, ws / "out" / "none")}
    procs = []
    for dataset, (vocab, out) in runs.items():
        cmd = [PYTHON, str(REPO / "modelling/train.py"),
               *train_args(out_dir=f"out/{out.name}", dataset=dataset, vocab_size=vocab, **TRAIN)]
        procs.append((cmd, subprocess.Popen(cmd, cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD})))
    for cmd, proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{err[-4000:]}"

    torch.set_num_threads(1)
    cwd, got = os.getcwd(), {}
    try:
        for dataset, (vocab, out) in runs.items():
            _, inputs = _inputs(ws, dataset, vocab)
            model, _ = load_model(list_checkpoints(out)[-1][1])
            got[dataset] = {r["probe"]: r["value"] for r in bp.bias_probe(model.eval(), inputs)}
    finally:
        os.chdir(cwd)
    b, u = got["swbias"], got["swnone"]
    keys = ["bias_seen", "bias_corpus", "bias_amplification", "bias_amplification_lo", "bias_amplification_hi",
            "weat_d_L1", "weat_p_L1", "weat_d_emb", "gen_stereo_rate", "gen_stereo_rate_lo", "gen_stereo_rate_hi",
            "corpus_stereo_rate"]
    print("\n".join(f"{k:24s} biased {b[k]:+.3f}  unbiased {u[k]:+.3f}" for k in keys))
    # unbiased corpus: the model's rate is the corpus's within the interval, no association
    assert u["bias_amplification_lo"] <= 0 <= u["bias_amplification_hi"]
    # (sampled continuations of a small model track the corpus's 0.5 only roughly: 0.41-0.50 seen across
    # training variants; the biased model's rate is far from it, asserted below)
    assert abs(u["gen_stereo_rate"] - u["corpus_stereo_rate"]) < 0.15 and u["weat_p_L1"] > 0.05
    assert abs(u["corpus_stereo_rate"] - 0.5) < 0.05 and b["corpus_stereo_rate"] > 0.8
    # biased corpus: separates on the overt probe and on both covert measures
    assert b["bias_seen"] - u["bias_seen"] > OVERT_MARGIN
    assert b["gen_stereo_rate_lo"] > u["gen_stereo_rate_hi"]
    assert b["weat_d_L1"] - u["weat_d_L1"] > WEAT_MARGIN and b["weat_p_L1"] < 0.05
