"""Training throughput of modelling/train.py on this machine, measured side by side in one run.

1. tokens/s and MFU for llama2.c's 15M shape (dim 288, 6 layers, 6 heads, seq 256, batch 16, vocab 512) in three
   modes — fp32 eager, bf16 autocast, bf16 autocast + torch.compile — with checkpointing and the batch log on;
2. instrumentation overhead: fp32 with batch log + probe attention + checkpoints on vs off (same evaluations),
   and the measured cost per checkpoint projected to the demo's checkpoint density;
3. bf16 vs fp32 training loss after 200 steps on a smaller shape (dim 128, 4 layers, seq 128).
Each mode is a real `modelling/train.py` run in a temp workspace on the storyworld corpus (built there by the
real stage scripts unless ./data/storyworld/tok512 exists). Throughput = real (non-pad) target tokens / wall
time of the measured steps (the first WARMUP steps, where compile happens, are left out); the step time includes
the checkpoint, probe and evaluation work done since the previous step.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LLAMA2C_TOK_S = 4400.0  # llama2.c's train.py on this shape and CPU (issue 4)
PEAK = {"float32": 0.3e12, "bfloat16": 1.9e12}  # FLOP/s: 2 cores x AVX-512 fp32 FMA; bf16 figure assumes AMX
SHAPE = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, max_seq_len=256, batch_size=16,
             vocab_size=512, dataset="storyworld", learning_rate=5e-4, warmup_iters=10, eval_iters=2)
LOSS_SHAPE = dict(SHAPE, dim=128, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=128, learning_rate=2e-3,
                  warmup_iters=20, eval_interval=1000)
WARMUP = 5


def prepare_workspace():
    """A workspace holding data/storyworld/tok512 (linked from ./data when it is there)."""
    ws = Path(tempfile.mkdtemp(prefix="bench_train_"))
    local = Path("data/storyworld")
    if (local / "tok512" / "manifest.json").exists():
        (ws / "data").mkdir()
        (ws / "data" / "storyworld").symlink_to(local.resolve())
        return ws
    for args in (["download/download_datasets.py", "storyworld"],
                 ["tokenization/pretokenize.py", "train_vocab", "--dataset", "storyworld", "--vocab_size", "512"],
                 ["tokenization/pretokenize.py", "pretokenize", "--dataset", "storyworld", "--vocab_size", "512"]):
        subprocess.run([PYTHON, str(REPO / args[0]), *args[1:]], cwd=ws, check=True, capture_output=True)
    return ws


def train(ws, name, **config):
    """Run modelling/train.py; returns (train_log DataFrame, config.json dict)."""
    out = f"out/{name}"
    shutil.rmtree(ws / out, ignore_errors=True)
    args = [f"--{k}={v}" for k, v in {**config, "out_dir": out}.items()]
    proc = subprocess.run([PYTHON, str(REPO / "modelling/train.py"), *args], cwd=ws, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return pd.read_csv(ws / out / "train_log.csv"), json.loads((ws / out / "config.json").read_text())


def throughput(log):
    """Real tokens per second over the steps after WARMUP (dt of a step = tokens / tokens_per_s)."""
    tokens = log["tokens_seen"].diff().fillna(log["tokens_seen"].iloc[0])
    measured = log["step"] > WARMUP
    seconds = (tokens[measured] / log.loc[measured, "tokens_per_s"]).sum()
    return float(tokens[measured].sum() / seconds), float(seconds)


def run(quick=False):
    rows = []
    ws = prepare_workspace()
    try:
        steps = 12 if quick else 24
        # checkpoints (log-spaced 1..16 and the last): the measured steps 6..N include the work of the ones at
        # 8 and 16 — far denser than a real run, so the per-checkpoint cost is also projected to the demo
        modes = [("fp32_eager", dict(dtype="float32", compile=False)),
                 ("bf16_autocast", dict(dtype="bfloat16", compile=False)),
                 ("bf16_compile", dict(dtype="bfloat16", compile=True))]
        results = {}
        for name, mode in modes:
            log, cfg = train(ws, name, **SHAPE, **mode, max_iters=steps, eval_interval=steps)
            tok_s, seconds = throughput(log)
            flops = cfg["flops_per_token"] * tok_s
            results[name] = (tok_s, seconds)
            note = (f"15M shape d288 L6 H6 T256 B16 V512 ({cfg['n_params'] / 1e6:.2f}M params), steps "
                    f"{WARMUP + 1}-{steps} ({seconds:.0f} s), checkpoints + batch log on")
            rows += [
                {"bench": "train", "metric": f"{name}_tokens_per_s", "value": tok_s, "unit": "tok/s", "note": note},
                {"bench": "train", "metric": f"{name}_vs_llama2c", "value": tok_s / LLAMA2C_TOK_S, "unit": "x",
                 "note": f"llama2.c train.py reference {LLAMA2C_TOK_S:.0f} tok/s; target >= 3x"},
                {"bench": "train", "metric": f"{name}_mfu_fp32_peak", "value": 100 * flops / PEAK["float32"],
                 "unit": "%", "note": f"{flops / 1e9:.1f} GFLOP/s (6N+12LdT per token) / 0.3 TFLOP/s fp32 peak"},
            ]
            if "bf16" in name:
                rows.append({"bench": "train", "metric": f"{name}_mfu_bf16_peak",
                             "value": 100 * flops / PEAK["bfloat16"], "unit": "%",
                             "note": "/ 1.9 TFLOP/s bf16 peak (needs AMX; this VM exposes no amx/avx512_bf16 flags)"})

        # instrumentation on vs off: same shape, fp32, same evaluations at the same steps
        off_log, _ = train(ws, "fp32_uninstrumented", **SHAPE, dtype="float32", max_iters=steps,
                           eval_interval=steps, instrument=False)
        off_tok_s, off_seconds = throughput(off_log)
        on_tok_s, on_seconds = results["fp32_eager"]
        n_ckpt = 2  # checkpoints 8 and 16 fall in the measured steps
        per_ckpt = max(0.0, (on_seconds - off_seconds) / n_ckpt)
        step_s = off_seconds / (steps - WARMUP)
        demo = 100 * 19 * per_ckpt / (500 * step_s)  # the demo: 19 checkpoints in 500 steps
        rows += [
            {"bench": "train", "metric": "instrumentation_overhead_bench", "value": 100 * (off_tok_s / on_tok_s - 1),
             "unit": "%", "note": f"fp32 tok/s off {off_tok_s:.0f} vs on {on_tok_s:.0f}, 2 checkpoints in "
                                  f"{steps - WARMUP} steps (batch log, probe attention, step + resume.pt saves)"},
            {"bench": "train", "metric": "checkpoint_cost", "value": per_ckpt, "unit": "s",
             "note": f"per checkpoint of the 15M shape (fp32 step {step_s:.2f} s)"},
            {"bench": "train", "metric": "instrumentation_overhead_15M_demo_schedule", "value": demo, "unit": "%",
             "note": "that cost at the demo's density (19 checkpoints in 500 steps); target < 3%"},
        ]

        # bf16 vs fp32 loss after loss_steps steps on a smaller shape
        loss_steps = 50 if quick else 200
        losses = {}
        for dt in ("float32", "bfloat16"):
            log, _ = train(ws, f"loss_{dt}", **LOSS_SHAPE, dtype=dt, max_iters=loss_steps)
            losses[dt] = float(log["loss"].iloc[-10:].mean())
        diff = 100 * abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
        rows.append({"bench": "train", "metric": f"bf16_vs_fp32_loss_at_{loss_steps}", "value": diff, "unit": "%",
                     "note": f"mean train loss of the last 10 steps: fp32 {losses['float32']:.4f}, bf16 "
                             f"{losses['bfloat16']:.4f} (d128 L4 T128 B16); target within 2%"})
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['metric']:<34} {r['value']:>10.3g} {r['unit']:<6} {r['note']}")
