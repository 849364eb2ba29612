"""Training throughput side by side with the real llama2.c, and this project's own training rows.

1. llama2.c's `train.py` (../shared/reference/llama2.c, run stock from a temp copy: --device=cpu, its default
   compile=True — quick: compile=False —, no autocast on CPU, gradient_accumulation_steps=1, one eval batch) and
   this project's `modelling/train.py` (instrumentation on: batch log, probes, log-spaced checkpoints) on the same
   stories — ours read them as pretokenized, llama2.c as its own data/tok512/*.bin stream layout — and the same
   shape (dim 288, 6 layers, 6 heads, seq 256, batch 16, vocab 512; quick: dim 128, 4 layers, seq 128), run as
   interleaved A/B pairs (the order alternates), reporting real-target tok/s of each and the per-pair ratio
   ours / llama2.c as min / median / max, with the load average and the CPU's AMX / AVX512-BF16 flags.
   Quick mode runs llama2.c twice per pair: stock, and with OMP_WAIT_POLICY=PASSIVE in its environment (its code
   unchanged) — on a loaded CPU the spinning default alone changes the ratio several-fold, and train.py chooses
   the policy by the cores other processes keep busy (common/machine.py).
   Our variants: fp32 eager (llama2.c's math), dtype auto (bf16 where the CPU has it), and full mode auto +
   compile (fixed-width batches: one recompile, at a change of row count within the untimed first steps — checked);
   quick mode forces OMP_WAIT_POLICY=ACTIVE once against the chosen policy.
   Real targets: llama2.c packs rows (all B*T targets are real); ours pads each story's row, pads not counted.
   Ours is timed on the steps that carry no checkpoint work (batch log on) — the ratios — and on every step; the
   per-checkpoint cost at the demo's density is the full mode's instrumentation row.
2. full mode only: instrumentation on vs off, and bf16 vs fp32 loss after 200 steps on a smaller shape.

    .venv/bin/python -m bench.run_all train [--quick]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.reference import llama2c_workdir, run_llama2c_train  # noqa: E402
from bench.util import machine_info, machine_note, ratio_stats  # noqa: E402

PYTHON = sys.executable
BENCH = "train"
SHAPE = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, multiple_of=32, max_seq_len=256, batch_size=16,
             vocab_size=512)
QUICK_SHAPE = dict(SHAPE, dim=128, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=128)
OURS = dict(dataset="storyworld", learning_rate=5e-4, warmup_iters=10, eval_iters=1)
LOSS_SHAPE = {**SHAPE, **OURS, **dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=128,
                                       learning_rate=2e-3, warmup_iters=20, eval_interval=1000, eval_iters=2)}
# (name, train.py overrides, extra environment); thread variants change one thing against "auto"
VARIANTS_FULL = [
    ("fp32_eager", dict(dtype="float32", compile=False), {}),
    ("auto_eager", dict(dtype="auto", compile=False), {}),
    ("auto_compile", dict(dtype="auto", compile=True), {}),
]
VARIANTS_QUICK = [
    ("fp32_eager", dict(dtype="float32", compile=False), {}),
    ("auto_eager", dict(dtype="auto", compile=False), {}),
    ("auto_eager_omp_active", dict(dtype="auto", compile=False), {"OMP_WAIT_POLICY": "ACTIVE"}),
]
PEAK = {"float32": 0.3e12, "bfloat16": 1.9e12}  # FLOP/s: 2 cores x AVX-512 fp32 FMA; bf16 figure assumes AMX


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


def train(ws, name, env=None, **config):
    """Run modelling/train.py; returns (train_log DataFrame, config.json dict)."""
    out = f"out/{name}"
    shutil.rmtree(ws / out, ignore_errors=True)
    args = [f"--{k}={v}" for k, v in {**config, "out_dir": out}.items()]
    proc = subprocess.run([PYTHON, str(REPO / "modelling/train.py"), *args], cwd=ws, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return pd.read_csv(ws / out / "train_log.csv"), json.loads((ws / out / "config.json").read_text())


def throughput(log, skip, exclude_after=()):
    """Real target tokens per second over the steps after the first `skip` (dt of a step = tokens / tokens_per_s);
    exclude_after: checkpoint steps — the step after one carries its evaluation, probes and saves in its dt."""
    tokens = log["tokens_seen"].diff().fillna(log["tokens_seen"].iloc[0])
    measured = (log["step"] > skip) & ~(log["step"] - 1).isin(list(exclude_after))
    seconds = (tokens[measured] / log.loc[measured, "tokens_per_s"]).sum()
    return float(tokens[measured].sum() / seconds), float(seconds)


def llama2c_throughput(rows, shape, skip):
    """llama2.c: every row is packed, so an iteration trains batch_size * max_seq_len real targets."""
    seconds = sum(dt for it, _, dt in rows if it > skip)
    n = sum(1 for it, _, _ in rows if it > skip)
    return n * shape["batch_size"] * shape["max_seq_len"] / seconds, seconds


def side_by_side(ws, quick):
    """Interleaved pairs: llama2.c (stock, and with OMP_WAIT_POLICY=PASSIVE as train.py sets it), then each of our
    variants (reversed order every other pair); ratios are taken within a pair."""
    shape = QUICK_SHAPE if quick else SHAPE
    iters, skip, n_pairs = (8, 3, 2) if quick else (20, 5, 3)
    variants = VARIANTS_QUICK if quick else VARIANTS_FULL
    ref_compile = not quick
    work = llama2c_workdir(ws, "storyworld", shape["vocab_size"])
    refs = [("llama2c_stock", {})] + ([("llama2c_omp_passive", {"OMP_WAIT_POLICY": "PASSIVE"})] if quick else [])
    loads, tok_s, dtypes = [], {name: [] for name, _ in refs}, {}
    tok_s.update({name: [] for name, _, _ in variants})
    with_ckpt = {name: [] for name, _, _ in variants}
    flops_per_token, n_ckpt_timed, policies = {}, 0, {}
    for pair in range(n_pairs):
        jobs = [(name, None, env) for name, env in refs] + list(variants)
        for name, overrides, env in (jobs if pair % 2 == 0 else jobs[::-1]):
            loads.append(os.getloadavg()[0])
            if overrides is None:
                rows = run_llama2c_train(work, iters, env=env, compile=ref_compile, **shape)
                tok_s[name].append(llama2c_throughput(rows, shape, skip)[0])
            else:
                log, cfg = train(ws, name, env, **shape, **OURS, **overrides, max_iters=iters + 1,
                                 eval_interval=iters + 1)
                if overrides.get("compile") and log.loc[log["step"] <= skip, "n_rows"].nunique() < 2:
                    raise RuntimeError(f"{name}: the row count did not change in the {skip} untimed steps, so "
                                       f"torch.compile's recompile (dynamic rows) would fall in the timed steps")
                # our steps are 1-based, llama2.c's 0-based; steady state: steps not carrying a checkpoint's work
                tok_s[name].append(throughput(log, skip + 1, cfg["checkpoint_steps"])[0])
                with_ckpt[name].append(throughput(log, skip + 1)[0])
                flops_per_token[name], dtypes[name] = cfg["flops_per_token"], cfg["dtype_used"]
                policies.setdefault(name, []).append(cfg["threads"]["omp_wait_policy"])
                n_ckpt_timed = sum(1 for c in cfg["checkpoint_steps"] if skip + 1 <= c <= iters)
    info = machine_info()
    label = (f"d{shape['dim']} L{shape['n_layers']} H{shape['n_heads']} T{shape['max_seq_len']} "
             f"B{shape['batch_size']} V{shape['vocab_size']}, {iters - skip} timed steps")
    load_note = f"load during runs {min(loads):.2f}-{max(loads):.2f}; {machine_note(info)}"
    rows = []
    for name, env in refs:
        stats, _ = ratio_stats(tok_s[name])
        rows.append({"bench": BENCH, "metric": f"{name}_tokens_per_s", "value": stats["median"], "unit": "tok/s",
                     "note": f"llama2.c train.py --device=cpu --compile={ref_compile} (fp32) {env or ''}, {label}; "
                             f"median of {n_pairs} (min {stats['min']:.0f}, max {stats['max']:.0f})"
                             + (f"; {load_note}" if name == "llama2c_stock" else "")})
    for name, _, env in variants:
        mfu = 100 * flops_per_token[name] * statistics.median(tok_s[name]) / PEAK["float32"]
        rows.append({"bench": BENCH, "metric": f"ours_{name}_tokens_per_s", "value": statistics.median(tok_s[name]),
                     "unit": "tok/s", "note": f"modelling/train.py dtype={dtypes[name]} {env or ''} wait policy "
                                              f"{'/'.join(sorted(set(policies[name])))}, median of "
                                              f"{n_pairs}, batch log on, steps carrying no checkpoint; {mfu:.1f}% "
                                              f"of the 0.3 TFLOP/s fp32 peak"})
        rows.append({"bench": BENCH, "metric": f"ours_{name}_with_checkpoints_tokens_per_s",
                     "value": statistics.median(with_ckpt[name]), "unit": "tok/s",
                     "note": f"every timed step, incl. the log-spaced checkpoints' evaluation + probes + saves "
                             f"({n_ckpt_timed} in {iters - skip} steps here, ~1 per 26 in the demo)"})
        for ref, _ in refs:
            stats, note = ratio_stats([o / r for o, r in zip(tok_s[name], tok_s[ref])])
            rows.append({"bench": BENCH, "metric": f"ours_{name}_vs_{ref}", "value": stats["median"], "unit": "x",
                         "note": note + " (ours / llama2.c per pair)"})
    return rows, {"tok_s": tok_s, "loads": loads, "machine": info, "shape": shape}


def run(quick=False):
    ws = prepare_workspace()
    try:
        rows, _ = side_by_side(ws, quick)
        if not quick:
            rows += instrumentation_and_loss(ws)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    return rows


def instrumentation_and_loss(ws):
    rows = []
    steps, warmup = 24, 5
    base = dict(**SHAPE, **OURS, dtype="float32", max_iters=steps, eval_interval=steps)
    on_log, _ = train(ws, "fp32_instrumented", **base)
    on_tok_s, on_seconds = throughput(on_log, warmup)
    # instrumentation on vs off: same shape, fp32, same evaluations at the same steps
    off_log, _ = train(ws, "fp32_uninstrumented", **base, instrument=False)
    off_tok_s, off_seconds = throughput(off_log, warmup)
    n_ckpt = 2  # checkpoints 8 and 16 fall in the measured steps
    per_ckpt = max(0.0, (on_seconds - off_seconds) / n_ckpt)
    step_s = off_seconds / (steps - warmup)
    demo = 100 * 19 * per_ckpt / (500 * step_s)  # the demo: 19 checkpoints in 500 steps
    rows += [
        {"bench": "train", "metric": "instrumentation_overhead_bench", "value": 100 * (off_tok_s / on_tok_s - 1),
         "unit": "%", "note": f"fp32 tok/s off {off_tok_s:.0f} vs on {on_tok_s:.0f}, 2 checkpoints in "
                              f"{steps - warmup} steps (batch log, probe attention, step + resume.pt saves)"},
        {"bench": "train", "metric": "checkpoint_cost", "value": per_ckpt, "unit": "s",
         "note": f"per checkpoint of the 15M shape (fp32 step {step_s:.2f} s)"},
        {"bench": "train", "metric": "instrumentation_overhead_15M_demo_schedule", "value": demo, "unit": "%",
         "note": "that cost at the demo's density (19 checkpoints in 500 steps); target < 3%"},
    ]

    # bf16 vs fp32 loss after loss_steps steps on a smaller shape
    loss_steps = 200
    losses = {}
    for dt in ("float32", "bfloat16"):
        log, _ = train(ws, f"loss_{dt}", **LOSS_SHAPE, dtype=dt, max_iters=loss_steps)
        losses[dt] = float(log["loss"].iloc[-10:].mean())
    diff = 100 * abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
    rows.append({"bench": "train", "metric": f"bf16_vs_fp32_loss_at_{loss_steps}", "value": diff, "unit": "%",
                 "note": f"mean train loss of the last 10 steps: fp32 {losses['float32']:.4f}, bf16 "
                         f"{losses['bfloat16']:.4f} (d128 L4 T128 B16); target within 2%"})
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['metric']:<34} {r['value']:>10.3g} {r['unit']:<6} {r['note']}")
