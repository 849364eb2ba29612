"""Statistics for the durability experiment: seed-level confidence intervals, tests against the baseline,
effect sizes, and divergence between final models (next-token KL, embedding similarity after alignment).

Every comparison is over *seeds* (one value per trained run), so n is small (3 by default): intervals are
wide and the smallest reachable permutation p-value is 1/C(n_a+n_b, n_a) two-sided (0.1 for 3 vs 3). The
report states that; these functions only compute.
"""
import numpy as np
from scipy import linalg, special, stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999


def _finite(values):
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def mean_ci(values, confidence=CONFIDENCE):
    """Mean and Student-t confidence interval over seeds -> (mean, lo, hi); NaN bounds when n < 2."""
    values = _finite(values)
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, np.nan, np.nan
    sem = stats.sem(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)
    return mean, mean - half, mean + half


def curve_band(matrix, confidence=CONFIDENCE):
    """Per-column mean ± t interval of a [seeds, steps] array (NaN = missing) -> (mean, lo, hi) arrays;
    the same numbers as mean_ci on each column, vectorised."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    ok = np.isfinite(matrix)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(matrix, axis=0) / np.maximum(n, 1), np.nan)
        sd = np.sqrt(np.nansum((matrix - mean) ** 2, axis=0) / np.maximum(n - 1, 1))
        half = np.where(n > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n), np.nan)
    return mean, mean - half, mean + half


def _mean_diff(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_diff_ci(a, b, confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=0):
    """Difference of means mean(a) - mean(b) with a percentile bootstrap interval, resampling each group's
    seeds independently (scipy.stats.bootstrap) -> (diff, lo, hi). NaN bounds when a group has < 2 values."""
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return np.nan, np.nan, np.nan
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, np.nan, np.nan
    res = stats.bootstrap((a, b), _mean_diff, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def permutation_pvalue(a, b, n_resamples=N_RESAMPLES, seed=0):
    """Two-sided permutation test of equal means (labels shuffled between the groups); exact when the number
    of relabelings is at most n_resamples, which it is for seed-sized groups. NaN when a group has fewer than two
    finite values (e.g. readability of generations that are all degenerate, which is NaN by design)."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return np.nan
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0  # all values identical: no evidence of a difference
    res = stats.permutation_test((a, b), _mean_diff, permutation_type="independent", vectorized=True,
                                 n_resamples=n_resamples, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(res.pvalue)


def min_permutation_pvalue(n_a, n_b):
    """The smallest two-sided p an exact permutation test can give for these group sizes."""
    return min(1.0, 2.0 / special.comb(n_a + n_b, n_a))


def hedges_g(a, b):
    """Standardised mean difference (a - b) / pooled SD with Hedges' small-sample correction; NaN when
    undefined (a group < 2 values, or zero pooled SD with equal means), ±inf for a difference with zero SD."""
    a, b = _finite(a), _finite(b)
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return np.nan
    diff = a.mean() - b.mean()
    pooled = np.sqrt(((n_a - 1) * a.var(ddof=1) + (n_b - 1) * b.var(ddof=1)) / (n_a + n_b - 2))
    if pooled == 0:
        return np.nan if diff == 0 else float(np.sign(diff) * np.inf)
    correction = 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)
    return float(diff / pooled * correction)


def fdr_qvalues(pvalues):
    """Benjamini-Hochberg adjusted p-values (NaNs kept in place), for the many metric × condition tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def compare_to_baseline(a, b, confidence=CONFIDENCE, seed=0):
    """All end-point numbers for condition values `a` vs baseline values `b` as one dict."""
    mean, lo, hi = mean_ci(a, confidence)
    diff, diff_lo, diff_hi = bootstrap_diff_ci(a, b, confidence, seed=seed)
    return {"n_seeds": len(_finite(a)), "mean": mean, "ci_lo": lo, "ci_hi": hi,
            "diff_vs_baseline": diff, "diff_ci_lo": diff_lo, "diff_ci_hi": diff_hi,
            "p_perm": permutation_pvalue(a, b, seed=seed), "hedges_g": hedges_g(a, b)}


# ---- divergence between final models ----

def kl_divergence(logits_p, logits_q):
    """Mean over positions of KL(P || Q) in nats between next-token distributions given as logits
    [..., vocab] (same positions in both). Computed in float64 from log-softmax, so it is >= 0 and 0 for
    identical logits."""
    logp = special.log_softmax(np.asarray(logits_p, dtype=np.float64), axis=-1)
    logq = special.log_softmax(np.asarray(logits_q, dtype=np.float64), axis=-1)
    kl = np.sum(np.exp(logp) * (logp - logq), axis=-1)
    return float(np.maximum(kl, 0.0).mean())


def procrustes_similarity(emb_a, emb_b):
    """Similarity of two embedding matrices [vocab, dim] up to rotation/reflection: center each, scale to
    unit Frobenius norm, rotate A onto B with the orthogonal Procrustes solution (scipy), and return the
    alignment correlation trace(R^T A^T B) = the nuclear norm of A^T B, in [0, 1] (1 = identical up to an
    orthogonal map). Also the mean cosine between aligned rows. -> (procrustes_r, mean_row_cosine)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    rotation, scale = linalg.orthogonal_procrustes(a, b)
    aligned = a @ rotation
    cos = np.sum(aligned * b, axis=1) / (np.linalg.norm(aligned, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(scale), float(cos.mean())
