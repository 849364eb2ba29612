"""The fixed attention-probe set of a run (out/RUN/attn_probes.json) and its capture at each checkpoint."""
import numpy as np
import torch

ATTN_PROBES_NAME = "attn_probes.json"
INDUCTION_SEED = 1234  # the repeated-random-token probe is the same for every run of a vocab


def make_attn_probes(ds, n_probe_stories, probe_len, max_seq_len, model_vocab):
    """The first n_probe_stories val stories (by id) with at least probe_len/2 tokens, truncated to probe_len
    (at most max_seq_len + 1), plus BOS + a random token block repeated twice (induction heads copy it)."""
    probe_len = min(probe_len, max_seq_len + 1)
    index = ds.index
    val = index[(index["split"] == "val") & (index["n_tokens"] >= probe_len // 2)].sort_values("story_id")
    probes = []
    for sid in val["story_id"].to_numpy()[:n_probe_stories]:
        tokens = np.asarray(ds.tokens(int(sid)))[:probe_len]
        probes.append({"name": f"val_{int(sid)}", "story_id": int(sid), "tokens": [int(t) for t in tokens]})
    half = (probe_len - 1) // 2
    block = np.random.default_rng(INDUCTION_SEED).integers(3, model_vocab, size=half)  # skip unk/bos/eos
    probes.append({"name": "induction", "story_id": None, "tokens": [1] + [int(t) for t in block] * 2})
    return probes


@torch.no_grad()
def capture_attn(model, probes, ctx, device):
    """Attention of every layer and head (float16 [L, H, T, T]) and the loss of each probe, from one forward
    pass with return_attn=True on the current weights."""
    attn, losses = {}, {}
    for probe in probes:
        tokens = torch.tensor(probe["tokens"], dtype=torch.long, device=device)[None]
        with ctx:
            model(tokens[:, :-1], tokens[:, 1:], return_attn=True)
        attn[probe["name"]] = torch.stack([a[0] for a in model.last_attn]).to("cpu", torch.float16)
        losses[probe["name"]] = float(model.last_loss)
    model.last_attn = None
    return attn, losses
