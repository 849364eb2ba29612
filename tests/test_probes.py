"""measures/probes.py: the residual stream is read where the model reads it out, and the paired comparison is a
balanced-accuracy difference. The probe nulls on eval.py --covert_probes tables (shuffled labels at chance, a
random attribute never counts, the step-1 model against itself gains nothing, the activation cache) are in
tests/test_trajectories.py, which runs one eval pass with --trajectories and --covert_probes.

The positive control is here: a model trained until it must encode an attribute (the grammatical gender of an
invented name, which it needs to pick "his" or "her") gets a probe that beats both baselines, on names the probe
was never fitted on, at the layer that carries it — and nothing counts on the untrained model or a random label."""
import json
import random

import numpy as np
import pytest
import torch
from scipy.stats import norm

from measures.probes import (ALPHA, bag_of_tokens, balanced_weights, folds, oof_predict, paired_gain, probe_row,
                             residuals)
from tests.fixtures_data import run_stage
from tests.fixtures_run import ONE_THREAD, train_args


def test_residuals_are_the_stream_the_model_reads_out(tiny_run):
    from modelling.checkpoints import load_model
    model, _ = load_model(tiny_run / "ckpt" / "step_000040.pt")
    windows = [np.array([1, 50, 60, 70]), np.array([1, 80, 90, 100, 110, 120, 130])]
    h = residuals(model, windows, batch=2)  # right-padded together
    assert h.shape == (2, 3, 32)
    for i, w in enumerate(windows):
        x = torch.from_numpy(w)[None]
        assert np.allclose(h[i, 0], model.tok_embeddings.weight[w[-1]].detach().numpy())  # layer 0: embedding
        with torch.no_grad():
            logits = model(x)[0, -1]
            readout = model.output(model.norm(torch.from_numpy(h[i, -1])))  # the last layer feeds the output
        assert torch.allclose(readout, logits, atol=1e-4)


def test_paired_gain_is_balanced_accuracy_difference():
    labels = np.array(["a"] * 8 + ["b"] * 2)
    w = balanced_weights(labels)
    probe = np.array([1] * 8 + [1, 0], bool)  # balanced accuracy (1 + 0.5) / 2
    base = np.array([1] * 8 + [0, 0], bool)  # 0.5
    gain, se = paired_gain(probe, base, w)
    assert np.mean(w * probe) == pytest.approx(0.75) and gain == pytest.approx(0.25) and se > 0
    assert paired_gain(probe, probe, w) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------
# positive control: a corpus where each invented name has a gender that only the name carries

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
VERBS = ("lost", "found", "saw", "washed", "fixed", "took", "hid", "made")
THINGS = ("hat", "cup", "box", "ball", "sock", "kite", "bike", "book")
NAMES_VOCAB, NAMES_STEPS = 320, 600
NAMES_TRAIN = dict(max_iters=NAMES_STEPS, eval_interval=NAMES_STEPS, eval_iters=1, batch_size=16, max_seq_len=128,
                   dim=32, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=16, learning_rate=1e-2, warmup_iters=20,
                   min_lr=1e-3, n_probe_stories=1, probe_len=32, dtype="float32", seed=1, data_seed=1)


