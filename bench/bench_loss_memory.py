"""Peak memory of one training step at vocab 32000 (llama2.c's 15M shape with the Llama 2 vocab, batch 16 x 256),
plain loss (model.forward: [B, T, V] fp32 logits + F.cross_entropy) vs modelling/losses.chunked_cross_entropy.

Each variant runs in a fresh subprocess (forward, backward, AdamW step, fp32) and reports its peak RSS
(resource.getrusage ru_maxrss) and the step time; the chunked one swaps the model's classifier for identity so
forward returns the final hidden states, then takes the loss from them and the tied classifier weight. Both
losses are printed and must agree. Target: chunked peak <= half of plain.

    .venv/bin/python -m bench.run_all loss_memory [--quick]      (quick: one run each, else best of 2)
"""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from modelling.losses import DEFAULT_CHUNK  # noqa: E402

BENCH = "loss_memory"
SHAPE = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=256)
BATCH = 16
CHUNK = int(os.environ.get("BENCH_CHUNK", DEFAULT_CHUNK))


def worker(variant):
    """One fp32 training step of the given variant; prints {peak_rss_mb, step_s, loss} as JSON."""
    import torch
    from torch import nn
    from modelling.losses import chunked_cross_entropy
    from modelling.model import ModelArgs, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**SHAPE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["max_seq_len"]), generator=g)
    y = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["max_seq_len"]), generator=g)
    weight = model.output.weight
    t0 = time.perf_counter()
    if variant == "plain":
        model(x, y)
        loss = model.last_loss
    elif variant == "chunked":
        model.output = nn.Identity()  # forward returns norm(h); the classifier is applied chunk by chunk
        loss = chunked_cross_entropy(model(x), weight, y, chunk=CHUNK)
    else:  # "floor": no classifier at all — what the rest of the step costs
        model.output = nn.Identity()
        loss = model(x).square().mean() + 0 * weight.sum()
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"peak_rss_mb": peak_mb, "step_s": step_s, "loss": float(loss.detach())}))


def measure(variant):
    proc = subprocess.run([sys.executable, __file__, "--worker", variant], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode:
        raise RuntimeError(f"loss_memory worker {variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick=False):
    reps = 1 if quick else 2
    results = {v: [measure(v) for _ in range(reps)] for v in ("plain", "chunked", "floor")}
    best = {v: min(r, key=lambda m: m["peak_rss_mb"]) for v, r in results.items()}
    if abs(best["plain"]["loss"] - best["chunked"]["loss"]) > 1e-5 * best["plain"]["loss"]:
        raise AssertionError(f"plain and chunked losses differ: {best}")
    floor = best["floor"]["peak_rss_mb"]
    logits_mb = BATCH * SHAPE["max_seq_len"] * SHAPE["vocab_size"] * 4 / 2 ** 20
    label = f"15M shape at vocab 32000, batch {BATCH}x{SHAPE['max_seq_len']}, fp32 fwd+bwd+AdamW"
    return [
        {"bench": BENCH, "metric": "plain_peak_rss", "value": best["plain"]["peak_rss_mb"], "unit": "MB",
         "note": f"{label}; full logits {logits_mb:.0f} MB; step {best['plain']['step_s']:.1f} s"},
        {"bench": BENCH, "metric": "chunked_peak_rss", "value": best["chunked"]["peak_rss_mb"], "unit": "MB",
         "note": f"chunked_cross_entropy ({CHUNK} positions a chunk); step {best['chunked']['step_s']:.1f} s"},
        {"bench": BENCH, "metric": "chunked_vs_plain_peak", "value": best["chunked"]["peak_rss_mb"] /
         best["plain"]["peak_rss_mb"], "unit": "x", "note": "target <= 0.5; losses equal "
                                                           f"({best['plain']['loss']:.6f})"},
        {"bench": BENCH, "metric": "classifier_loss_extra_plain", "value": best["plain"]["peak_rss_mb"] - floor,
         "unit": "MB", "note": f"peak above the same step without a classifier ({floor:.0f} MB: model, AdamW, "
                               f"layer activations)"},
        {"bench": BENCH, "metric": "classifier_loss_extra_chunked", "value": best["chunked"]["peak_rss_mb"] - floor,
         "unit": "MB", "note": "the chunked loss's own cost above that floor"},
    ]


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker(sys.argv[sys.argv.index("--worker") + 1])
    else:
        for row in run(quick="--quick" in sys.argv):
            print(f"{row['metric']:<28} {row['value']:>10.4g} {row['unit']:<4} {row['note']}")
