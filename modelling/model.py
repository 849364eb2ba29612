"""Llama 2 in one file, as in llama2.c: RMSNorm, RoPE (theta 10000), grouped-query attention, SwiGLU FFN, tied
embeddings, no biases, llama2.c's init and parameter names (so llama2.c `.pt` checkpoints load directly).

Two additions for the toolkit:
- `forward(tokens, targets, return_attn=True)` computes attention explicitly in that same pass and keeps the
  probabilities per layer ([B, H, T, T]) in `model.last_attn` (normal steps use scaled_dot_product_attention).
- `generate(..., use_cache=True)` uses a KV cache; `use_cache=False` is the plain full-sequence loop and gives
  the same greedy tokens.

forward() returns the logits of every position [B, T, V] (float32) without targets; with targets, like llama2.c,
it stores the loss in `model.last_loss` (mean cross-entropy over targets != -1, computed in chunks by
modelling/losses.py) and returns only the last position's logits [B, 1, V].
"""
import math
from dataclasses import dataclass, asdict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from modelling.losses import chunked_cross_entropy


@dataclass
class ModelArgs:
    # defaults are llama2.c's (Llama 2 7B); train.py and the presets set the small shapes
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = 32000
    hidden_dim: Optional[int] = None
    multiple_of: int = 256  # SwiGLU hidden layer size rounded up to a multiple of this
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d):
        """Build from a checkpoint's `model_args` (llama2.c's lack hidden_dim / norm_eps; extra keys ignored)."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def precompute_freqs_cis(head_dim, end, theta=10000.0):
    """cos and sin of RoPE angles [end, head_dim/2] (llama2.c keeps them as real tensors, not complex)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def rope_lanes(freqs_cos, freqs_sin):
    """cos and signed sin per lane [.., D] for apply_rotary_emb: (c0, c0, c1, c1, ..) and (-s0, s0, -s1, s1, ..)."""
    return freqs_cos.repeat_interleave(2, -1), torch.stack([-freqs_sin, freqs_sin], -1).flatten(-2)


def apply_rotary_emb(x, cos, sin):
    """Rotate interleaved pairs (x0,x1),(x2,x3),… of x [B, T, H, D] by position; llama2.c's pairing.
    cos, sin: rope_lanes() lanes [T, D] (positions 0..T-1 shared by the batch) or [B, T, D] (per-token
    positions). x*cos + swap(x)*sin is (x0 c - x1 s, x1 c + x0 s) per pair, bit for bit, in 4 ops instead of a
    dozen (the per-token cost of generation)."""
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    cos = cos[None, :, None, :] if cos.dim() == 2 else cos[:, :, None, :]
    sin = sin[None, :, None, :] if sin.dim() == 2 else sin[:, :, None, :]
    return (xf * cos + swapped * sin).type_as(x)


def repeat_kv(x, n_rep):
    """[B, T, n_kv, D] -> [B, T, n_kv*n_rep, D] so each query head has its key/value head (GQA)."""
    if n_rep == 1:
        return x
    b, t, n_kv, d = x.shape
    return x[:, :, :, None, :].expand(b, t, n_kv, n_rep, d).reshape(b, t, n_kv * n_rep, d)