def name_genders():
    """80 invented two-syllable names, half of them (at random) 'her' names: no spelling tells the gender."""
    rng = random.Random(7)
    names = sorted({(rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize() for _ in range(200)})[:80]
    return {n: ("her" if i % 2 else "his") for i, n in enumerate(rng.sample(names, len(names)))}


def name_sentence(rng, name, genders):
    """('Kaze fixed', ' her bike.'): the prefix up to the verb, and the rest, whose first word only the name's
    gender decides."""
    return f"{name} {rng.choice(VERBS)}", f" {genders[name]} {rng.choice(THINGS)}."


@pytest.fixture(scope="module")
def names_run(workspace):
    ws, genders = workspace, name_genders()
    rng = random.Random(0)
    docs = [" ".join(a + b for a, b in (name_sentence(rng, rng.choice(list(genders)), genders)
                                        for _ in range(rng.randint(3, 8)))) for _ in range(4000)]
    (ws / "names.json").write_text(json.dumps([{"story": d} for d in docs]))
    run_stage(ws, "download/download_datasets.py", "local", "--name", "names", "names.json")
    for stage in ("train_vocab", "pretokenize"):
        run_stage(ws, "tokenization/pretokenize.py", stage, "--dataset", "names", "--vocab_size", NAMES_VOCAB)
    run_stage(ws, "modelling/train.py", *train_args(dataset="names", vocab_size=NAMES_VOCAB, out_dir="out/names",
                                                    **NAMES_TRAIN), env=ONE_THREAD)
    return ws, genders


@pytest.mark.slow
def test_probe_counts_where_the_model_must_encode_and_not_before_or_on_a_random_label(names_run):
    from common.paths import set_root
    from modelling.checkpoints import load_model
    from tokenization.dataset import TokenizedDataset
    ws, genders = names_run
    set_root(ws)
    ds = TokenizedDataset("names", NAMES_VOCAB)
    sp, bos = ds.tokenizer, int(ds.manifest["bos_id"])
    # fresh sentences (a seed the corpus never used), 0-3 sentences of context, read out at the verb
    rng, names, windows = random.Random(12345), [], []
    for _ in range(400):
        context = " ".join(a + b for a, b in (name_sentence(rng, rng.choice(list(genders)), genders)
                                              for _ in range(rng.randint(0, 3))))
        name = rng.choice(list(genders))
        names.append(name)
        windows.append(np.array([bos] + sp.encode((context + " " if context else "") +
                                                 name_sentence(rng, name, genders)[0])))
    names = np.array(names)
    labels = np.array([genders[n] for n in names])
    coin = np.array([str(random.Random(i).randint(0, 1)) for i in range(len(names))])
    fold = folds(labels, names)  # grouped by name: every probe is tested on names it was never fitted on
    assert all(not set(names[fold == k]) & set(names[fold != k]) for k in range(fold.max() + 1))
    bot = {"gender": oof_predict_correct(bag_of_tokens(windows, NAMES_VOCAB), labels, fold),
           "coin": oof_predict_correct(bag_of_tokens(windows, NAMES_VOCAB), coin, folds(coin))}
    models = {step: load_model(ws / "out" / "names" / "ckpt" / f"step_{step:06d}.pt")[0] for step in (1, NAMES_STEPS)}
    acts = {step: residuals(m, windows) for step, m in models.items()}
    n_layers = acts[1].shape[1]
    z = float(norm.ppf(1 - ALPHA / (2 * n_layers)))
    shuffled = np.random.default_rng(0).permutation(labels)
    rows = {}
    for step in (1, NAMES_STEPS):
        for layer in range(n_layers):
            step1 = oof_predict_correct(acts[1][:, layer], labels, fold)
            rows[step, layer] = probe_row(acts[step][:, layer], labels, fold, shuffled, step1, bot["gender"], z)
            step1_coin = oof_predict_correct(acts[1][:, layer], coin, folds(coin))
            assert not probe_row(acts[step][:, layer], coin, folds(coin), np.random.default_rng(1).permutation(coin),
                                 step1_coin, bot["coin"], z)["counts"]  # a fair coin never counts
    # the trained model needs the gender: it picks the right possessive for held-out sentences
    his, her = sp.piece_to_id("▁his"), sp.piece_to_id("▁her")
    with torch.no_grad():
        picks = [model_prefers(models[NAMES_STEPS], w, her, his) for w in windows]
    assert np.mean(np.array(picks) == labels) >= 0.9
    last = rows[NAMES_STEPS, n_layers - 1]
    assert last["counts"] == 1 and last["acc"] >= 0.85  # the last layer carries the name's gender to the verb …
    assert last["acc_bot"] < 0.65 and last["acc_step1"] < 0.65  # … which unseen names' tokens and the untrained
    assert rows[NAMES_STEPS, 0]["counts"] == 0  # model cannot give; layer 0 is the verb's embedding: no gender
    assert not any(rows[1, layer]["counts"] for layer in range(n_layers))  # step 1 against itself gains nothing
    assert all(abs(r["acc_shuffled"] - 0.5) < 0.1 for r in rows.values())


def oof_predict_correct(features, labels, fold):
    return oof_predict(features, labels, fold) == labels


def model_prefers(model, window, her, his):
    logits = model(torch.from_numpy(window)[None])[0, -1]
    return "her" if logits[her] > logits[his] else "his"
