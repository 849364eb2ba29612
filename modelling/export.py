"""Export a training checkpoint to llama2.c's run.c format or to a Hugging Face Llama folder.

    python modelling/export.py --ckpt out/RUN/ckpt/step_000512.pt --format llama2c [--out PATH.bin]
    python modelling/export.py --ckpt out/RUN/ckpt/step_000512.pt --format hf [--out DIR] [--dtype fp32|fp16|bf16]

llama2c: the legacy (version 0) model.bin that run.c reads, all fp32, plus tokenizer.bin beside it.
hf:      a folder that transformers' LlamaForCausalLM / AutoTokenizer .from_pretrained load offline
         (config.json, model.safetensors in --dtype, tokenizer.json + tokenizer.model).
Each export writes a JSON manifest (provenance, checkpoint sha256, shapes, file hashes); re-running with the same
checkpoint skips unless --force. Import needs no code here: modelling/checkpoints.load_model reads llama2.c's own
training .pt files, so they work as train.py --init_from=PATH.pt and as metadata's --scorer ckpt:PATH.
"""
import argparse
import contextlib
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentencepiece as spm
import torch
from tqdm import tqdm

from common.card import CARD
from common.errors import UserError, run_main
from common.ids import checkpoint_id, export_id_of
from common.io import atomic_path, atomic_write_bytes, atomic_write_json, provenance, sha256_file
from common.paths import require, tokenizer_model
from modelling.cards import write_model_card
from modelling.checkpoints import load_model

FORMATS = ("llama2c", "hf")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HF_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# run.c hard-codes these two; a model built with other values would silently run differently there
RUNC_ROPE_THETA = 10000.0
RUNC_NORM_EPS = 1e-5
# llama2.c's tokenizer.bin writes BOS/EOS with newlines around them so run.c prints them visibly
LLAMA2C_BOS, LLAMA2C_EOS = "\n<s>\n", "\n</s>\n"
# texts the HF tokenizer must encode exactly like SentencePiece (digits, punctuation, byte fallback, newline)
TOKENIZER_CHECK_TEXTS = [
    "Once upon a time, there was a little girl named Lily. She was 3 years old!",
    '"Can I play?" asked Tom. The dog said: woof-woof... 1234567890',
    "Ümlaut café — naïve ☃ 🙂\nNew line\tand tab.",
]
# llama2.c layer tensors in the order run.c reads them (each group spans all layers)
LAYER_GROUPS_ATTN = ["attention_norm.weight", "attention.wq.weight", "attention.wk.weight",
                     "attention.wv.weight", "attention.wo.weight"]
LAYER_GROUPS_FFN = ["ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
                    "feed_forward.w3.weight"]
# llama2.c name -> Hugging Face Llama name, per layer
HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


# ----------------------------------------------------------------------------------------------------------------
# reading the checkpoint

def model_shape(model, state):
    """The hyperparameters both formats need; hidden_dim comes from w1's shape (llama2.c's own .pt files do not
    store it), and the classifier counts as shared when output equals the embedding, as llama2.c's exporter does."""
    args = model.params
    vocab_size, dim = state["tok_embeddings.weight"].shape
    return {
        "dim": int(dim), "hidden_dim": int(state["layers.0.feed_forward.w1.weight"].shape[0]),
        "n_layers": len(model.layers), "n_heads": int(args.n_heads), "n_kv_heads": int(args.n_kv_heads or args.n_heads),
        "vocab_size": int(vocab_size), "max_seq_len": int(args.max_seq_len), "norm_eps": float(args.norm_eps),
        "rope_theta": RUNC_ROPE_THETA,  # model.py fixes theta at 10000, as run.c does
        "shared_classifier": "output.weight" not in state
                             or torch.equal(state["output.weight"], state["tok_embeddings.weight"]),
    }


def rope_tables(model, shape):
    """RoPE cos/sin [max_seq_len, head_dim/2]: the model's own buffers, i.e. exactly what its forward pass uses."""
    return model.freqs_cos[:shape["max_seq_len"]].float(), model.freqs_sin[:shape["max_seq_len"]].float()


