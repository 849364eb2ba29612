"""How similar two trained models are: next-token KL on shared inputs, embedding similarity up to rotation
(orthogonal Procrustes) and linear CKA of hidden states. 1 (or KL 0) = the same model up to the symmetry the
measure ignores; a model compared with an untrained one gives the null (tests/test_durability.py)."""
import numpy as np
from scipy import linalg, special


def kl_divergence(logits_p, logits_q):
    """Mean over positions of KL(P || Q) in nats between next-token distributions given as logits
    [..., vocab] (same positions in both). float64 log-softmax, so >= 0 and 0 for identical logits."""
    logp = special.log_softmax(np.asarray(logits_p, dtype=np.float64), axis=-1)
    logq = special.log_softmax(np.asarray(logits_q, dtype=np.float64), axis=-1)
    kl = np.sum(np.exp(logp) * (logp - logq), axis=-1)
    return float(np.maximum(kl, 0.0).mean())


def symmetric_kl(logits_p, logits_q):
    return 0.5 * (kl_divergence(logits_p, logits_q) + kl_divergence(logits_q, logits_p))


def procrustes_similarity(emb_a, emb_b):
    """Similarity of two matrices [rows, dim] up to rotation/reflection, shift and scale: center, scale to unit
    Frobenius norm, rotate A onto B (scipy's orthogonal Procrustes); returns the alignment correlation (the
    nuclear norm of A^T B) in [0, 1] and the mean cosine of aligned rows -> (r, mean_row_cosine)."""
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


def linear_cka(x, y):
    """Linear centered kernel alignment (Kornblith et al. 2019) of two representations [n, d1], [n, d2] of the
    same n inputs: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centering; in [0, 1], invariant to rotation
    and isotropic scale, 1 = the same up to those."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same inputs: {len(x)} vs {len(y)} rows")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denom) if denom > 0 else np.nan
