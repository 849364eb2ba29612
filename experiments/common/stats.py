"""The statistics standard of every experiment: paired comparisons over seeds.

One value per trained run; runs are paired by init seed (condition run i vs baseline run i share the weight
init and the selection). Per pair d_i = a_i - b_i, and:
  p        exact two-sided sign-flip test of mean(d) = 0 (all 2^n sign patterns up to n = EXACT_MAX_N pairs,
           seeded Monte Carlo beyond) — valid for any symmetric distribution of d under the null;
  ci       Student t-interval on mean(d);
  min_p    the smallest p the sign-flip test can give with n pairs: 2 / 2^n;
  mde      the smallest true mean difference a two-sided paired t-test at alpha detects with 80% power, given
           the measured SD of the differences (noncentral t, exact);
  g_av     Hedges' g_av = mean(d) / mean(sd_a, sd_b), small-sample corrected, with the t-interval rescaled;
  q        Benjamini-Hochberg adjusted p over the exploratory tests.
A design is "tested" only when min_p < alpha / n_primary; otherwise compare_paired says it is underpowered and
never marks a result significant. Nothing here raises on tiny or degenerate input: n < 2 gives NaN and a
reason, zero variance gives a zero-width interval.
"""
import math

import numpy as np
from scipy import optimize, special, stats

ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.8
EXACT_MAX_N = 20            # 2^20 sign patterns, enumerated in chunks
MONTE_CARLO_DRAWS = 200_000
_CHUNK_BITS = 14            # sign patterns enumerated 2^14 at a time (memory stays small at n = 20)


def _finite(values):
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def paired_differences(a, b):
    """a - b for the pairs where both are finite (a pair with a missing side carries no information)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok] - b[ok], a[ok], b[ok]


def min_attainable_p(n):
    """Smallest two-sided sign-flip p with n pairs: the observed pattern and its mirror, 2 / 2^n."""
    return 1.0 if n < 1 else min(1.0, 2.0 ** (1 - int(n)))


def sign_flip_p(diffs, seed=0, exact_max_n=EXACT_MAX_N, draws=MONTE_CARLO_DRAWS):
    """Two-sided p of the paired sign-flip (randomisation) test of mean(diffs) = 0 -> (p, method).
    Exact: the share of the 2^n sign patterns whose |sum| is at least the observed |sum| (the observed
    pattern included). Beyond exact_max_n pairs: (1 + hits) / (1 + draws) from seeded random patterns."""
    d = _finite(diffs)
    n = len(d)
    if n == 0:
        return np.nan, "none"
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, np.abs(d).sum())  # ties within rounding count as extreme
    if observed <= tol:
        return 1.0, "exact" if n <= exact_max_n else "monte carlo"
    if n <= exact_max_n:
        hits = 0
        low_bits = min(n, _CHUNK_BITS)
        low = ((np.arange(2 ** low_bits)[:, None] >> np.arange(low_bits)) & 1) * 2 - 1  # [2^k, k] of ±1
        low_sums = low @ d[:low_bits]
        for high in range(2 ** (n - low_bits)):
            signs = ((high >> np.arange(n - low_bits)) & 1) * 2 - 1
            sums = low_sums + signs @ d[low_bits:]
            hits += int(np.count_nonzero(np.abs(sums) >= observed - tol))
        return hits / 2.0 ** n, "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, draws, 20_000):
        signs = rng.choice([-1.0, 1.0], size=(min(20_000, draws - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + draws), "monte carlo"


def t_interval(diffs, confidence=CONFIDENCE):
    """Mean of the paired differences with its Student-t interval -> (mean, lo, hi). n < 2: NaN bounds;
    zero variance: lo = hi = mean."""
    d = _finite(diffs)
    if len(d) == 0:
        return np.nan, np.nan, np.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def mde_paired(sd, n, alpha=ALPHA, power=POWER):
    """Minimum detectable effect (same units as sd) of a two-sided paired t-test with n pairs at `alpha`
    and `power`: the true mean difference whose noncentral-t power equals `power`. NaN when n < 2 or sd is
    not finite; 0 when sd is 0. Divide by sd for the effect in SD units (≈ 1.4 SD at n = 6, alpha 0.05)."""
    if n is None or n < 2 or sd is None or not np.isfinite(sd) or not 0 < alpha < 1:
        return np.nan
    if sd == 0:
        return 0.0
    df = int(n) - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def power_gap(ncp):
        lower_tail = np.nan_to_num(stats.nct.cdf(-crit, df, ncp))  # scipy's nct gives NaN for ~0 tails
        return float(np.nan_to_num(stats.nct.sf(crit, df, ncp), nan=1.0)) + lower_tail - power

    upper = crit + 1.0
    while power_gap(upper) < 0:  # n = 2 needs a large noncentrality (critical t at df 1 is 12.7)
        upper *= 2
        if upper > 1e6:
            return np.nan
    ncp = optimize.brentq(power_gap, 0.0, upper, xtol=1e-10)
    return float(ncp * sd / math.sqrt(n))


def _small_sample_correction(df):
    """Hedges' exact J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)); 1 for large df."""
    if df < 2:
        return np.nan
    return float(math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2))


def hedges_g_av(a, b, confidence=CONFIDENCE):
    """Hedges' g_av for paired values (Lakens 2013): mean(a - b) / ((sd_a + sd_b) / 2) times J(2(n-1)), with
    the paired t-interval of the mean difference on the same scale -> (g, lo, hi). NaN when n < 2 or both
    groups have zero spread (the standardiser is 0)."""
    d, a, b = paired_differences(a, b)
    n = len(d)
    if n < 2:
        return np.nan, np.nan, np.nan
    sd_av = (a.std(ddof=1) + b.std(ddof=1)) / 2
    if not sd_av > 0:
        return np.nan, np.nan, np.nan
    scale = _small_sample_correction(2 * (n - 1)) / sd_av
    mean, lo, hi = t_interval(d, confidence)
    return float(mean * scale), float(lo * scale), float(hi * scale)


