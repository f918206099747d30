"""Analyses on hand-made and synthetic inputs whose answers are known in advance."""
from __future__ import annotations
import itertools
import json
import os

import numpy as np
import pytest

from simlap.evaluation import analysis
from simlap.evaluation import geometry
from simlap.data import fashion_mnist
from simlap.evaluation import plots


# ---------------------------------------------------------------------------------------------
# Groupings
# ---------------------------------------------------------------------------------------------
def test_fashion_mnist_groups():
  names = fashion_mnist.CLASS_NAMES
  tops, footwear = fashion_mnist.GROUPS
  assert {names[i] for i in footwear} == {"Sandal", "Sneaker", "Ankle boot"}
  assert {names[i] for i in tops} == {"T-shirt/top", "Pullover", "Coat", "Shirt"}
  assert set(range(10)) - set(tops) - set(footwear) == {1, 3, 8}


def test_coarse_groups_from_label_pairs():
  coarse_of = {0: 1, 1: 0, 2: 1, 3: 0, 4: 2, 5: 2}
  fine = np.array([5, 0, 1, 2, 3, 4, 0, 5])
  coarse = np.array([coarse_of[f] for f in fine])
  assert analysis.coarse_groups(fine, coarse) == [[1, 3], [0, 2], [4, 5]]
  with pytest.raises(ValueError, match="more than one coarse"):
    analysis.coarse_groups(np.array([0, 0]), np.array([0, 1]))


# ---------------------------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------------------------
def test_gate_statistics_hand_made():
  g = np.array([[0.0, 1.0, 0.5, 1.0], [0.0, 0.0, 1.0, 0.2]])
  st = analysis.gate_statistics(g, bins=2)
  h02 = -(0.2 * np.log2(0.2) + 0.8 * np.log2(0.8))
  assert st["num_gates"] == 2 and st["dim"] == 4
  assert st["activation_mean"] == pytest.approx(1.85)
  assert st["activation_std"] == pytest.approx(0.65)
  assert st["activation_frac_mean"] == pytest.approx(1.85 / 4)
  assert st["frac_open"] == pytest.approx(3 / 8)
  assert st["frac_near_zero"] == pytest.approx(3 / 8)
  assert st["frac_near_one"] == pytest.approx(3 / 8)
  assert st["frac_intermediate"] == pytest.approx(2 / 8)
  assert st["entropy_bits_mean"] == pytest.approx((1.0 + h02) / 8, abs=1e-6)
  assert st["hist_counts"] == [4, 4] and st["hist_edges"] == [0.0, 0.5, 1.0]
  # (C, C, D) pair gates are flattened to rows.
  assert analysis.gate_statistics(np.full((3, 3, 4), 0.5))["num_gates"] == 9


def test_pair_size_by_group():
  s = np.array([[9.0, 5.0, 1.0, 2.0],
                [5.0, 8.0, 3.0, 1.0],
                [1.0, 3.0, 7.0, 2.0],
                [2.0, 1.0, 2.0, 6.0]])
  r = analysis.pair_size_by_group(s, [(0, 1)])
  assert r["within_mean"] == 5.0 and r["num_within"] == 2
  assert r["across_mean"] == pytest.approx(np.mean([1, 2, 3, 1, 2])) and r["num_across"] == 10
  assert r["identical_mean"] == 7.5 and r["offdiag_mean"] == pytest.approx(14 / 6)
  ungrouped = analysis.pair_size_by_group(s, ())
  assert np.isnan(ungrouped["within_mean"]) and ungrouped["across_mean"] == pytest.approx(14 / 6)
  assert r["within_vs_across_auroc"] == 1.0


# ---------------------------------------------------------------------------------------------
# Class relationships
# ---------------------------------------------------------------------------------------------
def _block_similarity(groups, c):
  same = np.zeros((c, c))
  for g in groups:
    same[np.ix_(g, g)] = 1.0
  return same + 0.01 * np.eye(c)


def test_group_recovery_block_diagonal_is_perfect():
  groups = fashion_mnist.GROUPS
  r = analysis.group_recovery(_block_similarity(groups, 10), groups)
  assert r["precision"] == 1.0 and r["classes"] == [0, 2, 4, 5, 6, 7, 9]
  assert r["chance"] == pytest.approx((4 * 3 / 9 + 3 * 2 / 9) / 7)
  assert r["within_vs_across_auroc"] == 1.0
  assert analysis.group_recovery(_block_similarity(groups, 10), groups, k=1)["precision"] == 1.0
  # k = 4 neighbours but only 2 group mates in a group of 3: at most 1/2.
  r = analysis.group_recovery(_block_similarity([(0, 1, 2)], 5), [(0, 1, 2)], k=4)
  assert r["precision"] == 0.5


