"""Analyses of a trained model as numbers (pictures in `evaluation.plots`, from the same data).

The paper's open questions (docs/method.md, "Analyses"): are gates binary switches or a smooth
scaling (`gate_statistics`); do similar class pairs get larger subspaces (`pair_size_by_group`);
do gate similarities recover known class groups better than class-mean embeddings
(`group_recovery`); plus collapse and separation (`evaluation.geometry`). `analyze` gathers them
into one JSON-serialisable dict. Host-side numpy on small objects (C x C, D x D, sampled pairs);
matplotlib is imported only when PNGs are asked for.
"""
from __future__ import annotations
from collections.abc import Mapping, Sequence
import math
from typing import Any

import numpy as np

from simlap.evaluation import geometry

_mean, _auroc = geometry.finite_mean, geometry.auroc

ArrayLike = Any  # np.ndarray | jax.Array
Groups = Sequence[Sequence[int]]

def coarse_groups(fine_labels: ArrayLike, coarse_labels: ArrayLike) -> list[list[int]]:
  """Groups of fine classes sharing a coarse label (e.g. CIFAR-100's 20 superclasses).

  Args:
    fine_labels, coarse_labels: (N,) ints, the two labels of the same N examples.

  Returns:
    One sorted list of fine class indices per coarse class, ordered by coarse index.
  """
  pairs = np.unique(np.stack([np.asarray(coarse_labels), np.asarray(fine_labels)], 1), axis=0)
  if len(np.unique(pairs[:, 1])) != len(pairs):
    raise ValueError("a fine label appears under more than one coarse label")
  return [sorted(int(f) for f in pairs[pairs[:, 0] == c, 1]) for c in np.unique(pairs[:, 0])]


# ----------------------------------------------------------------------------------------------
# Gates
# ----------------------------------------------------------------------------------------------
def gate_statistics(gates: ArrayLike, *, bins: int = 10) -> dict[str, Any]:
  """Summary of gate values g in [0, 1].

  Args:
    gates: (..., D) — class gates (C, D), pair gates (P, D) or (C, C, D).
    bins: histogram bins over [0, 1].

  Returns:
    {"num_gates": rows, "dim": D, "activation_mean"/"activation_std": Σ_d g per row (subspace
     size, in dims), "activation_frac_mean": the same divided by D, "frac_open": fraction of
     g > 0.5, "frac_near_zero"/"frac_near_one": g < 0.1 / g > 0.9, "frac_intermediate":
     0.1 <= g <= 0.9 — the sparsity verdict: ~0 means binary switches, ~1 a smooth scaling,
     "entropy_bits_mean": mean Bernoulli entropy in bits (0 binary, 1 at g = 0.5),
     "hist_edges": bins + 1 floats, "hist_counts": bins ints}.
  """
  g = np.asarray(gates, np.float64)
  g = g.reshape(-1, g.shape[-1])
  act = g.sum(-1)
  p = np.clip(g, 1e-12, 1 - 1e-12)
  ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  counts, edges = np.histogram(np.clip(g, 0, 1), bins=bins, range=(0.0, 1.0))
  return {
      "num_gates": int(g.shape[0]), "dim": int(g.shape[1]),
      "activation_mean": float(act.mean()), "activation_std": float(act.std()),
      "activation_frac_mean": float(act.mean() / g.shape[1]),
      "frac_open": float(np.mean(g > 0.5)),
      "frac_near_zero": float(np.mean(g < 0.1)), "frac_near_one": float(np.mean(g > 0.9)),
      "frac_intermediate": float(np.mean((g >= 0.1) & (g <= 0.9))),
      "entropy_bits_mean": float(ent.mean()),
      "hist_edges": edges.tolist(), "hist_counts": counts.tolist(),
  }


def _same_group(num_classes: int, groups: Groups) -> np.ndarray:
  """(C, C) bool: i != j and both in one group."""
  gid = np.full(num_classes, -1)
  for n, grp in enumerate(groups):
    gid[list(grp)] = n
  same = (gid[:, None] == gid[None, :]) & (gid[:, None] >= 0)
  np.fill_diagonal(same, False)
  return same


