"""eval.py --covert_probes on a copy of the tiny run: the residual stream read at the right place, the nulls
(shuffled labels at chance, a random attribute never counts, the step-1 model against itself gains nothing),
the activation cache. The positive case (a trained model encodes the hero's gender where it must predict the
pronoun) is in tests/test_watch.py, on the run trained there."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from measures.probes import CACHE_DIR, balanced_weights, paired_gain, residuals
from tests.fixtures_run import copied_run

PROBE_ARGS = ("--n_prompts", 1, "--max_new_tokens", 8, "--val_stories", 8, "--steps", 1, 40,
              "--covert_probes", "--probe_stories", 200)


@pytest.fixture(scope="module")
def probe_run(tiny_run, meta_dataset):
    return copied_run(tiny_run, "tiny_probes", [("eval.py", PROBE_ARGS)])


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


def test_nulls_random_label_shuffled_labels_and_step1_against_itself(probe_run):
    table = pd.read_csv(probe_run["dir"] / "tables" / "covert_probes.csv")
    assert sorted(table["step"].unique()) == [1, 40]
    assert {"hero_gender", "in_quote", "ending", "plot", "random"} <= set(table["attribute"])
    assert (table["layer"].groupby([table["step"], table["attribute"]]).nunique() == 3).all()  # embeddings + 2
    assert table.loc[table["attribute"] == "random", "counts"].sum() == 0
    # 200 stories: the shuffled-label probe stays near chance (|acc - chance| < 4 standard errors of a coin)
    assert ((table["acc_shuffled"] - table["chance"]).abs() < 4 * np.sqrt(0.25 / table["n"])).all()
    step1 = table[table["step"] == 1]
    assert (step1["gain_step1"] == 0).all() and (step1["counts"] == 0).all() and (step1["baseline_step"] == 1).all()
    assert (step1["acc"] == step1["acc_step1"]).all()
    state = json.loads((probe_run["dir"] / "tables" / "covert_probes.json").read_text())
    assert state["steps_done"] == [1, 40] and state["attributes"]["hero_gender"] == "pronoun"
    for step in (1, 40):  # activations computed once per checkpoint, kept for later passes
        with np.load(probe_run["dir"] / CACHE_DIR / f"step_{step:06d}.npz") as f:
            assert f["pronoun"].shape[1:] == (3, 32) and f["story_ids"].tolist() == state["story_ids"]


def test_paired_gain_is_balanced_accuracy_difference():
    labels = np.array(["a"] * 8 + ["b"] * 2)
    w = balanced_weights(labels)
    probe = np.array([1] * 8 + [1, 0], bool)  # balanced accuracy (1 + 0.5) / 2
    base = np.array([1] * 8 + [0, 0], bool)  # 0.5
    gain, se = paired_gain(probe, base, w)
    assert np.mean(w * probe) == pytest.approx(0.75) and gain == pytest.approx(0.25) and se > 0
    assert paired_gain(probe, probe, w) == (0.0, 0.0)