def test_group_recovery_chance_level():
  groups, c = [(0, 1, 2)], 5
  r = analysis.group_recovery(np.zeros((c, c)), groups)
  # Each grouped class has 2 mates among 4 others: chance = 2 / 4. All-tied similarities
  # are split in expectation, so they score exactly chance (not an index-order artefact).
  assert r["chance"] == 0.5 and r["precision"] == pytest.approx(0.5)
  assert r["within_vs_across_auroc"] == 0.5
  rng = np.random.default_rng(0)
  mc = np.mean([analysis.group_recovery(rng.random((c, c)), groups)["precision"]
                for _ in range(400)])
  assert mc == pytest.approx(0.5, abs=0.04)


def test_group_recovery_ties_at_kth_place():
  # Class 0: mate 1 clearly first, then mate 2 tied with non-mates 3 and 4 for the 2nd place.
  s = np.zeros((5, 5))
  s[0] = [0, 0.9, 0.5, 0.5, 0.5]
  r = analysis.group_recovery(s, [(0, 1, 2)])
  assert r["per_class"][0] == pytest.approx((1 + 1 / 3) / 2)


def test_class_mean_similarity():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(3), 50)
  centres = np.eye(3, 8) * 10
  emb = centres[labels] + rng.normal(size=(150, 8))
  sim = analysis.class_mean_similarity(emb, labels, 4)  # class 3 has no examples
  assert sim.shape == (4, 4) and not np.isnan(sim).any()
  np.testing.assert_allclose(np.diag(sim)[:3], 1.0, atol=1e-6)
  assert np.abs(sim[:3, :3] - np.eye(3)).max() < 0.2 and np.all(sim[3] == 0)


# ---------------------------------------------------------------------------------------------
# Dimensional collapse
# ---------------------------------------------------------------------------------------------
def test_effective_rank_rank_one_and_isotropic():
  rng = np.random.default_rng(2)
  u = rng.normal(size=(1, 32))
  assert geometry.effective_rank(rng.normal(size=(500, 1)) * u + 3.0) == pytest.approx(1, abs=1e-3)
  iso = rng.normal(size=(20000, 16)).astype(np.float32)
  assert 15.5 < geometry.effective_rank(iso) <= 16.0
  # Four equal directions inside 16 dims -> 4.
  low = rng.normal(size=(20000, 4)) @ np.linalg.qr(rng.normal(size=(16, 4)))[0].T
  assert geometry.effective_rank(low) == pytest.approx(4.0, abs=0.1)
  assert geometry.effective_rank(np.ones((10, 4))) == 0.0


def test_covariance_spectrum_matches_numpy_and_is_chunked():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(100, 6)) * np.arange(1, 7) + 5.0
  s = geometry.covariance_spectrum(x, chunk=7)
  np.testing.assert_allclose(s, np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1], rtol=1e-4)
  assert geometry.effective_rank_from_spectrum([1.0, 1.0, 0.0]) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# Intra- vs inter-class similarity
# ---------------------------------------------------------------------------------------------
def test_auroc_known_cases():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=5000), rng.normal(size=5000)
  assert geometry.auroc(a, b) == pytest.approx(0.5, abs=0.02)
  assert geometry.auroc(a + 100, b) == 1.0 and geometry.auroc(a, b + 100) == 0.0
  assert geometry.auroc([1.0], [1.0]) == 0.5 and geometry.auroc([1, 3], [2]) == 0.5
  pos, neg = rng.integers(0, 4, 30), rng.integers(0, 4, 40)  # many ties
  brute = np.mean([(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)])
  assert geometry.auroc(pos, neg) == pytest.approx(brute)
  assert np.isnan(geometry.auroc([], [1.0]))


def test_sample_pairs_are_valid_and_seeded():
  labels = np.array([0, 1, 1, 2, 2, 2, 3, 0, 1, 2])
  intra, inter = geometry.sample_pairs(labels, 2000, seed=0)
  assert intra.shape == inter.shape == (2000, 2)
  assert np.all(labels[intra[:, 0]] == labels[intra[:, 1]]) and np.all(intra[:, 0] != intra[:, 1])
  assert np.all(labels[inter[:, 0]] != labels[inter[:, 1]])
  assert 6 not in intra  # the only example of class 3 has no same-class partner
  # Every valid ordered intra pair is reachable.
  valid = {(i, j) for i in range(10) for j in range(10) if i != j and labels[i] == labels[j]}
  assert set(map(tuple, intra.tolist())) == valid
  again = geometry.sample_pairs(labels, 2000, seed=0)
  assert np.array_equal(again[0], intra) and np.array_equal(again[1], inter)
  assert not np.array_equal(geometry.sample_pairs(labels, 2000, seed=1)[0], intra)


