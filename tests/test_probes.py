"""measures/probes.py: the residual stream is read where the model reads it out, and the paired comparison is a
balanced-accuracy difference. The probe nulls on eval.py --covert_probes tables (shuffled labels at chance, a
random attribute never counts, the step-1 model against itself gains nothing, the activation cache) are in
tests/test_trajectories.py, which runs one eval pass with --trajectories and --covert_probes."""
import numpy as np
import pytest
import torch

from measures.probes import balanced_weights, paired_gain, residuals


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