def pair_size_by_group(pair_sizes: ArrayLike, groups: Groups) -> dict[str, Any]:
  """Subspace size of class pairs in one known group vs. all other pairs.

  Args:
    pair_sizes: (C, C) Σ_d g(i, j) (symmetric for the "mean" fuse; both triangles are used).
    groups: class-index groups; classes in no group only form "across" pairs.

  Returns:
    {"offdiag_mean", "offdiag_std" (all i != j), "identical_mean" (diagonal, g(y, y)),
     "within_mean", "across_mean", "num_within", "num_across" (ordered off-diagonal pairs),
     "within_vs_across_auroc": probability that a within-group pair's subspace is larger than
     an across-group pair's (0.5 = no relation)}; within values are NaN without groups.
  """
  s = np.asarray(pair_sizes, np.float64)
  same = _same_group(s.shape[0], groups)
  off = ~np.eye(s.shape[0], dtype=bool)
  across = ~same & off
  return {
      "offdiag_mean": _mean(s[off]), "offdiag_std": _mean(s[off], np.std),
      "within_mean": _mean(s[same]), "across_mean": _mean(s[across]),
      "identical_mean": float(np.diag(s).mean()),
      "num_within": int(same.sum()), "num_across": int(across.sum()),
      "within_vs_across_auroc": _auroc(s[same], s[across]),
  }


# ----------------------------------------------------------------------------------------------
# Class relationships
# ----------------------------------------------------------------------------------------------
def cosine_similarity_matrix(x: ArrayLike) -> np.ndarray:
  """(C, D) rows -> (C, C) cosine similarities; all-zero rows give 0, never NaN."""
  x = geometry.unit_rows(np.asarray(x, np.float64))
  return x @ x.T


def class_mean_similarity(embeddings: ArrayLike, labels: ArrayLike,
                          num_classes: int) -> np.ndarray:
  """The no-gate baseline: (C, C) cosine of class means of L2-normalised embeddings.

  Args:
    embeddings: (N, D); labels: (N,) ints in [0, num_classes).

  Returns:
    (C, C); a class without examples has a zero mean and similarity 0 to everything.
  """
  # float32 rows, float64 sums: N x D is never copied to float64 (np.add.at is also slow).
  e = geometry.unit_rows(np.asarray(embeddings, np.float32))
  labels = np.asarray(labels)
  means = np.zeros((num_classes, e.shape[1]))
  for c in range(num_classes):
    members = labels == c
    if members.any():
      means[c] = e[members].mean(0, dtype=np.float64)
  return cosine_similarity_matrix(means)


def group_recovery(similarity: ArrayLike, groups: Groups, k: int | None = None
                   ) -> dict[str, Any]:
  """Top-k neighbour precision of a class similarity against a known grouping.

  For every class in a group of size m >= 2, rank the other C - 1 classes by similarity and
  count how many of the top k share its group; k = m - 1 by default (so perfect recovery is
  1.0 for every group size). Ties at the k-th place are split in expectation (random
  tie-breaking), so a constant similarity (e.g. collapsed gates) scores exactly chance.

  Args:
    similarity: (C, C), larger = more similar; the diagonal is ignored.
    groups: class-index groups; ungrouped classes are candidates but are not scored.
    k: fixed neighbour count, or None for m - 1 per class.

  Returns:
    {"precision": mean over scored classes, "chance": mean of (m - 1) / (C - 1), the expected
     precision of random neighbours (the same for any k), "k": k or None,
     "classes": scored class indices, "per_class": their precisions,
     "within_vs_across_auroc": probability that a within-group pair is more similar than a
     pair not in one group (a rank statistic over all pairs; 0.5 = chance)}.
  """
  if k is not None and k < 1:
    raise ValueError(f"k must be >= 1 or None, got {k}")
  s = np.asarray(similarity, np.float64)
  c = s.shape[0]
  same = _same_group(c, groups)
  classes, prec, chance = [], [], []
  for i in range(c):
    m = int(same[i].sum()) + 1
    if m < 2:
      continue
    others = np.arange(c) != i
    sim, hit = s[i, others], same[i, others]
    ki = min(m - 1 if k is None else int(k), c - 1)
    t = np.sort(sim)[::-1][ki - 1]  # k-th largest similarity
    above, tied = sim > t, sim == t
    expected_hits = hit[above].sum() + (ki - above.sum()) * hit[tied].sum() / tied.sum()
    classes.append(i)
    prec.append(float(expected_hits / ki))
    chance.append((m - 1) / (c - 1))
  off = ~np.eye(c, dtype=bool)
  return {
      "precision": _mean(prec), "chance": _mean(chance), "k": k, "classes": classes,
      "per_class": prec, "within_vs_across_auroc": _auroc(s[same], s[off & ~same]),
  }


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------
ANALYSIS_KEYS = ("num_examples", "num_classes", "class_names", "groups", "spectrum",
                 "similarity", "class_relationships", "gates", "pair_sizes", "plots")