def _signal_plus_noise(seed, n=600, c=3, d=10):
  """Class signal in dims 0-1 only, large noise in dims 2..d-1."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  angles = 2 * np.pi * np.arange(c) / c
  x = np.concatenate([np.stack([np.cos(angles), np.sin(angles)], 1)[labels]
                      + 0.05 * rng.normal(size=(n, 2)), rng.normal(size=(n, d - 2))], 1)
  return x, labels


def test_intra_inter_full_space_and_gated():
  x, labels = _signal_plus_noise(5)
  full = geometry.intra_inter_similarity(x, labels, num_pairs=3000, seed=0)
  shuffled = geometry.intra_inter_similarity(x, np.random.default_rng(0).permutation(labels),
                                             num_pairs=3000, seed=0)
  assert shuffled["auroc"] == pytest.approx(0.5, abs=0.04)
  class_gates = np.zeros((3, 10))
  class_gates[:, :2] = 1.0  # open only the dims that carry the class
  gated = geometry.intra_inter_similarity(x, labels, gates=class_gates, num_pairs=3000, seed=0)
  pair_gated = geometry.intra_inter_similarity(
      x, labels, gates=np.broadcast_to(class_gates[:, None], (3, 3, 10)), num_pairs=3000, seed=0)
  assert 0.55 < full["auroc"] < 0.9 and gated["auroc"] == 1.0 and pair_gated["auroc"] == 1.0
  assert gated["intra_mean"] > 0.99 and gated["inter_mean"] < -0.4
  assert sum(full["intra_hist"]) == sum(full["inter_hist"]) == 3000
  assert len(full["hist_edges"]) == len(full["intra_hist"]) + 1


# ---------------------------------------------------------------------------------------------
# Plots and analyze()
# ---------------------------------------------------------------------------------------------
def _is_png(path):
  with open(path, "rb") as f:
    return os.path.getsize(path) > 1000 and f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs_and_images(tmp_path):
  rng = np.random.default_rng(6)
  x, labels = _signal_plus_noise(6)
  paths = [
      plots.plot_gate_histogram(rng.random((10, 16)), str(tmp_path / "a" / "gates.png")),
      plots.plot_similarity_heatmap(np.eye(10), str(tmp_path / "sim.png"),
                                    fashion_mnist.CLASS_NAMES),
      plots.plot_spectrum({"z": geometry.covariance_spectrum(x)}, str(tmp_path / "spec.png"),
                          {"z": 3.0}),
      plots.plot_intra_inter(geometry.intra_inter_similarity(x, labels, num_pairs=200),
                             str(tmp_path / "ii.png"), title="z"),
  ]
  assert all(_is_png(p) for p in paths)
  img = plots.figure_to_array(plots.gate_histogram_figure(rng.random((4, 4))))
  assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 4 and img.std() > 0
  png = plots.read_png(paths[0])
  assert png.dtype == np.uint8 and png.shape[2] == 4 and png.std() > 0


def test_analyze_keys_json_and_pngs(tmp_path):
  x, labels = _signal_plus_noise(7, n=300, c=4)
  groups = [(0, 1)]
  class_gates = np.full((4, 10), 0.05)
  class_gates[:2, :5] = class_gates[2:, 5:] = 0.95  # classes 0, 1 share a subspace
  pair_sizes = class_gates.sum(1)[:, None] + np.eye(4)
  res = analysis.analyze({"backbone": x[:, :6], "projector": x}, labels, num_classes=4,
                         class_gates=class_gates, pair_sizes=pair_sizes,
                         class_names=list("abcd"), groups=groups, num_pairs=500,
                         out_dir=str(tmp_path))
  assert tuple(res) == analysis.ANALYSIS_KEYS
  json.dumps(res, allow_nan=False)
  assert set(res["spectrum"]) == {"backbone", "projector"}
  assert set(res["similarity"]) == {"backbone", "projector", "projector_gated"}
  assert res["class_relationships"]["gate"]["precision"] == 1.0
  assert set(res["class_relationships"]["class_mean"]) == {"backbone", "projector"}
  assert res["gates"]["frac_intermediate"] == 0.0
  assert res["pair_sizes"]["num_within"] == 2
  assert res["pair_sizes"]["within_mean"] == pytest.approx(5.0)
  assert 0 < res["spectrum"]["projector"]["effective_rank"] <= 10
  assert "gate_similarity.png" in res["plots"] and "spectrum.png" in res["plots"]
  assert all(_is_png(tmp_path / p) for p in res["plots"])
  # Without the optional inputs the keys stay, with None values, and nothing is drawn.
  bare = analysis.analyze({"projector": x}, labels, num_classes=4, num_pairs=100)
  assert tuple(bare) == analysis.ANALYSIS_KEYS and bare["plots"] == []
  assert bare["gates"] is bare["class_relationships"] is bare["pair_sizes"] is None
  json.dumps(bare, allow_nan=False)
  with pytest.raises(ValueError, match="gates have D=3"):
    analysis.analyze({"projector": x}, labels, num_classes=4, class_gates=np.ones((4, 3)))
