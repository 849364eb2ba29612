"""Cross-entropy of the classifier without the full [B, T, V] logits in memory.

At vocab 32000 and a 16 x 256 micro-batch the fp32 logits alone are 0.5 GB, and autograd keeps them (plus the
log-softmax) for the backward pass. `chunked_cross_entropy` walks the positions in chunks: each chunk's logits are
computed, turned into its loss and — when a gradient is wanted — straight into the gradients of the hidden states
and of the classifier weight, then freed. So only one chunk's logits exist at a time and the backward pass just
scales the stored gradients (no second classifier matmul).

    loss = chunked_cross_entropy(hidden, model.output.weight, targets)   # hidden [B, T, D], targets [B, T]

equals F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1) (mean over targets != -1) in value and
gradients (fp32: within float rounding). Under CPU/CUDA autocast the matmuls run in the autocast dtype and the
softmax in fp32, as they do for the plain `output(h).float()` path.
"""
import torch

IGNORE_INDEX = -1
DEFAULT_CHUNK = 512  # positions per chunk: 512 x 32000 fp32 logits = 66 MB (a 16 x 256 batch in 8 chunks)


def _compute_dtype(hidden):
    """The dtype the plain classifier matmul would run in: autocast's when it is on, else the hidden dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, need_grad):
        dtype = _compute_dtype(hidden)
        h = hidden.reshape(-1, hidden.shape[-1])
        y = targets.reshape(-1)
        w = weight.to(dtype)
        valid = y != IGNORE_INDEX
        n_valid = valid.sum()
        # gradients are computed here, chunk by chunk, only if the backward pass will need them
        want_h = need_grad and ctx.needs_input_grad[0]
        want_w = need_grad and ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk):
                hc = h[start:start + chunk].to(dtype)
                yc = y[start:start + chunk]
                vc = valid[start:start + chunk]
                logits = (hc @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                safe_y = torch.where(vc, yc, torch.zeros_like(yc))
                target_logit = logits.gather(1, safe_y[:, None])[:, 0]
                total += torch.where(vc, lse - target_logit, torch.zeros_like(lse)).sum()
                if want_h or want_w:
                    # d(mean CE)/d(logits) = (softmax - onehot) / n_valid on valid rows, 0 on ignored ones
                    grad_logits = logits.sub_(lse[:, None]).exp_()  # in place: one chunk buffer
                    grad_logits[torch.arange(len(yc), device=yc.device), safe_y] -= 1.0
                    grad_logits.mul_((vc.to(torch.float32) * scale)[:, None])
                    g = grad_logits.to(dtype)
                    if want_h:
                        grad_h[start:start + chunk] = (g @ w).to(h.dtype)
                    if want_w:
                        grad_w += (g.t() @ hc).float()
                    del grad_logits, g
                del logits  # the chunk's buffer is freed before the next one is made
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.hidden_shape, ctx.weight_dtype = hidden.shape, weight.dtype
        # 0/0 = nan when every target is ignored, like F.cross_entropy
        return total / n_valid.to(torch.float32)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = (grad_h * grad_out).reshape(ctx.hidden_shape) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def chunked_cross_entropy(hidden, output_weight, targets, chunk=DEFAULT_CHUNK):
    """Mean cross-entropy of logits = hidden @ output_weight.T over the targets != -1, computed `chunk` positions at
    a time. hidden [B, T, D] (or [N, D]), output_weight [V, D], targets [B, T] (or [N]) int64. Returns a 0-dim fp32
    tensor; differentiable in hidden and output_weight."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on positions")
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    # inside Function.forward grad mode is always off, so whether gradients will be wanted is decided here
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or output_weight.requires_grad)
    return _ChunkedCrossEntropy.apply(hidden, output_weight, targets, int(chunk), need_grad)
