"""modelling/losses.chunked_cross_entropy: the same loss and gradients as the plain full-logits cross-entropy
(fp32 within 1e-6, and under bf16 autocast as the plain autocast path), ignored targets, and the memory property —
autograd keeps no [N, V] logits."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelling.losses import chunked_cross_entropy
from modelling.model import ModelArgs, Transformer

SHAPE = dict(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=700, multiple_of=16, max_seq_len=64)


def plain_loss(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def batch(seed=0, b=3, t=40, vocab=SHAPE["vocab_size"]):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (b, t), generator=g)
    y = torch.randint(0, vocab, (b, t), generator=g)
    y[0, 25:] = -1  # padding, as modelling/data.py pads short stories
    return x, y


def model_loss_and_grads(chunked, seed=0, autocast=False):
    """The model's own loss (forward with targets), or the chunked loss on its final hidden states (the classifier
    swapped for identity, so forward returns norm(h)); gradients of every parameter."""
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**SHAPE))
    x, y = batch(seed)
    weight = model.output.weight
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        if chunked:
            model.output = nn.Identity()
            loss = chunked_cross_entropy(model(x), weight, y, chunk=17)
        else:
            model(x, y)
            loss = model.last_loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_equals_plain_cross_entropy_fp32(chunk):
    torch.manual_seed(1)
    hidden = torch.randn(3, 40, 32, requires_grad=True)
    weight = torch.randn(500, 32, requires_grad=True)
    _, y = batch(vocab=500)
    ref = plain_loss(hidden, weight, y)
    ref_grads = torch.autograd.grad(2.5 * ref, (hidden, weight))
    out = chunked_cross_entropy(hidden, weight, y, chunk=chunk)
    grads = torch.autograd.grad(2.5 * out, (hidden, weight))
    assert out.dtype == torch.float32 and out.shape == ()
    assert abs(out.item() - ref.item()) <= 1e-6 * abs(ref.item())
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def test_whole_model_loss_and_grads_match_fp32():
    ref_loss, ref_grads = model_loss_and_grads(chunked=False)
    loss, grads = model_loss_and_grads(chunked=True)
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 * ref_loss.item()
    assert loss.item() == pytest.approx(math.log(SHAPE["vocab_size"]), rel=0.05)  # untrained: the uniform null
    for name, r in ref_grads.items():
        torch.testing.assert_close(grads[name], r, rtol=1e-5, atol=1e-6, msg=name)


def test_whole_model_matches_plain_under_bf16_autocast():
    ref_loss, ref_grads = model_loss_and_grads(chunked=False, autocast=True)
    loss, grads = model_loss_and_grads(chunked=True, autocast=True)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    for name, r in ref_grads.items():
        assert (grads[name] - r).norm() <= 0.02 * r.norm() + 1e-8, name


def test_ignored_targets_and_null_cases():
    torch.manual_seed(2)
    hidden, weight = torch.randn(2, 10, 8), torch.randn(50, 8)
    y = torch.randint(0, 50, (2, 10))
    # only the valid positions count: ignoring half equals the loss over the other half alone
    y_half = y.clone()
    y_half[1] = -1
    assert chunked_cross_entropy(hidden, weight, y_half, 3).item() == pytest.approx(
        chunked_cross_entropy(hidden[:1], weight, y[:1], 3).item(), rel=1e-6)
    # other targets, other loss (the loss reads the targets)
    assert chunked_cross_entropy(hidden, weight, y, 3).item() != pytest.approx(
        chunked_cross_entropy(hidden, weight, (y + 1) % 50, 3).item(), rel=1e-3)
    # nothing to predict: nan, like F.cross_entropy
    assert math.isnan(chunked_cross_entropy(hidden, weight, torch.full_like(y, -1)).item())
    with torch.no_grad():  # eval: no gradient work, same value
        assert chunked_cross_entropy(hidden, weight, y, 4).item() == pytest.approx(
            plain_loss(hidden, weight, y).item(), rel=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        chunked_cross_entropy(hidden, weight, y[:, :5])


def saved_bytes(fn):
    """Bytes autograd keeps for the backward pass while fn() builds its graph."""
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept)


def test_autograd_keeps_no_full_logits():
    torch.manual_seed(3)
    n, d, v = 512, 16, 4000
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(v, d, requires_grad=True)
    y = torch.randint(0, v, (n,))
    logits_bytes = n * v * 4
    plain = saved_bytes(lambda: plain_loss(hidden, weight, y))
    chunked = saved_bytes(lambda: chunked_cross_entropy(hidden, weight, y, chunk=64))
    assert plain >= logits_bytes  # the plain path keeps at least the [N, V] fp32 logits
    assert chunked < logits_bytes / 4  # the chunked one: gradients [N, D] + [V, D] only
