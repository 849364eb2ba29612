"""Noise-aware saturation: is a metric curve still improving, has it plateaued (and from which step), is it flat,
or is it too noisy to tell?

Every curve is judged on log10(step) (checkpoints are log-spaced early, and learning curves change on a log
scale). The rule, per curve (`classify_curve`):

1. noise sigma of one checkpoint's value. Several runs (seeds) of the same curve: the pooled across-run
   variance / number of runs (the noise of the mean curve, which is what is classified). One run: Gasser,
   Sroka and Jennen-Steinmetz's (1986) pseudo-residuals on the log-step axis (each interior point's deviation
   from the straight line through its two neighbours, scaled to unit variance); their root mean square
   without the largest one (a knee makes one large residual), rescaled to be unbiased for Gaussian noise. A
   smooth trend leaves them near zero, so they measure checkpoint-to-checkpoint scatter. Optional per-point
   counts (stories in an input interval) make a point's noise proportional to 1/sqrt(count).
2. shape: the best "ramp" y = level + slope * clip(log10 step, c0, c), by weighted least squares over a grid
   of knots c0 < c: flat, then a straight change in log-step, then flat. c is the plateau start (the knee);
   c0 lets the curve idle first (a loss curve does little in its first steps).
3. flat: a constant curve, or one the ramp explains no better than a constant beyond noise:
   (SSE_const - SSE_ramp) / sigma^2 < CHI2_FLAT (pure noise exceeds it in ~2% of curves, tests).
4. too_noisy: fewer than MIN_POINTS checkpoints, a real but small fitted change (< SNR_MIN sigma), or fewer
   than MIN_TAIL_POINTS checkpoints after the knee.
5. improving: the knee lies in the last MIN_TAIL_SPAN of the run's log-step span, or a broken line that
   keeps moving after its knee (in the direction of the change, knee no later than the plateau's latest
   start) fits better than the flat tail by more than CHI2_TAIL sigma^2.
6. otherwise plateaued from step 10**c (the fitted knee; it can lie between checkpoints). A curve that turns
   back after its knee (e.g. a score that peaks) is plateaued too, and its reason says so.

Measured on synthetic curves (tests/test_saturation.py; README, section 3): change / noise = 10 on the demo's
19 checkpoints: the knee within 15% of the log-step span in >= 90% of curves; still improving by >= 3 noise
sd over the last quarter of the log-steps: called plateaued in <= 5%. At change / noise = 3 most curves cannot
be told from noise on 19 checkpoints (see the README table).
"""
import warnings
from dataclasses import dataclass, field

import numpy as np

CLASSES = ("improving", "plateaued", "flat", "too_noisy")
MIN_POINTS = 5        # fewer finite checkpoints: too_noisy (no knee can be placed)
MIN_TAIL_SPAN = 0.15  # a plateau lasts at least this fraction of the run's log10-step span ...
MIN_TAIL_POINTS = 3   # ... and at least this many checkpoints
CHI2_TAIL = 4.0       # a knee with a moving tail beats the flat tail by this (sigma^2): improving
CHI2_FLAT = 16.0      # ramp vs constant, in units of sigma^2: below = flat (pure noise exceeds it in ~2%)
SNR_MIN = 2.0         # fitted change / sigma below this (but not flat): too_noisy
KNOT_GRID = 24        # knots: the checkpoints' log-steps plus this many evenly spaced ones
CONSTANT_RTOL = 1e-9  # a curve whose range is below this x its magnitude is constant
SIGMA_FLOOR = 1e-3    # sigma is at least this x the curve's range (an exactly smooth curve has sigma 0)
METHOD = (f"ramp-on-log-step(min_tail_span={MIN_TAIL_SPAN},chi2_tail={CHI2_TAIL},chi2_flat={CHI2_FLAT},"
          f"snr_min={SNR_MIN})")


@dataclass
class Saturation:
    cls: str                            # one of CLASSES
    plateau_step: float = np.nan        # the knee (step) when plateaued
    noise: float = np.nan               # sigma of one checkpoint's value (of the mean curve with several runs)
    change: float = np.nan              # fitted total change of the ramp (signed, curve units)
    snr: float = np.nan                 # |change| / noise
    tail_chi2: float = np.nan           # fit gained by letting the curve keep moving after the knee (sigma^2)
    n_points: int = 0
    reason: str = ""
    fit: dict = field(default_factory=dict, repr=False)  # ramp knots (log10 step), level, slope: for plotting


