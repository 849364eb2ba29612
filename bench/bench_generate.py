"""Generation speed: 200 new tokens for 8 prompts of 32 tokens, with the KV cache (Transformer.generate,
what eval.py uses) vs a no-cache loop like llama2.c's `generate` (every step re-runs the whole sequence),
side by side in one run, greedy, fp32, randomly initialised weights (speed does not depend on training).
Shapes: the demo model (train.py's defaults: dim 128, 4 layers, 4 heads, vocab 512, max_seq_len 256) and llama2.c's 15M
(dim 288, 6 layers, 6 heads; quick: demo only). Target: KV cache >= 5x faster. Both loops must give the same
tokens (checked). Times are the best of REPEATS runs (the machine is shared and noisy).

    .venv/bin/python -m bench.run_all generate       (make bench runs every bench)
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelling.model import ModelArgs, Transformer  # noqa: E402

BENCH = "generate"
N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 8, 32, 200
REPEATS = 2
THREADS = 1  # small models generate fastest on one thread; on this shared 2-core CPU two threads thrash (10x slower)
SHAPES = {
    "demo": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=512, multiple_of=32, max_seq_len=256),
    "15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=512, multiple_of=32, max_seq_len=256),
}


@torch.inference_mode()
def no_cache_generate(model, idx, max_new_tokens):
    """llama2.c model.py's generate loop: the full (cropped) sequence through the model at every step."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.params.max_seq_len else idx[:, -model.params.max_seq_len:]
        logits = model(idx_cond)[:, -1, :]
        idx = torch.cat((idx, torch.argmax(logits, dim=-1, keepdim=True)), dim=1)
    return idx


def best_time(fn, repeats=REPEATS):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run(quick=False):
    rows = []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(quick, rows)
    finally:
        torch.set_num_threads(threads_before)


def _run(quick, rows):
    threads = torch.get_num_threads()
    for name in (["demo"] if quick else list(SHAPES)):
        torch.manual_seed(0)
        model = Transformer(ModelArgs(**SHAPES[name])).eval()
        prompts = torch.randint(3, SHAPES[name]["vocab_size"], (N_PROMPTS, PROMPT_LEN))
        t_cache, with_cache = best_time(lambda: model.generate(prompts, NEW_TOKENS, use_cache=True))
        t_plain, without = best_time(lambda: no_cache_generate(model, prompts, NEW_TOKENS))
        same = bool(torch.equal(with_cache, without))
        tokens = N_PROMPTS * NEW_TOKENS
        note = f"{N_PROMPTS} prompts x {NEW_TOKENS} tokens, fp32, {threads} threads"
        rows += [
            {"bench": BENCH, "metric": f"{name}_kv_cache_tokens_per_s", "value": tokens / t_cache, "unit": "tok/s",
             "note": note},
            {"bench": BENCH, "metric": f"{name}_no_cache_tokens_per_s", "value": tokens / t_plain, "unit": "tok/s",
             "note": "llama2.c-style loop: whole sequence every step"},
            {"bench": BENCH, "metric": f"{name}_kv_speedup", "value": t_plain / t_cache, "unit": "x",
             "note": f"target >= 5x; identical tokens: {same}"},
        ]
        if not same:
            raise AssertionError(f"{name}: KV-cache and no-cache greedy tokens differ")
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
