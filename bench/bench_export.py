"""Export speed and fidelity: llama2.c model.bin and HF folder export times for llama2.c's 15M shape, HF load time,
logit agreement HF vs ours (fp32 and bf16), and CPU forward speed of ours vs HF side by side in one process.

    python bench/run_all.py export [--quick]      # quick: a 2-layer dim-64 model instead of the 15M shape
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import sentencepiece as spm
import torch

from modelling.export import export_checkpoint
from modelling.model import ModelArgs, Transformer
from tokenization.pretokenize import SPM_SETTINGS

SHAPE_15M = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=256)
SHAPE_QUICK = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=128)
BATCH, SEQ_LEN, REPEATS = 4, 128, 5


def train_tokenizer(folder, vocab_size=512):
    """A small SentencePiece model with the project's settings (the model's vocab may be larger: padded)."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(2000)]
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 20)) for _ in range(2000)))
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tok"),
                                   vocab_size=vocab_size, num_threads=1, minloglevel=2, **SPM_SETTINGS)
    return folder / "tok.model"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def forward_tokens_per_s(fns, tokens):
    """Tokens/s of each forward fn, run alternately (warm-up first) so machine noise hits all alike."""
    seconds = [0.0] * len(fns)
    with torch.no_grad():
        for fn in fns:
            fn(tokens)
        for _ in range(REPEATS):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn(tokens)
                seconds[i] += time.perf_counter() - t0
    return [REPEATS * tokens.numel() / s for s in seconds]


def run(quick=False):
    from transformers import LlamaForCausalLM
    shape = SHAPE_QUICK if quick else SHAPE_15M
    label = "quick dim64 L2" if quick else "llama2.c 15M shape (dim288 L6 vocab32000)"
    rows = []

    def row(metric, value, unit, note=label):
        rows.append({"bench": "export", "metric": metric, "value": float(value), "unit": unit, "note": note})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_tokenizer(tmp)
        torch.manual_seed(0)
        model = Transformer(ModelArgs(**shape)).eval()
        ckpt = tmp / "ckpt" / "step_000001.pt"
        ckpt.parent.mkdir()
        torch.save({"model": model.state_dict(), "model_args": model.params.to_dict(), "step": 1}, ckpt)

        out, seconds = timed(lambda: export_checkpoint(ckpt, "llama2c", tmp / "l2c" / "model.bin",
                                                       tokenizer=tokenizer))
        size_mb = out.stat().st_size / 1e6
        row("llama2c_export_s", seconds, "s", f"{label}; model.bin {size_mb:.1f} MB")
        row("llama2c_export_MBps", size_mb / seconds, "MB/s")
        for dtype in ("fp32", "bf16"):
            _, seconds = timed(lambda: export_checkpoint(ckpt, "hf", tmp / f"hf_{dtype}", dtype=dtype,
                                                         tokenizer=tokenizer))
            row(f"hf_export_{dtype}_s", seconds, "s")
        _, seconds = timed(lambda: export_checkpoint(ckpt, "hf", tmp / "hf_fp32", tokenizer=tokenizer))
        row("rerun_skip_s", seconds, "s", "up-to-date export: checkpoint hash only")

        hf, seconds = timed(lambda: LlamaForCausalLM.from_pretrained(tmp / "hf_fp32", local_files_only=True).eval())
        row("hf_load_s", seconds, "s")
        hf_bf16 = LlamaForCausalLM.from_pretrained(tmp / "hf_bf16", dtype="auto", local_files_only=True).eval()
        tokens = torch.randint(0, shape["vocab_size"], (BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = model(tokens)
            row("max_abs_logit_diff_fp32", (hf(tokens).logits - ours).abs().max(), "logit",
                f"{label}; HF fp32 vs ours, {BATCH}x{SEQ_LEN} random tokens")
            row("max_abs_logit_diff_bf16", (hf_bf16(tokens).logits.float() - ours).abs().max(), "logit",
                f"{label}; HF bf16 weights vs ours fp32 (logit std {ours.std():.2f})")
        ours_tps, hf_tps = forward_tokens_per_s([model, lambda x: hf(x).logits], tokens)
        row("ours_forward_tok_per_s", ours_tps, "tok/s", f"{label}; CPU fp32, {torch.get_num_threads()} threads")
        row("hf_forward_tok_per_s", hf_tps, "tok/s", f"{label}; same tokens, alternating with ours in one process")
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