def pseudo_residual_noise(u, y, rel_var=None):
    """Sigma of y around a smooth trend in u (sorted, distinct) from Gasser et al.'s pseudo-residuals: their
    root mean square with the largest one left out (a single knee in the curve makes one large residual),
    rescaled so that pure Gaussian noise gives sigma. rel_var: relative variance of each point (default 1).
    NaN with fewer than 4 points."""
    u, y = np.asarray(u, float), np.asarray(y, float)
    v = np.ones_like(y) if rel_var is None else np.asarray(rel_var, float)
    if len(y) < 4:
        return np.nan
    a = (u[2:] - u[1:-1]) / (u[2:] - u[:-2])
    b = 1.0 - a
    e2 = np.sort(((a * y[:-2] + b * y[2:] - y[1:-1]) / np.sqrt(a ** 2 * v[:-2] + b ** 2 * v[2:] + v[1:-1])) ** 2)
    m = len(e2)
    return float(np.sqrt(e2[:-1].mean() / _drop_max_factor(m)))


def _drop_max_factor(m):
    """E[sum of m chi2(1) draws less their maximum] / (m - 1): the mean square left after dropping the largest."""
    from scipy import integrate, stats
    # E[max] = integral of P(max > x) dx over x >= 0
    e_max = integrate.quad(lambda x: 1.0 - stats.chi2.cdf(x, 1) ** m, 0, np.inf)[0]
    return (m - e_max) / (m - 1)


def _ramp_fits(u, y, w, knots):
    """Weighted least squares of y on clip(u, c0, c) for every knot pair c0 < c: (c0, c, level, slope, sse) of
    the best pair, and the SSE of a constant."""
    c0, c1 = np.meshgrid(knots, knots, indexing="ij")
    keep = c0 < c1
    c0, c1 = c0[keep], c1[keep]
    r = np.clip(u[None, :], c0[:, None], c1[:, None])                      # [pairs, n]
    sw = w.sum()
    my = (w * y).sum() / sw
    mr = (r * w).sum(1) / sw
    dr = r - mr[:, None]
    srr = (w * dr ** 2).sum(1)
    sry = (w * dr * (y - my)).sum(1)
    syy = float((w * (y - my) ** 2).sum())
    ok = srr > 1e-12 * max(1.0, float(srr.max()))
    sse = np.where(ok, syy - np.where(ok, sry ** 2 / np.where(ok, srr, 1.0), 0.0), syy)
    best = int(np.argmin(sse))
    slope = float(sry[best] / srr[best]) if ok[best] else 0.0
    level = float(my - slope * mr[best])   # y = level + slope * clip(u, c0, c)
    return float(c0[best]), float(c1[best]), level, slope, float(max(sse[best], 0.0)), syy


def _broken_fit(u, y, w, knots, direction, last_knee):
    """Best weighted fit of y = level + s1 clip(u, c0, c) + s2 max(u - c, 0) over knot pairs c0 < c <= last_knee
    with the tail slope s2 in `direction` (the improvement goes on after the knee): (sse, c, s2)."""
    c0, c1 = np.meshgrid(knots, knots, indexing="ij")
    keep = (c0 < c1) & (c1 <= last_knee)
    c0, c1 = c0[keep], c1[keep]
    r1 = np.clip(u[None, :], c0[:, None], c1[:, None])
    r2 = np.maximum(u[None, :] - c1[:, None], 0.0)
    sw = w.sum()
    y0 = y - (w * y).sum() / sw
    r1 = r1 - (r1 * w).sum(1, keepdims=True) / sw
    r2 = r2 - (r2 * w).sum(1, keepdims=True) / sw
    a11, a22, a12 = (w * r1 * r1).sum(1), (w * r2 * r2).sum(1), (w * r1 * r2).sum(1)
    b1, b2 = (w * r1 * y0).sum(1), (w * r2 * y0).sum(1)
    det = a11 * a22 - a12 ** 2
    ok = det > 1e-12 * max(1.0, float(np.abs(det).max()))
    det = np.where(ok, det, 1.0)
    s1, s2 = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    sse = (w * y0 ** 2).sum() - (s1 * b1 + s2 * b2)
    sse = np.where(ok & (np.sign(s2) == direction), sse, np.inf)
    best = int(np.argmin(sse))
    return float(max(sse[best], 0.0)), float(c1[best]), float(s2[best])


