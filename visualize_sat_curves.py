"""Saturation curves: input metrics per training interval next to output metrics per checkpoint.

    python visualize_sat_curves.py [--out_dir out/demo] [--compare out/RUN2 ...] [--metrics a,b] [--tol 0.1]

Reads  out/RUN/tables/summary.csv (written by eval.py).
Writes out/RUN/tables/saturation.csv, out/RUN/visualize/sat_curves.png (vs step),
       out/RUN/visualize/sat_curves_tokens.png (vs tokens seen), and with --compare sat_compare.png.

Normalisation: every curve is min-max scaled to [0, 1] over its own values (across all runs shown), so
curves of different units share one axis; the comparison is of shape and timing, the raw range is in the
legend. Plateau detection (`detect_plateau`, method "band"): the plateau step is the first checkpoint
after which the (3-point rolling-median) curve never leaves a band of `tol` x the curve's total range, provided
that tail spans at least `min_span` of the run's steps and `min_points` checkpoints; otherwise the curve is
"not saturated". Input side uses the cumulative means (cum_*: what the model has seen so far); output side
the per-checkpoint values (out_*, val_loss, probes). The durability experiment and the dashboard import
`detect_plateau`, `normalise`, `saturation_table`, `load_summary` and `plot_curves` from here.
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_path, atomic_write_json, provenance, save_png  # noqa: E402
from common.paths import DEFAULT_RUN, add_root_argument, apply_root, default_run_dir, require  # noqa: E402

# plateau detection defaults (see the module docstring and the README, section 3)
TOL = 0.10        # full width of the plateau band, as a fraction of the curve's total range
MIN_SPAN = 0.20   # the plateau must last at least this fraction of the run's steps
MIN_POINTS = 3    # ... and at least this many checkpoints
SMOOTH = 3        # centred rolling-median window applied before detection (1 = none)
METHOD = "band"

# output-only columns worth a panel (besides out_<metric>)
OUTPUT_EXTRA = ["val_loss", "out_bleu", "out_rougeL", "out_prefix_token_acc", "out_first_divergence",
                "bias_mean", "bias_stereotype", "tox_mass"]
NON_METRIC = {"step", "tokens_seen", "interval_start", "interval_end", "n_stories_interval", "n_stories_cum",
              "n_generations"}


@dataclass
class Plateau:
    index: int          # position in the (NaN-free) curve where the plateau starts
    x: float            # step (or tokens) at that position
    value: float        # smoothed curve value there


def smooth_curve(y, window=SMOOTH):
    """Centred rolling median (edges use the points available): one noisy checkpoint does not end a plateau,
    and a monotone curve is left unchanged, so checkpoint spacing (log-spaced early) does not shift it."""
    if window <= 1:
        return np.asarray(y, dtype=float)
    return pd.Series(np.asarray(y, dtype=float)).rolling(window, center=True, min_periods=1).median().to_numpy()


def detect_plateau(x, y, tol=TOL, min_span=MIN_SPAN, min_points=MIN_POINTS, smooth=SMOOTH):
    """First x after which the curve stays inside a band of tol x its range, or None if not saturated.

    Direction-agnostic (rising, falling or mixed curves). The band is measured on the smoothed curve: the
    tail from point i is a plateau when max(tail) - min(tail) <= tol * (max - min of the whole curve), the
    tail holds >= min_points checkpoints and spans >= min_span of x's total span. A still-improving curve
    never has such a tail, so it is reported as not saturated. A flat curve (zero range) plateaus at once.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(y) < min_points + 1:
        return None
    order = np.argsort(x, kind="stable")
    x, ys = x[order], smooth_curve(y[order], smooth)
    total_range = ys.max() - ys.min()
    total_span = x[-1] - x[0]
    # spread of every tail, from the back: running max/min of ys[i:]
    tail_max = np.maximum.accumulate(ys[::-1])[::-1]
    tail_min = np.minimum.accumulate(ys[::-1])[::-1]
    inside = (tail_max - tail_min) <= tol * total_range + 1e-12
    for i in range(len(ys)):
        if inside[i]:
            # inside[] is monotone (a later tail is a subset), so the first hit is the earliest plateau
            if len(ys) - i >= min_points and x[-1] - x[i] >= min_span * total_span:
                return Plateau(index=i, x=float(x[i]), value=float(ys[i]))
            return None
    return None


def normalise(y, lo=None, hi=None):
    """Min-max scale to [0, 1] (lo/hi default to the curve's own min/max; a flat curve maps to 0.5)."""
    y = np.asarray(y, dtype=float)
    lo = np.nanmin(y) if lo is None else lo
    hi = np.nanmax(y) if hi is None else hi
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 0:
        return np.where(np.isfinite(y), 0.5, np.nan)
    return (y - lo) / (hi - lo)