def bh_q(pvalues):
    """Benjamini-Hochberg adjusted p-values (q), NaNs kept in place and not counted."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        scaled = p[order] * m / np.arange(1, m + 1)
        q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def design_power(n_pairs, alpha=ALPHA, n_primary=1):
    """(tested, reason): can n_pairs pairs reject at alpha / n_primary at all?"""
    threshold = alpha / max(1, n_primary)
    min_p = min_attainable_p(n_pairs)
    if n_pairs < 2:
        return False, f"{n_pairs} pair(s): no test or interval is possible (need ≥ 2, and ≥ " \
                      f"{needed_pairs(alpha, n_primary)} to reach p < {threshold:.3g})"
    if min_p >= threshold:
        return False, f"underpowered: with {n_pairs} pairs the smallest attainable p is {min_p:.3g} ≥ " \
                      f"alpha/n_primary = {threshold:.3g}; use ≥ {needed_pairs(alpha, n_primary)} pairs"
    return True, f"min attainable p {min_p:.3g} < {threshold:.3g}"


def needed_pairs(alpha=ALPHA, n_primary=1):
    """Fewest pairs whose minimum attainable sign-flip p is below alpha / n_primary."""
    threshold = alpha / max(1, n_primary)
    return int(math.floor(1 - math.log2(threshold))) + 1 if threshold < 1 else 1


def compare_paired(x, alpha=ALPHA, n_primary=1, confidence=CONFIDENCE, power=POWER, seed=0):
    """Everything reported for one paired comparison, as one row (dict).

    x: the paired differences, or a pair (a, b) of equal-length sequences (then d = a - b and g_av is
    computed). Keys: n, mean_a, mean_b, diff, ci_lo, ci_hi, sd_diff, p, p_method, min_p, threshold
    (= alpha / n_primary), mde (80% power, units of the outcome), mde_sd (in SD of the differences), g_av,
    g_ci_lo, g_ci_hi, tested (the design can reject at threshold), significant (tested and p < threshold),
    reason."""
    if isinstance(x, tuple) and len(x) == 2:
        d, a, b = paired_differences(*x)
        g, g_lo, g_hi = hedges_g_av(a, b, confidence)
        mean_a, mean_b = (float(a.mean()), float(b.mean())) if len(d) else (np.nan, np.nan)
    else:
        d = _finite(x)
        g = g_lo = g_hi = mean_a = mean_b = np.nan
    n = len(d)
    diff, lo, hi = t_interval(d, confidence)
    sd = float(d.std(ddof=1)) if n >= 2 else np.nan
    p, method = sign_flip_p(d, seed=seed) if n >= 2 else (np.nan, "none")
    threshold = alpha / max(1, n_primary)
    tested, reason = design_power(n, alpha, n_primary)
    if tested and sd == 0:
        reason += "; the differences have zero spread (interval of width 0)"
    mde = mde_paired(sd, n, threshold, power)
    return {"n": n, "mean_a": mean_a, "mean_b": mean_b, "diff": diff, "ci_lo": lo, "ci_hi": hi, "sd_diff": sd,
            "p": p, "p_method": method, "min_p": min_attainable_p(n), "threshold": threshold, "mde": mde,
            "mde_sd": mde / sd if sd and np.isfinite(sd) and sd > 0 else np.nan,
            "g_av": g, "g_ci_lo": g_lo, "g_ci_hi": g_hi, "tested": bool(tested),
            "significant": bool(tested and np.isfinite(p) and p < threshold), "reason": reason}


def crossed_variance(values):
    """Variance components of a crossed init × order grid without replication (values[i, j]: init seed i,
    data-order seed j), two-way random-effects ANOVA: {sd_init, sd_order, sd_residual, n_init, n_order}.
    Components estimated below zero are reported as 0 (no detectable variance from that source)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2 or not np.isfinite(v).all():
        return {"sd_init": np.nan, "sd_order": np.nan, "sd_residual": np.nan,
                "n_init": int(v.shape[0]) if v.ndim == 2 else 0, "n_order": int(v.shape[1]) if v.ndim == 2 else 0}
    r, c = v.shape
    grand = v.mean()
    rows, cols = v.mean(axis=1), v.mean(axis=0)
    ms_init = c * np.sum((rows - grand) ** 2) / (r - 1)
    ms_order = r * np.sum((cols - grand) ** 2) / (c - 1)
    resid = v - rows[:, None] - cols[None, :] + grand
    ms_resid = np.sum(resid ** 2) / ((r - 1) * (c - 1))
    return {"sd_init": float(math.sqrt(max(0.0, (ms_init - ms_resid) / c))),
            "sd_order": float(math.sqrt(max(0.0, (ms_order - ms_resid) / r))),
            "sd_residual": float(math.sqrt(ms_resid)), "n_init": r, "n_order": c}


def mean_band(matrix, confidence=CONFIDENCE):
    """Per-column mean and t-interval of a [seeds, steps] array (NaN = missing) -> (mean, lo, hi) arrays."""
    m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    n = np.isfinite(m).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(m, axis=0) / np.maximum(n, 1), np.nan)
        sd = np.sqrt(np.nansum((m - mean) ** 2, axis=0) / np.maximum(n - 1, 1))
        half = np.where(n > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n), np.nan)
    return mean, mean - half, mean + half