def fused_weight(module, names):
    """The weights of module's linears `names` concatenated along the output dim, rebuilt when any of them changes
    (an optimizer step or load_state_dict bumps a tensor's version). KV-cache generation without grad only (the
    copy stays with the module; training and evaluation never make it): one matmul instead of several, the same
    numbers bit for bit (each output is the same dot product; tests/test_model.py)."""
    weights = [getattr(module, n).weight for n in names]
    key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)
    cached = module.__dict__.get("_fused_weights", {}).get(names)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.cat(weights))
        module.__dict__.setdefault("_fused_weights", {})[names] = cached
    return cached[1]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_heads if args.n_kv_heads is None else args.n_kv_heads
        assert args.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.attn_dropout = nn.Dropout(args.dropout)
        self.resid_dropout = nn.Dropout(args.dropout)
        self.dropout = args.dropout

    def qkv(self, x, freqs_cos, freqs_sin, fused=False):
        """Queries, keys and values [B, H, T, D] after RoPE (keys/values repeated for GQA). fused (generation
        without grad): one matmul for q, k, v and one RoPE call for q and k."""
        b, t, _ = x.shape
        if fused:
            h, kv = self.n_heads, self.n_kv_heads
            qkv = F.linear(x, fused_weight(self, ("wq", "wk", "wv"))).view(b, t, h + 2 * kv, self.head_dim)
            qk = apply_rotary_emb(qkv[:, :, :h + kv], freqs_cos, freqs_sin)
            return qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv:]
        xq = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        xk = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        xq = apply_rotary_emb(xq, freqs_cos, freqs_sin)
        xk = apply_rotary_emb(xk, freqs_cos, freqs_sin)
        return xq, xk, xv

    def forward(self, x, freqs_cos, freqs_sin, return_attn=False, cache=None, pos=0, mask=None):
        """mask: None (causal) or bool [B, 1, T, T], True where a query may attend (packed segments)."""
        b, t, _ = x.shape
        xq, xk, xv = self.qkv(x, freqs_cos, freqs_sin, fused=cache is not None and not torch.is_grad_enabled())
        if cache is not None:  # generation: write this chunk's keys/values, attend to everything so far
            cache_k, cache_v = cache
            cache_k[:b, pos:pos + t] = xk
            cache_v[:b, pos:pos + t] = xv
            xk, xv = cache_k[:b, :pos + t], cache_v[:b, :pos + t]
        xq = xq.transpose(1, 2)
        xk = repeat_kv(xk, self.n_rep).transpose(1, 2)
        xv = repeat_kv(xv, self.n_rep).transpose(1, 2)
        probs = None
        if return_attn:  # explicit attention so the probabilities of this very pass can be kept
            scores = (xq @ xk.transpose(-2, -1)) / math.sqrt(self.head_dim)
            allowed = mask if mask is not None else \
                torch.ones(t, xk.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=xk.shape[2] - t)
            scores = scores.float().masked_fill(~allowed, float("-inf"))
            probs = F.softmax(scores, dim=-1)
            out = self.attn_dropout(probs).type_as(xv) @ xv
        else:
            # causal within the chunk; a single new token (t=1) with a cache sees all cached keys
            if t > 1 and pos > 0:
                raise ValueError("a multi-token chunk after position 0 needs return_attn=True or no cache")
            out = F.scaled_dot_product_attention(xq, xk, xv, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0,
                                                 is_causal=mask is None and t > 1)
        out = out.transpose(1, 2).contiguous().view(b, t, -1)
        out = self.wo(out)
        return (self.resid_dropout(out) if self.dropout and self.training else out), probs  # p=0: a no-op call


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, multiple_of, dropout):
        super().__init__()
        if hidden_dim is None:  # llama2.c: 2/3 of 4*dim, rounded up to multiple_of
            hidden_dim = int(2 * (4 * dim) / 3)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, fused=False):
        if not fused:
            out = self.w2(F.silu(self.w1(x)) * self.w3(x))
        else:  # generation without grad: w1 and w3 in one matmul
            h1, h3 = F.linear(x, fused_weight(self, ("w1", "w3"))).chunk(2, dim=-1)
            out = self.w2(F.silu(h1) * h3)
        return self.dropout(out) if self.dropout.p and self.training else out


class TransformerBlock(nn.Module):
    def __init__(self, layer_id, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim, args.multiple_of, args.dropout)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs_cos, freqs_sin, return_attn=False, cache=None, pos=0, mask=None):
        a, probs = self.attention(self.attention_norm(x), freqs_cos, freqs_sin, return_attn, cache, pos, mask)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h), fused=cache is not None and not torch.is_grad_enabled()), probs