def find_tokenizer(ckpt, ckpt_path, override=None):
    """The run's SentencePiece model: --tokenizer, else that of the (dataset, vocab_size) its config records."""
    if override:
        return require(override, "tokenizer model", "pass --tokenizer PATH/tokenizer.model")
    config = ckpt.get("config") or {}
    if config.get("dataset") and config.get("vocab_size") is not None:
        return require(tokenizer_model(config["dataset"], config["vocab_size"]), "the run's tokenizer",
                       "run from the training workspace or pass --tokenizer PATH/tokenizer.model")
    raise UserError(f"{ckpt_path} records no tokenizer (e.g. a llama2.c .pt) — pass --tokenizer PATH/tokenizer.model")


def load_tokenizer(path, vocab_size):
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path} is not a SentencePiece model ({e}) — pass the run's tokenizer.model") from None
    if sp.vocab_size() > vocab_size:
        raise UserError(f"tokenizer {path} has {sp.vocab_size()} pieces but the model only {vocab_size} — "
                        f"pass the tokenizer the run was trained with (--tokenizer)")
    return sp


# ----------------------------------------------------------------------------------------------------------------
# llama2.c: model.bin (legacy version 0) and tokenizer.bin

def tensor_bytes(t):
    """fp32, C order, as a buffer file.write takes without another copy."""
    return t.detach().to(torch.float32).contiguous().numpy()


def write_llama2c_model(state, shape, cos, sin, path):
    """Header of 7 int32, then fp32 tensors grouped by type across layers, RoPE tables, classifier if not shared."""
    vocab = shape["vocab_size"] if shape["shared_classifier"] else -shape["vocab_size"]
    header = struct.pack("<7i", shape["dim"], shape["hidden_dim"], shape["n_layers"], shape["n_heads"],
                         shape["n_kv_heads"], vocab, shape["max_seq_len"])
    layers = range(shape["n_layers"])
    names = (["tok_embeddings.weight"]
             + [f"layers.{i}.{kind}" for kind in LAYER_GROUPS_ATTN for i in layers]
             + [f"layers.{i}.{kind}" for kind in LAYER_GROUPS_FFN for i in layers]
             + ["norm.weight"])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for name in tqdm(names, desc="model.bin", unit="tensor", leave=False):
            f.write(tensor_bytes(state[name]))
        f.write(tensor_bytes(cos))  # run.c skips these (it recomputes RoPE) but the layout needs them
        f.write(tensor_bytes(sin))
        if not shape["shared_classifier"]:
            f.write(tensor_bytes(state["output.weight"]))


def llama2c_tokenizer_bytes(sp, vocab_size):
    """tokenizer.bin as llama2.c writes it: max token length, then per id: float score, int length, utf-8 bytes.
    Ids past the SentencePiece vocab (a padded embedding table) get empty pieces so run.c reads vocab_size entries."""
    pieces, scores = [], []
    for i in range(vocab_size):
        if i >= sp.vocab_size():
            pieces.append(b"")
            scores.append(0.0)
            continue
        piece = LLAMA2C_BOS if i == sp.bos_id() else LLAMA2C_EOS if i == sp.eos_id() else sp.id_to_piece(i)
        pieces.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    out = [struct.pack("<i", max(len(p) for p in pieces))]
    for piece, score in zip(pieces, scores):
        out.append(struct.pack("<fi", score, len(piece)) + piece)
    return b"".join(out)


def export_llama2c(model, shape, sp, sp_file, out_path, dtype):
    if dtype != "fp32":
        raise UserError(f"--dtype {dtype}: run.c's legacy model.bin is fp32 only — drop --dtype or use --format hf")
    if abs(shape["norm_eps"] - RUNC_NORM_EPS) > 1e-12:
        raise UserError(f"run.c hard-codes norm_eps={RUNC_NORM_EPS:g}; this model has {shape['norm_eps']:g} — "
                        f"use --format hf")
    state = model.state_dict()
    cos, sin = rope_tables(model, shape)
    write_llama2c_model(state, shape, cos, sin, out_path)
    tokenizer_bin = out_path.parent / "tokenizer.bin"
    atomic_write_bytes(tokenizer_bin, llama2c_tokenizer_bytes(sp, shape["vocab_size"]))
    return {"model.bin": out_path, "tokenizer.bin": tokenizer_bin}, {}


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face Llama folder

