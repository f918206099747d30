"""How a representation is spread, as numbers: the covariance spectrum and effective rank
(dimensional collapse), and intra- vs inter-class cosine similarity as an AUROC (separation).

Host-side numpy on features (N, D) and sampled pairs; `evaluation.analysis` gathers these with the
gate statistics into one report.
"""
from __future__ import annotations
import math
from typing import Any

import numpy as np

ArrayLike = Any  # np.ndarray | jax.Array


def unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Host-side L2 normalisation of (..., D) rows in x's own dtype; all-zero rows stay zero.

  numpy, not `losses.l2_normalize`: analyses run on host arrays, some in float64.
  """
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------------------------
# Dimensional collapse
# ----------------------------------------------------------------------------------------------
def covariance_spectrum(features: ArrayLike, *, chunk: int = 8192) -> np.ndarray:
  """Singular values of the centred embedding covariance, descending.

  Args:
    features: (N, D).
    chunk: rows per float32 product; the D x D sum accumulates in float64, so N x D is
      never copied to float64 (60k x 2048 would be 1 GB).

  Returns:
    (D,) float64, >= 0 (covariance is PSD: its singular values are its eigenvalues).
  """
  x = np.asarray(features)
  n = x.shape[0]
  mean = x.mean(0, dtype=np.float64).astype(np.float32)
  cov = np.zeros((x.shape[1],) * 2)
  for start in range(0, n, chunk):
    xc = x[start:start + chunk].astype(np.float32) - mean
    cov += xc.T @ xc
  cov /= max(n - 1, 1)
  return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def effective_rank_from_spectrum(spectrum: ArrayLike) -> float:
  """exp(H(p)), p = σ / Σσ (Roy & Vetterli 2007): 1 for rank one, D for a flat spectrum."""
  s = np.asarray(spectrum, np.float64)
  if s.sum() <= 0:
    return 0.0  # all features identical: nothing spans any direction
  p = s[s > 0] / s.sum()
  return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(features: ArrayLike) -> float:
  """Effective rank of the centred covariance of (N, D) features; see above."""
  return effective_rank_from_spectrum(covariance_spectrum(features))


# ----------------------------------------------------------------------------------------------
# Intra- vs inter-class similarity
# ----------------------------------------------------------------------------------------------
def auroc(pos: ArrayLike, neg: ArrayLike) -> float:
  """P(pos > neg) + ½ P(pos = neg) (Mann-Whitney U with mid-ranks); NaN if either is empty."""
  pos, neg = np.ravel(np.asarray(pos, np.float64)), np.ravel(np.asarray(neg, np.float64))
  if not pos.size or not neg.size:
    return math.nan
  allv = np.concatenate([pos, neg])
  _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
  midrank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
  u = midrank[inv[:pos.size]].sum() - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def sample_pairs(labels: ArrayLike, num_pairs: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Uniform random same-class and different-class pairs of distinct examples.

  Returns:
    (intra, inter), each (num_pairs, 2) int64 indices into labels; intra anchors are uniform
    over examples whose class has >= 2 members and the partner uniform over its other class
    members; inter anchors are uniform and the partner uniform over other classes' examples.
    Either is (0, 2) when no such pair exists.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind="stable")
  _, cls, counts = np.unique(labels, return_inverse=True, return_counts=True)
  starts = np.cumsum(counts) - counts
  pos_in_class = np.empty(n, np.int64)
  pos_in_class[order] = np.arange(n) - starts[cls[order]]
  intra = inter = np.zeros((0, 2), np.int64)
  eligible = np.flatnonzero(counts[cls] >= 2)
  if eligible.size:
    i = rng.choice(eligible, num_pairs)
    off = rng.integers(0, counts[cls[i]] - 1)
    off += off >= pos_in_class[i]  # skip the anchor itself
    intra = np.stack([i, order[starts[cls[i]] + off]], 1)
  if counts.size >= 2:
    i = rng.integers(0, n, num_pairs)
    r = rng.integers(0, n - counts[cls[i]])
    r += (r >= starts[cls[i]]) * counts[cls[i]]  # skip the anchor's class block
    inter = np.stack([i, order[r]], 1)
  return intra, inter


def _pair_cosine(z: np.ndarray, pairs: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
  a, b = z[pairs[:, 0]], z[pairs[:, 1]]
  if gate is not None:
    a, b = a * gate, b * gate
  return (unit_rows(a) * unit_rows(b)).sum(1)


def intra_inter_similarity(features: ArrayLike, labels: ArrayLike, *,
                           gates: ArrayLike | None = None, num_pairs: int = 20000,
                           seed: int = 0, bins: int = 50) -> dict[str, Any]:
  """Cosine similarity of same-class vs different-class pairs, as AUROC and histograms.

  Args:
    features: (N, D); labels: (N,) ints.
    gates: None (full space); (C, D) class gates — a pair (i, j) is compared in the anchor's
      class subspace, cos(g(y_i) ⊙ z_i, g(y_i) ⊙ z_j) (the "cosine" logit of the loss); or
      (C, C, D) pair gates — cos(g(y_i, y_j) ⊙ z_i, g(y_i, y_j) ⊙ z_j).
    num_pairs: sampled pairs of each kind (seeded), so the cost is O(num_pairs * D).
    seed: pair sampling seed.
    bins: histogram bins over [-1, 1].

  Returns:
    {"auroc": P(intra > inter), "intra_mean", "intra_std", "inter_mean", "inter_std",
     "num_pairs", "hist_edges", "intra_hist", "inter_hist"}.
  """
  z = np.asarray(features, np.float32)
  labels = np.asarray(labels).astype(np.int64)
  sims = []
  for pairs in sample_pairs(labels, num_pairs, seed):
    gate = None
    if gates is not None:
      g = np.asarray(gates, np.float32)
      ya, yb = labels[pairs[:, 0]], labels[pairs[:, 1]]
      gate = g[ya] if g.ndim == 2 else g[ya, yb]
    sims.append(_pair_cosine(z, pairs, gate))
  intra, inter = sims
  edges = np.linspace(-1.0, 1.0, bins + 1)
  return {
      "auroc": auroc(intra, inter),
      "intra_mean": finite_mean(intra), "intra_std": finite_mean(intra, np.std),
      "inter_mean": finite_mean(inter), "inter_std": finite_mean(inter, np.std),
      "num_pairs": int(num_pairs), "hist_edges": edges.tolist(),
      "intra_hist": np.histogram(np.clip(intra, -1, 1), edges)[0].tolist(),
      "inter_hist": np.histogram(np.clip(inter, -1, 1), edges)[0].tolist(),
  }


def finite_mean(v, fn=np.mean) -> float:
  """fn(v) as a float, NaN (-> null in JSON) for an empty v instead of a numpy warning."""
  return float(fn(v)) if np.size(v) else math.nan