class Transformer(nn.Module):
    last_loss: Optional[torch.Tensor]

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.params = args
        self.vocab_size = args.vocab_size
        self.n_layers = args.n_layers
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tok_embeddings.weight = self.output.weight  # tied (both names stay in the state_dict, as llama2.c)
        freqs_cos, freqs_sin = precompute_freqs_cis(args.dim // args.n_heads, args.max_seq_len)
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)  # llama2.c's tables (export, parity)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)
        rope_cos, rope_sin = rope_lanes(freqs_cos, freqs_sin)
        self.register_buffer("rope_cos", rope_cos, persistent=False)  # per lane, what the layers use
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        # llama2.c init: N(0, 0.02), residual projections scaled by 1/sqrt(2*n_layers) (GPT-2 paper)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("w3.weight") or name.endswith("wo.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layers))
        self.last_loss = None
        self.last_attn = None

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens, targets=None, return_attn=False, cache=None, pos=0, positions=None,
                segment_ids=None):
        """Logits [B, T, V] (float32; with targets only the last position, [B, 1, V]). Sets last_loss (targets
        given; -1 = ignored) and last_attn (return_attn: list per layer of attention probabilities
        [B, H, T, T_keys], else None).
        Packed rows (modelling/data.py) pass positions [B, T] (RoPE position of each token, restarting per
        segment) and segment_ids [B, T]: a token attends causally to earlier tokens of its own segment only."""
        _, t = tokens.shape
        if pos + t > self.params.max_seq_len:
            raise ValueError(f"sequence of {pos + t} tokens exceeds max_seq_len={self.params.max_seq_len}")
        h = self.dropout(self.tok_embeddings(tokens))
        mask = None
        if positions is None:
            freqs_cos, freqs_sin = self.rope_cos[pos:pos + t], self.rope_sin[pos:pos + t]
        else:
            freqs_cos, freqs_sin = self.rope_cos[positions], self.rope_sin[positions]
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("packed segments (segment_ids) cannot use a KV cache")
            causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
            mask = ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal)[:, None]
        attn = []
        for i, layer in enumerate(self.layers):
            h, probs = layer(h, freqs_cos, freqs_sin, return_attn, None if cache is None else cache[i], pos, mask)
            attn.append(probs)
        h = self.norm(h)
        self.last_attn = attn if return_attn else None
        if targets is None:
            self.last_loss = None
            return self.output(h).float()
        # the loss chunk by chunk: the full [B, T, V] fp32 logits are never held (0.5 GB at vocab 32000, 16x256)
        self.last_loss = self._loss(h, self.output.weight, targets)
        return self.output(h[:, [-1], :]).float()

    _loss = staticmethod(chunked_cross_entropy)

    def loss_outside_compile(self):
        """For torch.compile (train.py --compile): the chunked loss — a Python loop whose trip count follows the
        row count — runs eager outside the graph, so a change of row count does not recompile it. Set here, not
        as a decorator, because torch.compiler.disable imports dynamo (~2 s at every start of every script)."""
        self._loss = torch.compiler.disable(chunked_cross_entropy)

    def num_params(self, non_embedding=False):
        """Parameters counted once (the tied embedding/output matrix once); optionally without it."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token, 6N + 12*L*dim*T (PaLM appendix B / nanoGPT's estimate_mfu), full
        (non-causal-discounted) attention term; N counts the tied embedding once."""
        seq_len = self.params.max_seq_len if seq_len is None else seq_len
        return 6 * self.num_params() + 12 * self.params.n_layers * self.params.dim * seq_len

    def _new_cache(self, batch, length, device, dtype):
        n_kv = self.params.n_heads if self.params.n_kv_heads is None else self.params.n_kv_heads
        hd = self.params.dim // self.params.n_heads
        # [B, length, n_kv, hd] views of [B, n_kv, length, hd] storage: each head's keys are contiguous, so the
        # attention of a new token reads them as one block (1.2-1.7x faster at batch 64 than [B, L, H, D] rows).
        # Uninitialised: a position is always written before it is read (attention reads [:pos + t] only), so
        # the 64 MB of a batch-64 cache need no zeroing.
        return [tuple(torch.empty(batch, n_kv, length, hd, device=device, dtype=dtype).transpose(1, 2)
                      for _ in range(2)) for _ in self.layers]

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0.0:
            return torch.argmax(logits, dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, use_cache=True, generator=None):
        """Continue token ids idx [B, T] by max_new_tokens; temperature 0 = greedy. Returns [B, T+new].
        The context is cropped to the last max_seq_len tokens (llama2.c); with the cache full, steps fall back
        to the full-sequence pass so both paths give the same tokens. Put the model in eval() first."""
        max_len = self.params.max_seq_len
        cache, pos = None, 0
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= max_len:
                if cache is None:  # prefill the prompt in one causal pass
                    length = min(max_len, idx.size(1) + max_new_tokens - 1)  # the positions this call writes
                    cache = self._new_cache(idx.size(0), length, idx.device, self.output.weight.dtype)
                    logits = self(idx, cache=cache, pos=0)
                else:  # one new token against the cached keys/values
                    logits = self(idx[:, -1:], cache=cache, pos=pos)
                pos = idx.size(1)
            else:
                logits = self(idx if idx.size(1) <= max_len else idx[:, -max_len:])
            idx_next = self._sample(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