def analyze(features: Mapping[str, ArrayLike], labels: ArrayLike, *, num_classes: int,
            class_gates: ArrayLike | None = None, pair_sizes: ArrayLike | None = None,
            gated_features: str = "projector", class_names: Sequence[str] | None = None,
            groups: Groups | None = None, k: int | None = None, num_pairs: int = 20000,
            seed: int = 0, out_dir: str | None = None) -> dict[str, Any]:
  """All analyses of one model, as one JSON-serialisable dict (NaN -> None).

  Args:
    features: {name: (N, D_name)} embeddings of the same N examples, e.g. {"backbone": pooled
      features, "projector": z}; labels: (N,) ints; num_classes: C.
    class_gates: optional (C, D) gates g(y, y) (BatchNorm in inference mode).
    pair_sizes: optional (C, C) Σ_d g(i, j).
    gated_features: which `features` entry the gates act on (its D must match the gates').
    class_names: optional C names for the heatmaps.
    groups: optional known class groups (e.g. `data.fashion_mnist.GROUPS`).
    k: neighbour count for `group_recovery` (None: group size - 1).
    num_pairs, seed: pair sampling for the intra/inter similarities.
    out_dir: if given, PNGs are written there and their file names listed under "plots".

  Returns:
    A dict with exactly ANALYSIS_KEYS:
      "num_examples", "num_classes", "class_names", "groups";
      "spectrum": {name: {"dim", "effective_rank", "singular_values"}};
      "similarity": {name: intra_inter_similarity(...)}, plus "<gated_features>_gated" when
        class gates are given and `features` has that entry;
      "class_relationships": None without groups, else {"class_mean": {name:
        group_recovery(class-mean cosine)}, "gate": group_recovery(gate cosine) or None};
      "gates": gate_statistics(class_gates) or None;
      "pair_sizes": pair_size_by_group(pair_sizes, groups or ()) or None;
      "plots": written file names (empty without out_dir).
  """
  labels = np.asarray(labels).astype(np.int64)
  res: dict[str, Any] = {
      "num_examples": int(labels.shape[0]), "num_classes": int(num_classes),
      "class_names": list(class_names) if class_names is not None else None,
      "groups": [list(map(int, g)) for g in groups] if groups is not None else None,
      "spectrum": {}, "similarity": {}, "class_relationships": None, "gates": None,
      "pair_sizes": None, "plots": [],
  }
  spectra, mean_sims = {}, {}
  for name in features:
    x = np.asarray(features[name])
    spectra[name] = geometry.covariance_spectrum(x)
    res["spectrum"][name] = {
        "dim": int(x.shape[1]),
        "effective_rank": geometry.effective_rank_from_spectrum(spectra[name]),
        "singular_values": spectra[name].tolist()}
    res["similarity"][name] = geometry.intra_inter_similarity(x, labels, num_pairs=num_pairs,
                                                              seed=seed)
    mean_sims[name] = class_mean_similarity(x, labels, num_classes)

  gate_sim = None
  if class_gates is not None:
    g = np.asarray(class_gates, np.float32)
    res["gates"] = gate_statistics(g)
    gate_sim = cosine_similarity_matrix(g)
    if gated_features in features:
      if np.shape(features[gated_features])[1] != g.shape[1]:
        raise ValueError(f"gates have D={g.shape[1]} but features[{gated_features!r}] has "
                         f"D={np.shape(features[gated_features])[1]}")
      res["similarity"][f"{gated_features}_gated"] = geometry.intra_inter_similarity(
          features[gated_features], labels, gates=g, num_pairs=num_pairs, seed=seed)

  if groups is not None:
    res["class_relationships"] = {
        "class_mean": {n: group_recovery(s, groups, k) for n, s in mean_sims.items()},
        "gate": group_recovery(gate_sim, groups, k) if gate_sim is not None else None}

  if pair_sizes is not None:
    res["pair_sizes"] = pair_size_by_group(pair_sizes, groups or ())

  if out_dir is not None:
    from simlap.evaluation import plots  # noqa: PLC0415 - matplotlib only when pictures are asked for
    res["plots"] = plots.write_analysis_plots(
        out_dir, res, spectra=spectra, class_mean_similarities=mean_sims,
        class_gates=class_gates, gate_similarity=gate_sim, pair_sizes=pair_sizes,
        class_names=class_names)
  return jsonable(res)


def jsonable(x: Any) -> Any:
  """`x` ready for strict JSON: numpy scalars -> Python, non-finite floats -> None (no NaN)."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x
