"""The pipeline at scale: a storyworld corpus of N stories through every stage, each stage's wall time and peak RSS,
measured at N/4 and N and extrapolated linearly to TinyStories' size (5M stories).

Stages, each a real script in a fresh subprocess of a temp workspace (peak RSS = the largest process of the
stage's process tree, from os.wait4 as /usr/bin/time -v reports it; stories/s = N / wall time):
generate (download_datasets.py storyworld: stories, shards and the dataset card), train_vocab, pretokenize,
compute_metadata (full metric set), and a 30-step train (modelling/train.py over every train story, dim 128).

    .venv/bin/python -m bench.run_all scale                          # N = 1,000,000 (and 250,000)
    .venv/bin/python bench/bench_scale.py --n 100000                 # a smaller full-size check
    .venv/bin/python -m bench.run_all scale --quick                  # N = 10,000 (and 2,500)

Time and memory are fitted as a + b*N through the two sizes; a stage whose memory slope b is not ~0 holds
something per story, and the 5M column says where that ends. CPU seconds per stage (the process tree's user +
system time) are reported beside the wall time: they hardly move with the machine's load. Small N (quick)
overstates slopes: fixed costs and caps (train_vocab's 50,000-story sample, one 5,000-story shard in flight)
are still growing there.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.util import machine_note  # noqa: E402

BENCH = "scale"
VOCAB = 512
TARGET_N = 5_000_000
TARGET_GB = 4.0
FIXED_WORK = ("train_30_steps",)  # work independent of N (train_vocab also caps its sample at 50,000 stories)
# stages whose memory stops growing at a cap: below it the two sizes still climb it, so the linear slope
# (and its 5M figure) overstates them
CAPPED = {
    "train_vocab": "its sample stops at 50,000 stories",
    "compute_metadata": "the n-gram is fitted on at most 20M train tokens, read shard by shard and counted 2M at "
                        "a time; the table is streamed to parquet shard by shard; what still grows is the story "
                        "index (~150 B/story of RSS as read from index.parquet)",
}


def stages(n):
    return [
        ("generate", "download/download_datasets.py", ["storyworld", "--n_stories", n, "--seed", 0]),
        ("train_vocab", "tokenization/pretokenize.py", ["train_vocab", "--dataset", "storyworld",
                                                        "--vocab_size", VOCAB]),
        ("pretokenize", "tokenization/pretokenize.py", ["pretokenize", "--dataset", "storyworld",
                                                        "--vocab_size", VOCAB]),
        ("compute_metadata", "metadata/batch_metadata.py", ["compute_metadata", "--dataset", "storyworld",
                                                             "--vocab_size", VOCAB]),
        ("train_30_steps", "modelling/train.py", ["--max_iters=30", "--n_stories=0", "--eval_interval=30",
                                                  "--eval_iters=1", "--out_dir=out/scale"]),
    ]


def run_measured(cmd, cwd):
    """(wall seconds, peak RSS MB of the largest process in the tree, CPU seconds of the tree) of one command.
    CPU seconds (user + system of the process and the workers it reaped) do not depend on the machine's load:
    on k idle cores the stage cannot take less than cpu / k seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[1:]))} failed:\n{stderr.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def pipeline(n):
    ws = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n}_"))
    try:
        out = {}
        for name, script, args in stages(n):
            out[name] = run_measured([sys.executable, str(REPO / script), *map(str, args)], ws)
        return out
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def run(quick=False, n=None):
    n = n or (10_000 if quick else 1_000_000)
    small, large = pipeline(n // 4), pipeline(n)
    rows = []
    note_machine = machine_note()
    for name in large:
        (t_s, m_s, c_s), (t_l, m_l, c_l) = small[name], large[name]
        dn = n - n // 4
        t_slope, m_slope = (t_l - t_s) / dn, (m_l - m_s) / dn
        t_5m = t_l + t_slope * (TARGET_N - n)
        m_5m = (m_l + max(0.0, m_slope) * (TARGET_N - n)) / 1024
        bounded = "bounded" if m_5m <= TARGET_GB else f"NOT bounded (target <= {TARGET_GB:.0f} GB)"
        fixed_work = name in FIXED_WORK
        time_note = (f"a fixed {name.split('_')[1]} steps: time does not grow with N ({n // 4:,} stories: {t_s:.1f} s)"
                     if fixed_work else f"{n / t_l:,.0f} stories/s; {n // 4:,} stories: {t_s:.1f} s; "
                                        f"extrapolated to 5M: {t_5m / 60:.0f} min")
        cpu_note = (f"{c_l:.1f} CPU-s ({n / c_l:,.0f} stories per CPU-second; {n // 4:,} stories: {c_s:.1f} CPU-s)"
                    if not fixed_work else f"{c_l:.1f} CPU-s")
        cap = CAPPED.get(name)
        rows += [
            {"bench": BENCH, "metric": f"{name}_seconds_{n}", "value": t_l, "unit": "s",
             "note": f"{time_note}; {cpu_note}"},
            {"bench": BENCH, "metric": f"{name}_peak_rss_{n}", "value": m_l, "unit": "MB",
             "note": f"{n // 4:,} stories: {m_s:.0f} MB; slope {m_slope * 1e6 / 1024:.2f} GB per 1M stories; "
                     f"linear extrapolation to 5M: {m_5m:.1f} GB, {bounded}" + (f" — an upper bound: {cap}"
                                                                                if cap else "")},
        ]
    rows[0]["note"] += f"; {note_machine}"
    return rows


if __name__ == "__main__":
    n_arg = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else None
    for r in run(quick="--quick" in sys.argv, n=n_arg):
        print(f"{r['metric']:<36} {r['value']:>10.4g} {r['unit']:<4} {r['note']}")
