"""modelling/model.py and the checkpoint reader: causal masking, explicit attention = SDPA, probe attention equal to
attention recomputed from q/k, KV-cache generation, overfitting a tiny batch, llama2.c checkpoint loading."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from modelling.checkpoints import list_checkpoints, load_checkpoint, load_model
from modelling.model import ModelArgs, Transformer

ARGS = dict(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run fastest on one thread, and the test machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelArgs(**{**ARGS, **kw})).eval()


def test_llama2c_shapes_and_param_count():
    m = tiny()
    # SwiGLU hidden: int(2*4*48/3)=128, already a multiple of 16
    assert m.layers[0].feed_forward.w1.weight.shape == (128, 48)
    assert m.layers[0].attention.wk.weight.shape == (2 * 12, 48)  # 2 kv heads of size 12
    assert m.tok_embeddings.weight is m.output.weight  # tied
    per_layer = 48 * 48 * 2 + 48 * 24 * 2 + 3 * 48 * 128 + 2 * 48
    assert m.num_params() == 64 * 48 + 2 * per_layer + 48
    assert m.flops_per_token(32) == 6 * m.num_params() + 12 * 2 * 48 * 32
    names = set(m.state_dict())
    assert {"tok_embeddings.weight", "output.weight", "norm.weight", "layers.1.attention.wq.weight",
            "layers.0.feed_forward.w3.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight"} <= names


def test_causal_masking_future_tokens_do_not_change_past_logits():
    m = tiny()
    x = torch.randint(0, 64, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 64, (2, 8))
    for return_attn in (False, True):
        a, b = m(x, return_attn=return_attn), m(y, return_attn=return_attn)
        assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5)
        assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_explicit_attention_matches_sdpa_and_rows_sum_to_one():
    m = tiny()
    x = torch.randint(0, 64, (3, 17))
    logits_sdpa = m(x, x)
    loss_sdpa = m.last_loss
    assert m.last_attn is None
    logits_probe = m(x, x, return_attn=True)
    assert torch.allclose(logits_sdpa, logits_probe, atol=1e-5)
    assert torch.allclose(loss_sdpa, m.last_loss, atol=1e-6)
    assert len(m.last_attn) == 2 and m.last_attn[0].shape == (3, 4, 17, 17)
    for probs in m.last_attn:
        assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 17), atol=1e-5)
        assert torch.all(probs.triu(diagonal=1) == 0)  # nothing attends to the future


def test_probe_attention_equals_attention_recomputed_from_q_and_k():
    m = tiny(seed=3)
    x = torch.randint(0, 64, (1, 16))
    inputs = {}
    hooks = [layer.attention.register_forward_pre_hook(lambda mod, a, i=i: inputs.__setitem__(i, a[0]))
             for i, layer in enumerate(m.layers)]
    m(x, return_attn=True)
    for h in hooks:
        h.remove()
    for i, layer in enumerate(m.layers):
        att = layer.attention
        q = att.wq(inputs[i]).view(1, 16, 4, 12)
        k = att.wk(inputs[i]).view(1, 16, 2, 12)
        # RoPE by hand on interleaved pairs, as llama2.c: angle = pos * 10000^(-2j/d)
        pos = torch.arange(16.0)[:, None]
        ang = pos * 10000.0 ** (-torch.arange(0, 12, 2) / 12.0)

        def rope(t):
            a, b = t[..., 0::2], t[..., 1::2]
            c, s = torch.cos(ang)[None, :, None], torch.sin(ang)[None, :, None]
            return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)

        q, k = rope(q), rope(k).repeat_interleave(2, dim=2)  # kv head j serves query heads 2j, 2j+1
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(12)
        scores = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(m.last_attn[i], scores.softmax(-1), atol=1e-5)


def test_loss_ignores_pad_targets():
    m = tiny()
    x = torch.randint(0, 64, (2, 10))
    y = torch.randint(0, 64, (2, 10))
    y_pad = y.clone()
    y_pad[:, 6:] = -1
    logits = m(x)  # with targets forward returns only the last position's logits
    m(x, y_pad)
    expected = F.cross_entropy(logits[:, :6].reshape(-1, 64), y[:, :6].reshape(-1))
    assert torch.allclose(m.last_loss, expected, atol=1e-6)


def test_generate_with_cache_equals_full_recompute():
    m = tiny(seed=1)
    prompt = torch.randint(0, 64, (2, 5))
    # 40 new tokens run past max_seq_len=32: the cached path must fall back exactly like the cropped loop
    with_cache = m.generate(prompt, 40, temperature=0.0, use_cache=True)
    without = m.generate(prompt, 40, temperature=0.0, use_cache=False)
    assert with_cache.shape == (2, 45)
    assert torch.equal(with_cache, without)
    g = torch.Generator().manual_seed(0)
    sampled = m.generate(prompt, 10, temperature=1.0, top_k=5, generator=g)
    assert sampled.shape == (2, 15) and torch.equal(sampled[:, :5], prompt)


def test_inference_path_equals_training_path_bit_for_bit():
    """Generating without grad, q/k/v and w1/w3 run as one matmul each (fused_weight) and RoPE once for q and k:
    the logits must equal the grad-enabled path's exactly, and the fused weights must follow an in-place weight
    change; evaluation without a cache keeps no fused copy."""
    m = tiny(seed=2)
    x = torch.randint(0, 64, (3, 12))
    with torch.enable_grad():
        ref = m(x).detach()
    with torch.no_grad():
        m(x)
        assert "_fused_weights" not in m.layers[0].attention.__dict__
        assert torch.equal(m(x, cache=m._new_cache(3, 32, x.device, torch.float32)), ref)
        assert "_fused_weights" in m.layers[0].attention.__dict__
        m.layers[0].attention.wk.weight.mul_(1.5)
        m.layers[1].feed_forward.w3.weight.mul_(0.5)
        fused = m(x, cache=m._new_cache(3, 32, x.device, torch.float32))
    with torch.enable_grad():
        assert torch.equal(fused, m(x).detach()) and not torch.equal(fused, ref)


def test_overfit_a_tiny_batch():
    torch.manual_seed(0)
    m = Transformer(ModelArgs(**ARGS)).train()
    x = torch.randint(3, 64, (4, 24))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    m(x, y)
    first = m.last_loss.item()
    for _ in range(100):
        m(x, y)
        m.last_loss.backward()
        opt.step()
        opt.zero_grad()
    assert first > math.log(64) - 0.5  # starts near chance
    assert m.last_loss.item() < 0.1 * first


def test_load_model_accepts_llama2c_checkpoint(tmp_path):
    m = tiny(seed=2)
    # llama2.c's train.py saves the compiled model's state dict and model_args without hidden_dim/norm_eps
    state = {"_orig_mod." + k: v for k, v in m.state_dict().items()}
    model_args = {k: v for k, v in ARGS.items()} | {"dropout": 0.0}
    torch.save({"model": state, "model_args": model_args, "iter_num": 7, "best_val_loss": torch.tensor(1.5),
                "config": {"batch_size": 8}}, tmp_path / "ckpt.pt")
    loaded, ckpt = load_model(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] == 7 and not loaded.training
    x = torch.randint(0, 64, (1, 12))
    assert torch.equal(loaded(x), m(x))


def test_checkpoint_reader_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a model checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    m = tiny()
    torch.save({"model": m.state_dict(), "model_args": {**ARGS, "dim": 64}}, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="do not match"):
        load_model(tmp_path / "mismatch.pt")
    assert list_checkpoints(tmp_path) == []