def permute_rotary(w, n_heads):
    """llama2.c rotates interleaved pairs (0,1),(2,3)… of each head; HF rotates halves (i, i+head_dim/2).
    Reorder each head's output rows so HF's rotate_half computes the same thing."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_state_dict(state, shape, dtype):
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"]}
    for i in range(shape["n_layers"]):
        for ours, theirs in HF_LAYER_NAMES.items():
            w = state[f"layers.{i}.{ours}"]
            if ours == "attention.wq.weight":
                w = permute_rotary(w, shape["n_heads"])
            elif ours == "attention.wk.weight":
                w = permute_rotary(w, shape["n_kv_heads"])
            out[f"model.layers.{i}.{theirs}"] = w
    if not shape["shared_classifier"]:
        out["lm_head.weight"] = state["output.weight"]
    return {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in out.items()}


def hf_config(shape, sp, dtype):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["dim"], intermediate_size=shape["hidden_dim"],
        num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], max_position_embeddings=shape["max_seq_len"],
        rms_norm_eps=shape["norm_eps"], rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]},
        tie_word_embeddings=shape["shared_classifier"], hidden_act="silu",
        bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), pad_token_id=None,
        dtype=HF_DTYPE_NAMES[dtype], architectures=["LlamaForCausalLM"])


def hf_tokenizer(sp, max_seq_len):
    """A fast tokenizer (byte-fallback BPE; merges derived from the vocab as transformers converts Llama's own
    tokenizer) built from the SentencePiece pieces without protobuf. Returns (tokenizer, matches_sentencepiece)."""
    from tokenizers import Regex, normalizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    specials = dict(unk_token=sp.id_to_piece(sp.unk_id()), bos_token=sp.id_to_piece(sp.bos_id()),
                    eos_token=sp.id_to_piece(sp.eos_id()))
    llama = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=False, add_bos_token=True,
                           add_eos_token=False, **specials)
    backend = llama.backend_tokenizer  # BPE model, BOS post-processor and SentencePiece-style decoder
    # SentencePiece's whitespace handling as a normalizer (the dummy prefix '▁' and spaces as '▁'); when the model
    # trims and collapses runs of spaces (remove_extra_whitespaces, on unless disabled at training) do so first.
    # \A and \z, not ^ and $: the tokenizers regex engine matches ^/$ at every newline.
    steps = [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    if sp.encode("a  b ") == sp.encode("a b"):
        steps = [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")] + steps
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = None
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_seq_len, **specials)
    texts = TOKENIZER_CHECK_TEXTS + ["a  b ", " leading space", "x\n  y"]
    matches = all(tok.encode(t, add_special_tokens=False) == sp.encode(t) for t in texts)
    return tok, matches


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp folder beside `path`; swap it into place only if the block finishes without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def export_hf(model, shape, sp, sp_file, out_dir, dtype):
    from safetensors.torch import save_file
    tensors = hf_state_dict(model.state_dict(), shape, dtype)
    tokenizer, tokenizer_ok = hf_tokenizer(sp, shape["max_seq_len"])
    if not tokenizer_ok:
        print("warning: the HF tokenizer does not encode the check texts exactly like SentencePiece; "
              "tokenize with tokenizer.model (sentencepiece) instead", file=sys.stderr)
    with atomic_dir(out_dir) as tmp:
        hf_config(shape, sp, dtype).save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        # the class name every transformers version knows (v5 writes its internal 'TokenizersBackend')
        tok_config = json.loads((tmp / "tokenizer_config.json").read_text())
        atomic_write_json(tmp / "tokenizer_config.json", {**tok_config, "tokenizer_class": "PreTrainedTokenizerFast"})
        shutil.copyfile(sp_file, tmp / "tokenizer.model")  # for sentencepiece users and other converters
    files = {p.name: p for p in sorted(out_dir.iterdir()) if p.is_file() and p.name not in ("export.json", CARD)}
    return files, {"tokenizer_matches_sentencepiece": tokenizer_ok}


# ----------------------------------------------------------------------------------------------------------------

def default_out(ckpt_path, fmt):
    """out/RUN/export/llama2c/step_000512.bin (+ tokenizer.bin) or out/RUN/export/hf/step_000512/."""
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "ckpt" else ckpt_path.parent
    export_dir = run_dir / "export" / fmt
    return export_dir / f"{ckpt_path.stem}.bin" if fmt == "llama2c" else export_dir / ckpt_path.stem


def manifest_path(fmt, out_path):
    return out_path.with_suffix(".json") if fmt == "llama2c" else out_path / "export.json"


def export_checkpoint(ckpt_path, fmt, out_path=None, dtype="fp32", tokenizer=None, force=False):
    """Export one checkpoint; returns the model.bin path (llama2c) or the folder (hf). Skips an up-to-date export."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} — use one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r} — use one of {', '.join(DTYPES)}")
    ckpt_path = require(ckpt_path, "checkpoint", "pass a .pt from out/RUN/ckpt/ (or a llama2.c ckpt.pt)")
    out_path = Path(out_path) if out_path else default_out(ckpt_path, fmt)
    if fmt == "llama2c" and out_path.suffix != ".bin":
        out_path = out_path / "model.bin"  # --out names a folder
    ckpt_sha = sha256_file(ckpt_path)
    manifest_file = manifest_path(fmt, out_path)
    if not force and manifest_file.exists():
        try:
            old = json.loads(manifest_file.read_text())
        except ValueError:
            old = {}  # a damaged manifest: rebuild
        same = (old.get("checkpoint_sha256"), old.get("format"), old.get("dtype")) == (ckpt_sha, fmt, dtype)
        same_tokenizer = tokenizer is None or str(tokenizer) == old.get("tokenizer")
        if same and same_tokenizer and all(Path(p).exists() for p in old.get("files", {}).values()):
            print(f"{out_path} is up to date with {ckpt_path} (skipping; --force rebuilds)")
            return out_path

    model, ckpt = load_model(ckpt_path, device="cpu")
    model.eval()
    state = model.state_dict()
    shape = model_shape(model, state)
    sp_file = find_tokenizer(ckpt, ckpt_path, tokenizer)
    sp = load_tokenizer(sp_file, shape["vocab_size"])
    exporter = export_llama2c if fmt == "llama2c" else export_hf
    files, checks = exporter(model, shape, sp, sp_file, out_path, dtype)
    files_sha256 = {name: sha256_file(p) for name, p in files.items()}
    ckpt_id = checkpoint_id(ckpt) if "model" in ckpt else None
    export_ids = {"checkpoint": ckpt_id, "export": export_id_of(ckpt_id, fmt, dtype, files_sha256)}
    atomic_write_json(manifest_file, provenance(
        ids=export_ids, checkpoint=str(ckpt_path), checkpoint_sha256=ckpt_sha, step=ckpt.get("step"), format=fmt, dtype=dtype,
        tokenizer=str(sp_file), tokenizer_sha256=sha256_file(sp_file), model=shape, checks=checks,
        files={name: str(p) for name, p in files.items()},
        files_sha256=files_sha256))
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "ckpt" else None
    if fmt == "hf" and run_dir is not None and (run_dir / "config.json").exists():  # the model card rides along
        write_model_card(run_dir, folder=out_path, ckpt=ckpt,
                         extra={"export_id": export_ids["export"], "export_format": fmt, "export_dtype": dtype})
    print(f"wrote {fmt} export of {ckpt_path} (step {ckpt.get('step')}) to {out_path}")
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint .pt (out/RUN/ckpt/step_XXXXXX.pt or llama2.c's)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", default=None, help="llama2c: PATH.bin or a folder; hf: a folder "
                                                    "(default out/RUN/export/<format>/<step>)")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="hf weight dtype (llama2c: fp32 only)")
    parser.add_argument("--tokenizer", default=None, help="SentencePiece tokenizer.model (default: the run's)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the export is up to date")
    args = parser.parse_args(argv)
    export_checkpoint(args.ckpt, args.format, args.out, args.dtype, args.tokenizer, args.force)


if __name__ == "__main__":
    run_main(main)