def load_summary(run_dir):
    """The run's eval summary (one row per checkpoint, sorted by step)."""
    path = require(Path(run_dir) / "tables" / "summary.csv", "eval summary",
                   f"run `python eval.py --out_dir {run_dir}` first")
    try:
        summary = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt eval summary {path} ({e.__class__.__name__}) — re-run eval.py --rebuild")
    if "step" not in summary.columns or summary.empty:
        raise UserError(f"{path} has no checkpoint rows — re-run `python eval.py --out_dir {run_dir}`")
    return summary.sort_values("step").reset_index(drop=True)


def metric_names(summary):
    """Metrics with both an input (in_/cum_) and an output (out_) column, in summary order."""
    names = []
    for col in summary.columns:
        if col.startswith("out_") and (f"in_{col[4:]}" in summary.columns or f"cum_{col[4:]}" in summary.columns):
            names.append(col[4:])
    return names


def curve_columns(summary, metrics=None):
    """[(panel title, output column, input-interval column or None, cumulative column or None)] to plot:
    the named metrics, or every paired metric plus the output-only columns in OUTPUT_EXTRA."""
    paired = metric_names(summary)
    if not metrics:
        metrics = paired + [c for c in OUTPUT_EXTRA if c in summary.columns and c[4:] not in paired]
    panels, unknown = [], []
    for m in metrics:
        if m in paired:
            panels.append((m, f"out_{m}", f"in_{m}" if f"in_{m}" in summary else None,
                           f"cum_{m}" if f"cum_{m}" in summary else None))
        elif m in summary.columns and m not in NON_METRIC:
            panels.append((m, m, None, None))
        elif f"out_{m}" in summary.columns:
            panels.append((m, f"out_{m}", None, None))
        else:
            unknown.append(m)
    if unknown:
        avail = ", ".join(paired + [c for c in OUTPUT_EXTRA if c in summary.columns])
        raise UserError(f"unknown metric(s) {', '.join(unknown)} in summary.csv — available: {avail}")
    return panels


def saturation_table(summary, tol=TOL, min_span=MIN_SPAN, min_points=MIN_POINTS, smooth=SMOOTH):
    """One row per (metric, side): plateau step and tokens, or saturated=False. Input side = cum_* columns."""
    rows = []
    tokens = summary["tokens_seen"].to_numpy(float) if "tokens_seen" in summary else np.full(len(summary), np.nan)
    steps = summary["step"].to_numpy(float)
    for col in summary.columns:
        if col in NON_METRIC or col.startswith("in_"):
            continue
        side = "input" if col.startswith("cum_") else "output"
        y = pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
        if not np.isfinite(y).any():
            continue
        name = col[4:] if col.startswith(("cum_", "out_")) else col
        plateau = detect_plateau(steps, y, tol=tol, min_span=min_span, min_points=min_points, smooth=smooth)
        step_at = np.nan if plateau is None else plateau.x
        tok_at = np.nan
        if plateau is not None:
            tok_at = float(tokens[np.flatnonzero(steps == step_at)[0]])
        rows.append({"metric": name, "side": side, "column": col,
                     "plateau_step": step_at, "plateau_tokens": tok_at,
                     "saturated": plateau is not None,
                     "method": f"{METHOD}(tol={tol},min_span={min_span},min_points={min_points},smooth={smooth})"})
    return pd.DataFrame(rows, columns=["metric", "side", "column", "plateau_step", "plateau_tokens", "saturated",
                                       "method"])


def _range_label(y):
    y = np.asarray(y, dtype=float)
    if not np.isfinite(y).any():
        return "n/a"
    return f"{np.nanmin(y):.3g}..{np.nanmax(y):.3g}"


