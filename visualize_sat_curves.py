"""Saturation curves: is each metric still improving, plateaued (from which step), flat or too noisy to tell —
input metrics per training interval next to output metrics per checkpoint.

    python visualize_sat_curves.py [--out_dir out/demo] [--seeds out/RUN_s2 ...] [--compare out/RUN2 ...]
                                   [--metrics a,b]

Reads  out/RUN/tables/summary.csv (written by eval.py), tables/attn_stats.csv if visualize_attn.py made it
       (induction_max = the best head's induction score per step, drawn beside icl_score); --seeds: the same
       run trained with other seeds (each curve is then classified on the mean over the runs, with their
       spread as its noise).
Writes out/RUN/tables/saturation.csv (+ saturation.json), out/RUN/visualize/sat_curves.png (vs step),
       out/RUN/visualize/sat_curves_tokens.png (vs tokens seen), and with --compare sat_compare.png.

The rule (noise estimate, log-step ramp fit, the classes improving / plateaued / flat / too_noisy) lives in
measures/saturation.py; the figure in measures/sat_figure.py. Output side: out_*, val_loss, icl_score and the
probes per checkpoint; input side: in_* (the stories trained on since the previous checkpoint). The cumulative
cum_* means are drawn but not classified (a running mean of a random stream "converges" by construction).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

from common.errors import run_main  # noqa: E402
from common.io import atomic_path, atomic_write_json, provenance  # noqa: E402
from common.paths import DEFAULT_RUN, add_root_argument, apply_root, default_run_dir  # noqa: E402
from measures.sat_figure import plot_curves  # noqa: E402
from measures.saturation import CLASSES, METHOD, curve_columns, load_summary, saturation_table  # noqa: E402


def with_induction(summary, run_dir):
    """summary + induction_max (the best head's induction score per step, from visualize_attn.py's
    tables/attn_stats.csv when it exists), so the in-context-learning panels show it beside icl_score."""
    path = Path(run_dir) / "tables" / "attn_stats.csv"
    if not path.exists() or "induction_max" in summary:
        return summary
    stats = pd.read_csv(path)
    if not {"step", "induction"} <= set(stats.columns):
        return summary
    best = stats.groupby("step")["induction"].max().rename("induction_max")
    return summary.join(best, on="step")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=None,
                        help=f"run folder (out/RUN) holding tables/summary.csv (default: out/{DEFAULT_RUN})")
    parser.add_argument("--seeds", nargs="*", default=[], help="the same run with other seeds (noise = their spread)")
    parser.add_argument("--compare", nargs="*", default=[], help="other run folders to overlay")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: a few per family)")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    run_dir = Path(args.out_dir) if args.out_dir else default_run_dir()
    summary = with_induction(load_summary(run_dir), run_dir)
    curve_columns(summary, metrics)  # validates --metrics before anything is written
    seeds = [load_summary(s) for s in args.seeds]

    table = saturation_table(summary, seeds)
    table_path = run_dir / "tables" / "saturation.csv"
    with atomic_path(table_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    vis = run_dir / "visualize"
    single = {run_dir.name: summary}
    written = [table_path, plot_curves(single, vis / "sat_curves.png", "step", metrics),
               plot_curves(single, vis / "sat_curves_tokens.png", "tokens_seen", metrics)]
    if args.compare:
        runs = dict(single)
        for other in args.compare:
            label = Path(other).name if Path(other).name not in runs else str(other)
            runs[label] = with_induction(load_summary(other), other)
        written.append(plot_curves(runs, vis / "sat_compare.png", "step", metrics,
                                   title="saturation, runs overlaid (solid = output, thin = input per interval)"))
    counts = {c: int((table["class"] == c).sum()) for c in CLASSES}
    atomic_write_json(run_dir / "tables" / "saturation.json",
                      {"provenance": provenance(method=METHOD, seeds=args.seeds, compare=args.compare),
                       "n_checkpoints": int(len(summary)), "curves": int(len(table)), "classes": counts})
    print(", ".join(f"{n} {c}" for c, n in counts.items()) + f" of {len(table)} curves; wrote "
          + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    run_main(main)