def classify_curve(steps, values, counts=None):
    """Saturation of one curve. values: [n] for one run, or [runs, n] for several runs (seeds) on the same
    steps, classified on their mean with the across-run noise. counts: optional per-point sample sizes
    (noise ~ 1/sqrt(count)). Points with a non-finite value or step <= 0 are dropped."""
    steps = np.asarray(steps, float)
    values = np.asarray(values, float)
    multi = values.ndim == 2 and values.shape[0] > 1
    runs = values if values.ndim == 2 else values[None, :]
    with warnings.catch_warnings():  # a step no run has is NaN, and dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        y = np.nanmean(runs, 0)
    cnt = np.ones_like(y) if counts is None else np.asarray(counts, float)
    keep = np.isfinite(steps) & (steps > 0) & np.isfinite(y) & np.isfinite(cnt) & (cnt > 0)
    steps, y, cnt, runs = steps[keep], y[keep], cnt[keep], runs[:, keep]
    order = np.argsort(steps, kind="stable")
    steps, y, cnt, runs = steps[order], y[order], cnt[order], runs[:, order]
    steps, first = np.unique(steps, return_index=True)  # a repeated step keeps its first value
    y, cnt, runs = y[first], cnt[first], runs[:, first]
    n = len(y)
    if n == 0:
        return Saturation("too_noisy", n_points=0, reason="no finite values")
    span = float(np.ptp(y))
    if span <= CONSTANT_RTOL * max(1.0, float(np.abs(y).max())):
        return Saturation("flat", noise=0.0, change=0.0, n_points=n, reason="constant")
    if n < MIN_POINTS:
        return Saturation("too_noisy", n_points=n, reason=f"only {n} checkpoints (need {MIN_POINTS})")
    u = np.log10(steps)
    rel_var = np.median(cnt) / cnt
    w = 1.0 / rel_var
    if multi:
        per_run = np.isfinite(runs).sum(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            var = np.nanvar(runs, 0, ddof=1)
        ok = per_run > 1
        sigma = float(np.sqrt(np.nanmean(var[ok] / per_run[ok]))) if ok.any() else np.nan
        source = f"spread across {runs.shape[0]} runs"
    else:
        sigma = pseudo_residual_noise(u, y, rel_var)
        source = "pseudo-residuals"
    sigma = max(sigma if np.isfinite(sigma) else 0.0, SIGMA_FLOOR * span)

    knots = np.unique(np.concatenate([u, np.linspace(u[0], u[-1], KNOT_GRID)]))
    c0, c, level, slope, sse, sse_const = _ramp_fits(u, y, w, knots)
    c0, c = max(c0, u[0]), min(c, u[-1])
    change = slope * (c - c0)
    fit = {"c0": c0, "c": c, "level": level, "slope": slope}
    result = dict(noise=sigma, change=change, snr=abs(change) / sigma, n_points=n, fit=fit)
    chi2 = (sse_const - sse) / sigma ** 2
    if chi2 < CHI2_FLAT:
        return Saturation("flat", **result, reason=f"no change beyond noise ({source}; chi2 {chi2:.1f})")
    if abs(change) < SNR_MIN * sigma:
        return Saturation("too_noisy", **result, reason=f"change {abs(change) / sigma:.1f} sigma < {SNR_MIN}")
    total = u[-1] - u[0]
    if c > u[-1] - MIN_TAIL_SPAN * total:
        return Saturation("improving", **result, reason="the change runs into the last checkpoints")
    if (u >= c).sum() < MIN_TAIL_POINTS:
        return Saturation("too_noisy", **result, reason=f"fewer than {MIN_TAIL_POINTS} checkpoints after the knee")
    # does a line that keeps moving after its knee fit better than the flat tail, beyond noise? (a tail slope
    # against the change is no better than a flat one, so the gain is >= 0)
    last_knee = u[-1] - MIN_TAIL_SPAN * total
    sse_on, _, _ = _broken_fit(u, y, w, knots, np.sign(change), last_knee)
    gain = max(0.0, (sse - sse_on) / sigma ** 2) if np.isfinite(sse_on) else 0.0
    result["tail_chi2"] = gain
    if gain > CHI2_TAIL:
        return Saturation("improving", **result, reason=f"still moving after the knee (chi2 {gain:.1f})")
    sse_back, _, _ = _broken_fit(u, y, w, knots, -np.sign(change), last_knee)
    back = (sse - sse_back) / sigma ** 2 if np.isfinite(sse_back) else 0.0
    note = f"; turns back after it (chi2 {back:.1f})" if back > CHI2_TAIL else ""
    return Saturation("plateaued", plateau_step=float(10 ** c), **result,
                      reason=f"no further change after the knee (chi2 {gain:.1f}, noise from {source}){note}")

def ramp_curve(fit, steps):
    """The fitted ramp at these steps (for plotting)."""
    u = np.log10(np.asarray(steps, float))
    return fit["level"] + fit["slope"] * np.clip(u, fit["c0"], fit["c"])


# ---------------------------------------------------------------------------------------------------------
# summary.csv: which columns are curves, how input and output pair up, one table row per curve

NON_METRIC = {"step", "tokens_seen", "interval_start", "interval_end", "n_segments_interval", "n_tokens_interval", "n_tokens_cum",
              "n_generations", "n_prompts", "icl_stories"}
# output-only columns worth a panel (besides out_<metric>)
OUTPUT_EXTRA = ["val_loss", "icl_score", "icl_context_gain", "induction_max", "out_bleu", "out_rougeL",
                "out_prefix_token_acc", "out_first_divergence", "bias_seen", "bias_amplification",
                "gen_stereo_rate", "tox_mass"]
CI_SUFFIXES = ("_lo", "_hi")  # <column>_lo / <column>_hi: a 95% CI of <column> (drawn as a band)
TABLE_COLUMNS = ["metric", "side", "column", "class", "plateau_step", "plateau_tokens", "noise", "change", "snr",
                 "tail_chi2", "n_points", "n_runs", "saturated", "reason", "method"]


def load_summary(run_dir):
    """The run's eval summary (one row per checkpoint, sorted by step)."""
    import pandas as pd
    from pathlib import Path
    from common.errors import UserError
    from common.paths import require
    path = require(Path(run_dir) / "tables" / "summary.csv", "eval summary",
                   f"run `python eval.py --out_dir {run_dir}` first")
    try:
        summary = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt eval summary {path} ({e.__class__.__name__}) — re-run eval.py --rebuild")
    if "step" not in summary.columns or summary.empty:
        raise UserError(f"{path} has no checkpoint rows — re-run `python eval.py --out_dir {run_dir}`")
    return summary.sort_values("step").reset_index(drop=True)


def is_ci_column(col, columns):
    return col.endswith(CI_SUFFIXES) and col[:-3] in columns


def metric_names(summary):
    """Metrics with both an input (in_/cum_) and an output (out_) column, in summary order."""
    return [c[4:] for c in summary.columns if c.startswith("out_") and not is_ci_column(c, summary.columns)
            and (f"in_{c[4:]}" in summary.columns or f"cum_{c[4:]}" in summary.columns)]


def curve_columns(summary, metrics=None):
    """[(panel title, output column, input-interval column or None, cumulative column or None)]: the named
    metrics, or every paired metric plus the output-only columns in OUTPUT_EXTRA."""
    from common.errors import UserError
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


def curve_sides(summary):
    """[(metric, side, column)] of every curve classified: output = out_* and the other per-checkpoint columns
    (val_loss, probes); input = in_* (the stories of each interval between checkpoints). The cumulative cum_*
    means are running averages, not a per-interval signal, so they are drawn but not classified."""
    import pandas as pd
    out = []
    for col in summary.columns:
        if col in NON_METRIC or col.startswith(("cum_", "ref_")) or is_ci_column(col, summary.columns):
            continue
        if not pd.api.types.is_numeric_dtype(summary[col]):
            continue
        side = "input" if col.startswith("in_") else "output"
        out.append((col[3:] if side == "input" else (col[4:] if col.startswith("out_") else col), side, col))
    return out


def _interp_log(x_new, x, y):
    """y at x_new, log10(y) linear in log10(x) (tokens seen at a plateau step between checkpoints)."""
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not np.isfinite(x_new) or keep.sum() < 1:
        return np.nan
    return float(10 ** np.interp(np.log10(x_new), np.log10(x[keep]), np.log10(y[keep])))


def saturation_table(summary, seeds=()):
    """One row per curve (TABLE_COLUMNS). seeds: summaries of the same run with other seeds; when given, each
    curve is classified on the mean over the runs with the across-run spread as its noise."""
    import pandas as pd
    steps = summary["step"].to_numpy(float)
    tokens = summary["tokens_seen"].to_numpy(float) if "tokens_seen" in summary else np.full(len(steps), np.nan)
    counts = summary["n_tokens_interval"].to_numpy(float) if "n_tokens_interval" in summary else None
    rows = []
    for name, side, col in curve_sides(summary):
        y = pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
        if not np.isfinite(y).any():
            continue
        values = [y]
        for other in seeds:
            if col in other:
                aligned = other.set_index("step")[col].reindex(steps)
                values.append(pd.to_numeric(aligned, errors="coerce").to_numpy(float))
        n_runs = len(values)
        values = np.vstack(values) if n_runs > 1 else y
        res = classify_curve(steps, values, counts if side == "input" else None)
        rows.append({"metric": name, "side": side, "column": col, "class": res.cls,
                     "plateau_step": round(res.plateau_step, 1) if np.isfinite(res.plateau_step) else np.nan,
                     "plateau_tokens": np.round(_interp_log(res.plateau_step, steps, tokens)),
                     "noise": res.noise, "change": res.change, "snr": res.snr, "tail_chi2": res.tail_chi2,
                     "n_points": res.n_points, "n_runs": n_runs,
                     "saturated": res.cls == "plateaued", "reason": res.reason, "method": METHOD})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