def plot_curves(runs, path, x="step", metrics=None, tol=TOL, min_span=MIN_SPAN, min_points=MIN_POINTS,
                smooth=SMOOTH, title=None):
    """Grid of panels (one per metric): normalised output (solid), input interval (thin) and cumulative
    (dashed) curves vs `x` ('step' or 'tokens_seen'), plateaus marked. `runs`: {label: summary DataFrame};
    one colour per curve kind for a single run, one colour per run when several are overlaid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))
    panels = curve_columns(first, metrics)
    if not panels:
        raise UserError("no metric columns to plot in summary.csv — re-run eval.py")
    ncols = min(4, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    multi = len(runs) > 1
    run_colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kind_colors = {"out": "tab:blue", "in": "tab:orange", "cum": "tab:red"}
    for ax, (title_m, out_col, in_col, cum_col) in zip(axes.flat, panels):
        for r, (label, summary) in enumerate(runs.items()):
            if x not in summary:
                raise UserError(f"summary of {label} has no {x} column — re-run eval.py")
            xs = summary[x].to_numpy(float)
            for kind, col, style, width in (("in", in_col, "-", 0.8), ("cum", cum_col, "--", 1.2),
                                            ("out", out_col, "-", 1.8)):
                if col is None or col not in summary:
                    continue
                y = pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
                pool = np.concatenate([pd.to_numeric(s[col], errors="coerce").to_numpy(float)
                                       for s in runs.values() if col in s])
                yn = normalise(y, np.nanmin(pool) if np.isfinite(pool).any() else None,
                               np.nanmax(pool) if np.isfinite(pool).any() else None)
                color = run_colors[r % len(run_colors)] if multi else kind_colors[kind]
                name = (f"{label} " if multi else "") + {"out": "output", "in": "input/interval",
                                                          "cum": "input/cumulative"}[kind]
                ax.plot(xs, yn, style, color=color, lw=width, marker="o" if kind == "out" else None, ms=2.5,
                        alpha=0.9 if kind != "in" else 0.6, label=f"{name} [{_range_label(y)}]")
                if kind == "in":
                    continue  # the interval curve is noisy by nature; plateaus are judged on cum/out
                plateau = detect_plateau(summary["step"].to_numpy(float), y, tol, min_span, min_points, smooth)
                if plateau is not None:
                    px = float(xs[np.flatnonzero(summary["step"].to_numpy(float) == plateau.x)[0]])
                    ax.axvline(px, color=color, ls=":", lw=1.2)
                    ax.plot([px], [yn[np.flatnonzero(xs == px)[0]]], marker="v", color=color, ms=8)
        ax.set_title(title_m, fontsize=9)
        if np.nanmin(first[x].to_numpy(float)) > 0:
            ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("tokens seen" if x == "tokens_seen" else "step", fontsize=8)
        ax.set_ylabel("normalised (min-max)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or "saturation curves (dotted line / triangle = detected plateau)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # leave room for the title
    save_png(fig, path, dpi=90)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=None,
                        help=f"run folder (out/RUN) holding tables/summary.csv (default: out/{DEFAULT_RUN})")
    parser.add_argument("--compare", nargs="*", default=[], help="other run folders to overlay")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: all)")
    parser.add_argument("--tol", type=float, default=TOL, help="plateau band as a fraction of the curve's range")
    parser.add_argument("--min_span", type=float, default=MIN_SPAN, help="plateau must last this fraction of steps")
    parser.add_argument("--min_points", type=int, default=MIN_POINTS, help="plateau must hold this many checkpoints")
    parser.add_argument("--smooth", type=int, default=SMOOTH, help="rolling-median window before detection")
    add_root_argument(parser)
    args = apply_root(parser.parse_args(argv))
    if not 0 < args.tol < 1 or not 0 <= args.min_span < 1 or args.min_points < 1 or args.smooth < 1:
        raise UserError("need 0 < --tol < 1, 0 <= --min_span < 1, --min_points >= 1, --smooth >= 1")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    run_dir = Path(args.out_dir) if args.out_dir else default_run_dir()
    summary = load_summary(run_dir)
    knobs = dict(tol=args.tol, min_span=args.min_span, min_points=args.min_points, smooth=args.smooth)
    curve_columns(summary, metrics)  # validates --metrics before anything is written

    table = saturation_table(summary, **knobs)
    table_path = run_dir / "tables" / "saturation.csv"
    with atomic_path(table_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    vis = run_dir / "visualize"
    written = [table_path, plot_curves({run_dir.name: summary}, vis / "sat_curves.png", "step", metrics, **knobs),
               plot_curves({run_dir.name: summary}, vis / "sat_curves_tokens.png", "tokens_seen", metrics, **knobs)]
    if args.compare:
        runs = {run_dir.name: summary}
        for other in args.compare:
            label = Path(other).name if Path(other).name not in runs else str(other)
            runs[label] = load_summary(other)
        written.append(plot_curves(runs, vis / "sat_compare.png", "step", metrics,
                                   title="saturation curves, runs overlaid (solid=output, dashed=cumulative input)",
                                   **knobs))
    atomic_write_json(run_dir / "tables" / "saturation.json",
                      {"provenance": provenance(**knobs, method=METHOD, compare=args.compare),
                       "n_checkpoints": int(len(summary)),
                       "saturated": int(table["saturated"].sum()), "curves": int(len(table))})
    n_sat = int(table["saturated"].sum())
    print(f"{n_sat}/{len(table)} curves saturated; wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    run_main(main)
