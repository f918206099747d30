"""Evaluators on synthetic features whose answers are known in advance."""
from __future__ import annotations
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap.evaluation import array_eval as evaluators
from simlap.evaluation import cells
from simlap.runtime import sharding


def _clusters(n, num_classes, dim, *, spread, seed):
  """Points around `num_classes` random unit centres; small `spread` -> well separated."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = rng.integers(0, num_classes, n)
  feats = centres[labels] + spread * rng.normal(size=(n, dim))
  return feats.astype(np.float32), labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------
# kNN tests share shapes (bank 320, test 160, D 16, C 4) and static settings: one compile.
_KNN = dict(num_classes=4, ks=(1, 5, 20), chunk_size=64)


def test_knn_separated_clusters_are_perfect():
  x, y = _clusters(480, 4, 16, spread=0.05, seed=0)
  acc = evaluators.knn_accuracy(x[:320], y[:320], x[320:], y[320:], **_KNN)
  assert set(acc) == {1, 5, 20}
  assert all(a == 1.0 for a in acc.values()), acc


def test_knn_random_labels_are_near_chance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(480, 16)).astype(np.float32)
  y = rng.integers(0, 4, 480)
  acc = evaluators.knn_accuracy(x[:320], y[:320], x[320:], y[320:], **_KNN)
  assert abs(acc[20] - 0.25) < 0.12, acc


def test_knn_votes_are_temperature_weighted():
  # One very close neighbour of class 1 against two farther ones of class 0: with a small T
  # the close one wins, with a huge T (uniform votes) the majority wins.
  train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
  labels = np.array([1, 0, 0])
  test = np.array([[1.0, 0.05]], np.float32)
  sharp = evaluators.knn_classify(train, labels, test, num_classes=2, ks=(3,), temperature=0.07)
  flat = evaluators.knn_classify(train, labels, test, num_classes=2, ks=(3,), temperature=1e3)
  assert int(sharp[3][0]) == 1 and int(flat[3][0]) == 0


def test_knn_masks_exclude_padded_rows():
  x, y = _clusters(480, 4, 16, spread=0.05, seed=2)
  test_x, test_y = x[320:], y[320:].copy()
  # Padded test rows carry wrong labels: counted, they would lower the accuracy.
  test_y[-32:] = (test_y[-32:] + 1) % 4
  test_mask = np.arange(160) < 128
  acc = evaluators.knn_accuracy(x[:320], y[:320], test_x, test_y, test_mask=test_mask, **_KNN)
  assert acc[5] == 1.0
  assert evaluators.knn_accuracy(x[:320], y[:320], test_x, test_y, **_KNN)[5] == pytest.approx(0.8)
  # Padded bank rows (exact copies of test points, wrong labels) must never be neighbours.
  bank, bank_y = x[:320].copy(), y[:320].copy()
  bank[-64:], bank_y[-64:] = test_x[:64], (y[320:384] + 1) % 4
  bank_mask = np.arange(320) < 256
  masked = evaluators.knn_accuracy(bank, bank_y, test_x, y[320:], train_mask=bank_mask, **_KNN)
  unmasked = evaluators.knn_accuracy(bank, bank_y, test_x, y[320:], **_KNN)
  assert masked[1] == 1.0 and unmasked[1] <= 1 - 64 / 160 + 1e-6


def test_knn_on_sharded_arrays_matches_host(num_devices):
  x, y = _clusters(480, 4, 16, spread=0.8, seed=3)  # overlapping: predictions are non-trivial
  mesh = sharding.make_mesh()
  def shard(a):
    return jax.device_put(a, sharding.batch_sharding(mesh))
  host = evaluators.knn_classify(x[:320], y[:320], x[320:], **_KNN)
  dist = evaluators.knn_classify(shard(x[:320]), shard(y[:320]), shard(x[320:]), **_KNN)
  for k in _KNN["ks"]:
    np.testing.assert_array_equal(np.asarray(host[k]), np.asarray(dist[k]))
  assert 0.4 < float(np.mean(np.asarray(host[5]) == y[320:])) < 1.0


def test_knn_uses_topk_not_a_full_sort():
  # Slicing the top_k outputs makes XLA fall back to sorting every similarity row (~30x
  # slower on CPU); guard the compiled program against that regression.
  bank, labels = jnp.ones((40, 4)), jnp.zeros((40,), jnp.int32)
  hlo = evaluators._knn_predict.lower(  # noqa: SLF001 - its compiled HLO
      bank, labels, jnp.ones((40,), bool), jnp.ones((8, 4)), num_classes=3, ks=(3, 5),
      temperature=0.07, chunk_size=4).compile().as_text()
  assert "sort(" not in hlo


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------
# All probe tests share shapes and static settings so they share one compilation.
_PROBE = dict(num_classes=3, epochs=20, batch_size=100, seed=0)


def test_linear_probe_separable_and_reports_hparams():
  x, y = _clusters(900, 3, 16, spread=0.3, seed=4)
  res = evaluators.linear_probe(x[:600], y[:600], x[600:], y[600:], **_PROBE)
  assert res["accuracy"] >= 0.95, res
  hp = res["hparams"]
  assert {"optimizer", "schedule", "epochs", "batch_size", "lr", "weight_decay",
          "standardize", "seed", "steps"} <= set(hp)
  assert hp["epochs"] == 20 and hp["batch_size"] == 100 and hp["steps"] == 20 * 6


def test_linear_probe_random_labels_do_not_generalise():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(900, 16)).astype(np.float32)
  y = rng.integers(0, 3, 900)
  res = evaluators.linear_probe(x[:600], y[:600], x[600:], y[600:], **_PROBE)
  assert abs(res["accuracy"] - 1 / 3) < 0.1, res


def test_linear_probe_ignores_masked_train_rows():
  x, y = _clusters(900, 3, 16, spread=0.1, seed=6)
  y_bad = y.copy()
  y_bad[:300] = (y_bad[:300] + 1) % 3  # padded rows with poisoned labels, half the train set
  mask = np.arange(600) >= 300
  masked = evaluators.linear_probe(x[:600], y_bad[:600], x[600:], y[600:], train_mask=mask,
                                 **_PROBE)
  assert masked["accuracy"] >= 0.95, masked
  unmasked = evaluators.linear_probe(x[:600], y_bad[:600], x[600:], y[600:], **_PROBE)
  assert unmasked["accuracy"] < 0.9, unmasked


# ---------------------------------------------------------------------------------------------
# Few-shot ridge
# ---------------------------------------------------------------------------------------------
def test_few_shot_sampling_is_balanced_and_seeded():
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 5, 400)
  idx = evaluators.sample_few_shot(labels, 4, 5, seed=0)
  assert idx.shape == (20,) and len(set(idx.tolist())) == 20  # without replacement
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=5), [4] * 5)
  np.testing.assert_array_equal(idx, evaluators.sample_few_shot(labels, 4, 5, seed=0))
  assert not np.array_equal(idx, evaluators.sample_few_shot(labels, 4, 5, seed=1))
  # Masked rows are never drawn; too few examples is an error, not a silent smaller set.
  mask = np.arange(400) % 2 == 0
  assert mask[evaluators.sample_few_shot(labels, 4, 5, seed=0, mask=mask)].all()
  with pytest.raises(ValueError, match="fewer than shots"):
    evaluators.sample_few_shot(np.array([0, 0, 1]), 2, 2, seed=0)


def test_few_shot_ridge_recovers_clusters():
  x, y = _clusters(1000, 5, 32, spread=0.1, seed=8)
  res = evaluators.few_shot_ridge(x[:600], y[:600], x[600:], y[600:], num_classes=5,
                                shots=(1, 5), seeds=(0, 1, 2))
  assert res["lam"] == 1e-3 and res["seeds"] == [0, 1, 2]
  for s in (1, 5):
    r = res["shots"][s]
    assert len(r["per_seed"]) == 3 and r["mean"] >= 0.95, r
    assert r["mean"] == pytest.approx(np.mean(r["per_seed"]))
    assert r["std"] == pytest.approx(np.std(r["per_seed"], ddof=1))


def test_few_shot_ridge_noisy_has_spread_over_seeds():
  x, y = _clusters(1000, 5, 32, spread=1.0, seed=9)
  res = evaluators.few_shot_ridge(x[:600], y[:600], x[600:], y[600:], num_classes=5,
                                shots=(1, 5), seeds=(0, 1, 2))
  one, many = res["shots"][1], res["shots"][5]
  assert one["std"] > 0 and one["mean"] < many["mean"] < 1.0


def test_ridge_solves_normal_equations_and_ignores_zero_weight_rows():
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(12, 20)).astype(np.float32))  # fewer rows than unknowns
  y = jax.nn.one_hot(rng.integers(0, 3, 12), 3)
  fit = jax.jit(evaluators._ridge_fit)  # noqa: SLF001
  w = fit(x, y, 1e-1)
  xa = jnp.concatenate([x, jnp.ones((12, 1))], 1)
  grad = xa.T @ (xa @ w - y) + 1e-1 * w  # gradient of the ridge objective vanishes
  assert float(jnp.abs(grad).max()) < 1e-3
  junk = jnp.concatenate([x, 5 * x[:4]]), jnp.concatenate([y, 1 - y[:4]])
  padded = fit(*junk, 1e-1, jnp.arange(16) < 12)
  np.testing.assert_allclose(padded, w, atol=1e-4)
  assert float(jnp.abs(fit(*junk, 1e-1) - w).max()) > 1e-2  # the weights are what matters


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def test_mean_std_and_format():
  assert evaluators.mean_std([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
  assert evaluators.mean_std([0.5]) == (0.5, 0.0)
  # Tables write them through evaluation.cells (the one cell format).
  assert cells.mean_std(*evaluators.mean_std([0.9, 0.92, 0.94])) == "92.00 ± 2.00"
  assert cells.mean_std(*evaluators.mean_std([1.0, 3.0]), "num1") == "2.0 ± 1.4"
