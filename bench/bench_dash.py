"""Dashboard callback latency on a run with >= 50 checkpoints (target: < 300 ms each).

Builds a run folder with the real stages in a temp workspace (storyworld corpus, tiny model, a checkpoint every
2 steps: 56), evaluates it with eval.py and the three visualizers, then times each main callback
function of dash_llama/pages as Dash runs it: the function plus the JSON encoding Dash sends to the browser.
`cold` = first call on a fresh Store (files read, checkpoint loaded); `warm` = median of repeated calls.

    python -m bench.run_all dash            (or: python bench/bench_dash.py [--quick])
    BENCH_DASH_WORKSPACE=/tmp/bd python bench/bench_dash.py    # keep the built run and reuse it next time
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import plotly.io  # noqa: E402

from common.paths import set_root  # noqa: E402

PYTHON = sys.executable
TARGET_MS = 300
N_STORIES, VOCAB = 3000, 512
TRAIN = dict(out_dir="out/b56", dataset="storyworld", vocab_size=VOCAB, max_iters=110, eval_interval=2,
             eval_iters=1, batch_size=8, max_seq_len=128, dim=96, n_layers=4, n_heads=6, n_kv_heads=6,
             multiple_of=32, probe_len=96, warmup_iters=10, dtype="float32")


def stage(ws, script, *args):
    cmd = [PYTHON, str(REPO / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{proc.stderr[-3000:]}")


def build_run(ws, quick):
    stage(ws, "download/download_datasets.py", "storyworld", "--n_stories", N_STORIES, "--seed", 0)
    stage(ws, "tokenization/pretokenize.py", "train_vocab", "--dataset", "storyworld", "--vocab_size", VOCAB)
    stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "storyworld", "--vocab_size", VOCAB)
    stage(ws, "metadata/batch_metadata.py", "compute_metadata", "--dataset", "storyworld", "--vocab_size", VOCAB)
    stage(ws, "modelling/train.py", *[f"--{k}={v}" for k, v in TRAIN.items()])
    run = TRAIN["out_dir"]
    stage(ws, "eval.py", "--out_dir", run, "--n_prompts", 2, "--max_new_tokens", 8 if quick else 24)
    stage(ws, "visualize_attn.py", "--out_dir", run, "--steps", TRAIN["max_iters"])  # stats cover all steps
    stage(ws, "visualize_embd.py", "--out_dir", run)
    stage(ws, "visualize_sat_curves.py", "--out_dir", run, "--metrics", "flesch_ease")


def timed(fn, repeats, out="out"):
    """(cold ms, warm median ms) of fn(store) + Dash's JSON encoding of its result. Cold: a fresh Store, so the
    run, tables and checkpoint are read from disk as on a page's first visit; warm: the Store's cache."""
    from dash_llama.data import Store

    def once(store):
        t0 = time.perf_counter()
        plotly.io.json.to_json_plotly(fn(store))
        return (time.perf_counter() - t0) * 1000
    cold = once(Store(out))
    warm_store = Store(out)
    once(warm_store)
    return cold, statistics.median(once(warm_store) for _ in range(repeats))


def callbacks(store, run):
    """{name: fn(store)} for each main callback of the pages, with the controls at typical values."""
    from dash_llama.pages import attention, data_page, embeddings, generations, runs, saturation
    steps = store.checkpoint_steps(run)
    probe = attention.probe_names(store, run)[0]
    pca_steps = embeddings.pca_steps(store, run)
    gen_steps = generations.generation_steps(store, run)
    return steps, {
        "runs: table": lambda s: runs.runs_table(s).to_dict("records"),
        "runs: loss curves": lambda s: runs.loss_figure(s, [run], "tokens_seen", 0.6),
        "saturation: curves": lambda s: saturation.saturation_figure(s, [run], "flesch_ease", "step",
                                                                     ["in", "cum", "out"]),
        "attention: layer x head grid": lambda s: attention.grid_figure(s, run, steps[len(steps) // 2], probe),
        "attention: enlarged head": lambda s: attention.head_figure(s, run, steps[-1], probe, 1, 1),
        "attention: per-head stats": lambda s: attention.stats_figure(s, run, "induction", steps[-1], (1, 1)),
        "embeddings: scatter + search": lambda s: embeddings.scatter_figure(s, run, pca_steps[-1], "she, he"),
        "embeddings: trajectories": lambda s: embeddings.trajectory_figure(s, run, "she, he", pca_steps[-1]),
        "generations: table": lambda s: generations.generations_table(s, run, gen_steps[-1]),
        "generations: scores": lambda s: generations.scores_figure(s, run, gen_steps[-1]),
        "data: histogram": lambda s: data_page.histogram_figure(s, run, "flesch_ease"),
        "data: batch composition": lambda s: data_page.composition_figure(s, run, "flesch_ease"),
        "data: batch viewer": lambda s: data_page.batch_rows(s, run, 7, ["flesch_ease"]),
        "attention: a compared run's head": lambda s: attention.compared_heads(s, [run], steps[len(steps) // 2] + 1,
                                                                               probe, 1, 1),
        "header: damage checks": lambda s: s.health(run),
        "refresh: file version check": lambda s: s.version(),
    }


def run(quick=False):
    """Build (or, with BENCH_DASH_WORKSPACE=DIR, build once and reuse) the bench run, then time each callback."""
    from dash_llama.data import Store
    repeats = 3 if quick else 7
    rows = []
    keep = os.environ.get("BENCH_DASH_WORKSPACE")
    with tempfile.TemporaryDirectory(prefix="bench_dash_") as tmp:
        ws = Path(keep or tmp)
        ws.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if not (ws / TRAIN["out_dir"] / "tables" / "embd_pca.csv").exists():
            build_run(ws, quick)
        build_s = time.time() - t0
        set_root(ws)  # data/ resolves from the project root, as for the app
        try:
            steps, fns = callbacks(Store(ws / "out"), "b56")
            for name, fn in fns.items():
                cold, warm = timed(fn, repeats, ws / "out")
                verdict = lambda ms: "ok" if ms < TARGET_MS else "OVER TARGET"  # noqa: E731
                rows.append({"bench": "dash", "metric": f"{name} (warm)", "value": round(warm, 1), "unit": "ms",
                             "note": f"median of {repeats}, cached Store; < {TARGET_MS} ms: {verdict(warm)}"})
                rows.append({"bench": "dash", "metric": f"{name} (cold)", "value": round(cold, 1), "unit": "ms",
                             "note": f"first visit, fresh Store (files read); < {TARGET_MS} ms: {verdict(cold)}"})
        finally:
            set_root(None)
        rows.append({"bench": "dash", "metric": "checkpoints in the bench run", "value": len(steps), "unit": "count",
                     "note": f"dim {TRAIN['dim']}, {TRAIN['n_layers']}x{TRAIN['n_heads']} heads, probe "
                             f"{TRAIN['probe_len']} tokens; building it took {build_s:.0f} s; load average "
                             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while timing"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['metric']:<42} {row['value']:>9.1f} {row['unit']:<6} {row['note']}")
