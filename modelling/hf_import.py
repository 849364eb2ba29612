"""Read a Hugging Face Llama folder written by modelling/export.py --format hf (config.json + model.safetensors)
back into a checkpoint dict of ours, the inverse of export.py's mapping: HF names -> llama2.c names, and the
rotary row order of wq / wk un-permuted. load_checkpoint() calls this for a folder, so --init_from, eval and
export accept an exported folder like a .pt.
"""
import json
from pathlib import Path

import torch

from common.errors import UserError


def unpermute_rotary(w, n_heads):
    """Inverse of export.permute_rotary: HF's half-split rotary rows back to llama2.c's interleaved pairs."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def load_hf_folder(folder):
    """{'model': state dict (our names, float32), 'model_args', 'step', 'hf_folder', 'export'} of an HF folder."""
    from safetensors.torch import load_file

    from modelling.export import HF_LAYER_NAMES
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise UserError(f"{folder} is not an exported Hugging Face folder (needs config.json and model.safetensors) "
                        f"— export one with modelling/export.py --format hf")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "llama":
        raise UserError(f"{folder}: model_type {cfg.get('model_type')!r} — only Llama folders can be imported")
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    if float(rope) != 10000.0 or cfg.get("rope_scaling"):
        raise UserError(f"{folder}: rope_theta {rope} / rope scaling — model.py computes RoPE with theta 10000 only")
    n_heads, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    hf = load_file(str(weights))
    state = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    for i in range(int(cfg["num_hidden_layers"])):
        for ours, theirs in HF_LAYER_NAMES.items():
            w = hf[f"model.layers.{i}.{theirs}"]
            if ours == "attention.wq.weight":
                w = unpermute_rotary(w, n_heads)
            elif ours == "attention.wk.weight":
                w = unpermute_rotary(w, n_kv)
            state[f"layers.{i}.{ours}"] = w
    if "lm_head.weight" in hf and not torch.equal(hf["lm_head.weight"], hf["model.embed_tokens.weight"]):
        raise UserError(f"{folder} has an untied lm_head — model.py ties the classifier to the embedding")
    state["output.weight"] = state["tok_embeddings.weight"]
    state = {k: v.float().contiguous() for k, v in state.items()}
    model_args = {"dim": int(cfg["hidden_size"]), "n_layers": int(cfg["num_hidden_layers"]), "n_heads": n_heads,
                  "n_kv_heads": n_kv, "vocab_size": int(cfg["vocab_size"]),
                  "hidden_dim": int(cfg["intermediate_size"]), "norm_eps": float(cfg.get("rms_norm_eps", 1e-5)),
                  "max_seq_len": int(cfg.get("max_position_embeddings", 2048)), "dropout": 0.0}
    export = {}
    if (folder / "export.json").exists():
        export = json.loads((folder / "export.json").read_text())
    return {"model": state, "model_args": model_args, "step": export.get("step"), "hf_folder": str(folder),
            "export": {k: export.get(k) for k in ("ids", "checkpoint", "format", "dtype")} if export else {}}
