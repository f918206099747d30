"""simlap.losses against an independent float64 NumPy oracle, finite differences and 8 devices."""
from __future__ import annotations
import ast
import functools
import itertools
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from simlap import losses

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Independent float64 NumPy oracle: the naive (B, N, D) form and an explicit loop over positives.
# --------------------------------------------------------------------------------------------
def np_logits(a, k, g, variant):
  a, k, g = (np.asarray(x, np.float64) for x in (a, k, g))
  if variant == "cosine":
    ga = g * a  # (B, D)
    gk = g[:, None, :] * k[None, :, :]  # (B, N, D)
    num = np.einsum("bd,bnd->bn", ga, gk)
    den = np.linalg.norm(ga, axis=-1)[:, None] * np.linalg.norm(gk, axis=-1)
    return num / den
  ah = a / np.linalg.norm(a, axis=-1, keepdims=True)
  kh = k / np.linalg.norm(k, axis=-1, keepdims=True)
  return np.einsum("bd,bd,nd->bn", g * g, ah, kh)


def np_simlap_loss(a, k, g, y1, y2, yk, scale, variant, reduction):
  logits = scale * np_logits(a, k, g, variant)
  per_anchor, pair_losses = [], []
  for b in range(len(y1)):
    positives = [n for n in range(len(yk)) if yk[n] == y2[b]]
    negatives = [n for n in range(len(yk)) if yk[n] != y2[b] and yk[n] != y1[b]]
    row = []
    for p in positives:
      denominator = np.exp(logits[b, p]) + sum(np.exp(logits[b, n]) for n in negatives)
      row.append(np.log(denominator) - logits[b, p])
    pair_losses += row
    per_anchor.append(np.mean(row) if row else 0.0)
  if reduction == "anchor":
    return float(np.mean(per_anchor))
  return float(np.sum(pair_losses) / max(len(pair_losses), 1))


def np_supcon(a, k, ya, yk, scale, exclude_self):
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  logits = scale * a @ k.T
  out = []
  for i in range(len(ya)):
    keep = [n for n in range(len(yk)) if not (exclude_self and n == i)]
    positives = [n for n in keep if yk[n] == ya[i]]
    log_den = np.log(np.sum(np.exp(logits[i, keep])))
    out.append(-np.mean([logits[i, p] - log_den for p in positives]) if positives else 0.0)
  return float(np.mean(out))


def random_case(seed, b, n, d, c, kind="arbitrary", dtype=np.float64):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(b, d)).astype(dtype)
  k = rng.normal(size=(n, d)).astype(dtype)
  g = (1 / (1 + np.exp(-2 * rng.normal(size=(b, d))))).astype(dtype)
  y1 = rng.integers(0, c, size=b).astype(np.int32)
  yk = rng.integers(0, c, size=n).astype(np.int32)
  y2 = np.asarray(losses.sample_pair_labels(jax.random.key(seed), jnp.asarray(y1), kind=kind,
                                            num_classes=c, distances=tree_distances(c),
                                            alpha=2.0))
  return a, k, g, y1, y2, yk


def tree_distances(c):
  """(C, C) distances of a two-group tree: classes 0..C/2-1 and C/2..C-1."""
  group = np.arange(c) >= c // 2
  d = np.where(group[:, None] == group[None, :], 1.0, 2.0)
  np.fill_diagonal(d, 0.0)
  return d.astype(np.float32)


@functools.cache
def jitted(fn, **static):
  """One compiled program per (function, options), shared by the pair kinds and seeds."""
  return jax.jit(functools.partial(fn, **static))


# --------------------------------------------------------------------------------------------
# Values.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,reduction,kind", list(itertools.product(
    losses.VARIANTS, losses.REDUCTIONS, losses.PAIR_KINDS)))
def test_matches_float64_oracle(variant, reduction, kind):
  with jax.enable_x64(True):
    for seed, (b, n) in enumerate([(7, 7), (6, 11), (13, 5)]):  # B == N and B != N
      a, k, g, y1, y2, yk = random_case(seed, b, n, d=5, c=4, kind=kind)
      want = np_simlap_loss(a, k, g, y1, y2, yk, 7.0, variant, reduction)
      for fn, extra in [(losses.simlap_loss, {}), (losses.simlap_loss, {"chunk_size": 4}),
                        (losses.simlap_loss_reference, {})]:
        got = jitted(fn, variant=variant, reduction=reduction, **extra)(
            jnp.asarray(a), jnp.asarray(k), jnp.asarray(g), y1, y2, yk, scale=7.0)
        np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-12,
                                   err_msg=f"{fn.__name__} {extra} seed={seed}")


def test_logits_match_naive_form():
  with jax.enable_x64(True):
    a, k, g, *_ = random_case(0, 6, 9, 8, 3)
    for variant in losses.VARIANTS:
      got = losses.subspace_logits(jnp.asarray(a), jnp.asarray(k), jnp.asarray(g),
                                   variant=variant)
      np.testing.assert_allclose(np.asarray(got, np.float64), np_logits(a, k, g, variant),
                                 rtol=1e-6)


def test_supcon_and_nt_xent_match_oracle():
  with jax.enable_x64(True):
    a, k, _, ya, _, yk = random_case(3, 8, 8, 5, 3)
    got = losses.supcon_loss(jnp.asarray(a), jnp.asarray(k), ya, yk, scale=5.0)
    np.testing.assert_allclose(float(got), np_supcon(a, k, ya, yk, 5.0, False), rtol=1e-6)
    both, labels = np.concatenate([a, k]), np.concatenate([ya, yk])
    got = losses.supcon_loss(jnp.asarray(both), jnp.asarray(both), labels, labels, scale=5.0,
                             exclude_self=True)
    np.testing.assert_allclose(float(got), np_supcon(both, both, labels, labels, 5.0, True),
                               rtol=1e-6)
    # nt_xent: instance labels. One direction = anchors over keys; SimCLR = 2B with self excluded.
    idx = np.arange(8)
    got = losses.nt_xent(jnp.asarray(a), jnp.asarray(k), scale=5.0)
    np.testing.assert_allclose(float(got), np_supcon(a, k, idx, idx, 5.0, False), rtol=1e-6)
    got = losses.nt_xent(jnp.asarray(a), jnp.asarray(k), scale=5.0, same_view_negatives=True)
    idx2 = np.concatenate([idx, idx])
    np.testing.assert_allclose(float(got), np_supcon(both, both, idx2, idx2, 5.0, True),
                               rtol=1e-6)


def test_identical_pairs_with_open_gate_differ_from_supcon_only_in_denominator():
  # With y2 = y1 and g = 1 every same-class key is a positive and X = P: each positive's
  # denominator is itself plus the negatives. Check against that closed form directly.
  with jax.enable_x64(True):
    a, k, _, y1, _, yk = random_case(5, 9, 9, 4, 3)
    g = np.ones_like(a)
    got = float(losses.simlap_loss(jnp.asarray(a), jnp.asarray(k), jnp.asarray(g), y1, y1, yk,
                                   scale=4.0))
    want = np_simlap_loss(a, k, g, y1, y1, yk, 4.0, "cosine", "anchor")
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert abs(got - np_supcon(a, k, y1, yk, 4.0, False)) > 1e-3  # L_out has all keys below


# --------------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,reduction,chunk", [
    ("cosine", "anchor", None), ("cosine", "pair", 3), ("weighted", "anchor", 3),
    ("weighted", "pair", None)])
def test_gradients_match_finite_differences(variant, reduction, chunk):
  with jax.enable_x64(True):
    a, k, g, y1, y2, yk = random_case(1, 7, 9, 4, 3)

    def f(a, k, g, scale):
      return losses.simlap_loss(a, k, g, y1, y2, yk, scale=scale, variant=variant,
                                reduction=reduction, chunk_size=chunk)

    check_grads(f, (jnp.asarray(a), jnp.asarray(k), jnp.asarray(g), jnp.float64(6.0)),
                order=1, modes=("rev",), atol=1e-5, rtol=1e-5)  # central FD error O(eps^2)


def test_fused_gradient_equals_autodiff_reference():
  with jax.enable_x64(True):
    a, k, g, y1, y2, yk = random_case(2, 10, 12, 6, 4)
    args = tuple(jnp.asarray(x) for x in (a, k, g))
    for variant in losses.VARIANTS:
      fused = jax.grad(lambda *x: losses.simlap_loss(*x, y1, y2, yk, variant=variant,
                                                     chunk_size=4), argnums=(0, 1, 2))(*args)
      ref = jax.grad(lambda *x: losses.simlap_loss_reference(*x, y1, y2, yk, variant=variant),
                     argnums=(0, 1, 2))(*args)
      for x, y in zip(fused, ref):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_gradient_of_baselines_finite_differences():
  with jax.enable_x64(True):
    a, k, _, ya, _, yk = random_case(4, 6, 6, 4, 3)
    check_grads(lambda a, k: losses.supcon_loss(a, k, ya, yk, scale=3.0),
                (jnp.asarray(a), jnp.asarray(k)), order=1, modes=("rev",))
    check_grads(lambda a, k: losses.nt_xent(a, k, scale=3.0, same_view_negatives=True),
                (jnp.asarray(a), jnp.asarray(k)), order=1, modes=("rev",))


# --------------------------------------------------------------------------------------------
# Invariances and degenerate inputs.
# --------------------------------------------------------------------------------------------
def test_cosine_invariant_to_rescaling_and_key_permutation():
  with jax.enable_x64(True):
    a, k, g, y1, y2, yk = (jnp.asarray(x) for x in random_case(6, 8, 10, 5, 4))
    base = losses.simlap_loss(a, k, g, y1, y2, yk)
    np.testing.assert_allclose(losses.simlap_loss(3.7 * a, 0.2 * k, g, y1, y2, yk), base,
                               rtol=1e-9)
    perm = np.random.default_rng(0).permutation(10)
    for variant in losses.VARIANTS:
      base = losses.simlap_loss(a, k, g, y1, y2, yk, variant=variant)
      np.testing.assert_allclose(
          losses.simlap_loss(a, k[perm], g, y1, y2, yk[perm], variant=variant), base, rtol=1e-9)


def test_no_positives_gives_zero_with_finite_gradients():
  a, k, g, y1, _, yk = (jnp.asarray(x, dtype) for x, dtype in zip(
      random_case(7, 6, 6, 4, 3, dtype=np.float32), (None,) * 6))
  y2 = jnp.full_like(y1, 99)  # a class no key has (as "distinct" pairs often are)
  for reduction in losses.REDUCTIONS:
    value, grads = jax.value_and_grad(
        lambda a, k, g: losses.simlap_loss(a, k, g, y1, y2, yk, reduction=reduction),
        argnums=(0, 1, 2))(a, k, g)
    assert float(value) == 0.0
    assert all(bool(jnp.all(x == 0)) for x in grads)


def test_closed_gates_and_zero_vectors_are_finite():
  a, k, g, y1, y2, yk = (jnp.asarray(x) for x in random_case(8, 6, 6, 4, 3, dtype=np.float32))
  cases = {"closed gates": (a, k, jnp.zeros_like(g)), "zero anchors": (0 * a, k, g),
           "zero keys": (a, 0 * k, g)}
  for name, (a_, k_, g_) in cases.items():
    for variant in losses.VARIANTS:
      for fn in (losses.simlap_loss, losses.simlap_loss_reference):
        value, grads = jax.value_and_grad(
            lambda *x: fn(*x, y1, y2, yk, variant=variant), argnums=(0, 1, 2))(a_, k_, g_)
        assert np.isfinite(float(value)), (name, variant, fn.__name__)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in grads), (name, variant, fn.__name__)


def test_rows_without_negatives_are_finite():
  # Every key has the anchor's or the pair's class: no negatives anywhere.
  a, k, g, *_ = (jnp.asarray(x) for x in random_case(9, 4, 4, 3, 2, dtype=np.float32))
  y1 = jnp.array([0, 0, 1, 1], jnp.int32)
  y2 = jnp.array([1, 1, 0, 0], jnp.int32)
  yk = jnp.array([0, 1, 0, 1], jnp.int32)
  value, grads = jax.value_and_grad(lambda a: losses.simlap_loss(a, k, g, y1, y2, yk))(a)
  assert float(value) == 0.0  # softplus(-inf): a positive alone in its denominator
  assert bool(jnp.all(jnp.isfinite(grads)))


def test_bfloat16_inputs_close_to_float32():
  a, k, g, y1, y2, yk = (jnp.asarray(x) for x in random_case(10, 32, 32, 16, 5,
                                                              dtype=np.float32))
  f32 = losses.simlap_loss(a, k, g, y1, y2, yk)
  bf16 = losses.simlap_loss(*(x.astype(jnp.bfloat16) for x in (a, k, g)), y1, y2, yk)
  assert bf16.dtype == jnp.float32
  assert abs(float(bf16) - float(f32)) <= 1e-2 * abs(float(f32))
  grads = jax.grad(lambda a: losses.simlap_loss(a, k.astype(jnp.bfloat16), g, y1, y2, yk))(
      a.astype(jnp.bfloat16))
  assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


def test_learned_scale_gets_gradient():
  a, k, g, y1, y2, yk = (jnp.asarray(x) for x in random_case(11, 8, 8, 4, 3, dtype=np.float32))
  d_log_scale = jax.grad(lambda s: losses.simlap_loss(a, k, g, y1, y2, yk, scale=jnp.exp(s)))(
      jnp.log(10.0))
  ref = jax.grad(lambda s: losses.simlap_loss_reference(a, k, g, y1, y2, yk,
                                                        scale=jnp.exp(s)))(jnp.log(10.0))
  assert float(d_log_scale) != 0.0
  np.testing.assert_allclose(d_log_scale, ref, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Across devices: the global-batch loss on 8 sharded devices equals the single-device one.
# --------------------------------------------------------------------------------------------
def test_sharded_over_8_devices_matches_single_device(num_devices):
  a, k, g, y1, y2, yk = (jnp.asarray(x) for x in random_case(12, 32, 32, 16, 6,
                                                              dtype=np.float32))
  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))

  for variant, reduction, chunk in [("cosine", "anchor", None), ("weighted", "pair", 2)]:
    def loss(a, k, g, y1, y2, yk):
      return losses.simlap_loss(a, k, g, y1, y2, yk, variant=variant, reduction=reduction,
                                chunk_size=chunk)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    single = step(a, k, g, y1, y2, yk)
    sharded_inputs = jax.device_put((a, k, g, y1, y2, yk), rows)
    assert len(sharded_inputs[0].sharding.device_set) == num_devices
    sharded = step(*sharded_inputs)
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6, atol=1e-6)
    for x, y in zip(sharded[1], single[1]):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Misuse fails at trace time with a message naming the argument.
# --------------------------------------------------------------------------------------------
def test_misuse_raises_clear_errors():
  a = jnp.ones((4, 3))
  y = jnp.zeros(4, jnp.int32)
  cases = [
      (lambda: losses.simlap_loss(a, jnp.ones((4, 5)), a, y, y, y), ValueError, "dimension"),
      (lambda: losses.simlap_loss(a, a, jnp.ones((4, 2)), y, y, y), ValueError, "gates"),
      (lambda: losses.simlap_loss(a, a, a, y.astype(float), y, y), TypeError, "anchor_labels"),
      (lambda: losses.simlap_loss(a, a, a, y, y[:3], y), ValueError, "pair_labels"),
      (lambda: losses.simlap_loss(a, jnp.ones((6, 3)), a, y, y, y), ValueError, "key_labels"),
      (lambda: losses.simlap_loss(a[0], a, a, y, y, y), ValueError, "anchors"),
      (lambda: losses.simlap_loss(a, a, a, y, y, y, variant="dot"), ValueError, "variant"),
      (lambda: losses.simlap_loss(a, a, a, y, y, y, reduction="sum"), ValueError, "reduction"),
      (lambda: losses.sample_pair_labels(jax.random.key(0), y, kind="distinct"), ValueError,
       "num_classes"),
      (lambda: losses.sample_pair_labels(jax.random.key(0), y, kind="random"), ValueError,
       "kind"),
      (lambda: losses.sample_pair_labels(jax.random.key(0), y, kind="selective"), ValueError,
       "distances"),
      (lambda: losses.sample_pair_labels(jax.random.key(0), y, kind="selective",
                                         distances=jnp.zeros((3, 4))), ValueError, "(C, C)"),
      (lambda: losses.nt_xent(a, jnp.ones((5, 3))), ValueError, "one key per anchor"),
  ]
  for fn, error, word in cases:
    with pytest.raises(error, match=word):
      jax.jit(fn)()  # under jit: the check fires while tracing


# --------------------------------------------------------------------------------------------
# Pair labels and diagnostics.
# --------------------------------------------------------------------------------------------
def test_sample_pair_labels_kinds():
  y = jnp.arange(64, dtype=jnp.int32) % 10
  rng = jax.random.key(3)
  arbitrary = losses.sample_pair_labels(rng, y)
  assert sorted(np.asarray(arbitrary).tolist()) == sorted(np.asarray(y).tolist())
  assert not np.array_equal(arbitrary, y)
  np.testing.assert_array_equal(losses.sample_pair_labels(rng, y, kind="identical"), y)
  distinct = losses.sample_pair_labels(rng, y, kind="distinct", num_classes=10)
  assert bool(jnp.all(distinct != y)) and bool(jnp.all((distinct >= 0) & (distinct < 10)))
  assert len(set(np.asarray(distinct - y) % 10)) > 3  # the shift is random, not constant


def selective_frequencies(labels, distances, **kw):
  """(C, C) empirical P(y2 | y1) of jitted selective draws for the anchors `labels`."""
  c = distances.shape[0]
  draw = jax.jit(functools.partial(losses.sample_pair_labels, kind="selective", **kw))
  y2 = np.asarray(draw(jax.random.key(7), labels, distances=jnp.asarray(distances)))
  y1 = np.asarray(labels)
  counts = np.zeros((c, c))
  np.add.at(counts, (y1, y2), 1)
  return counts / counts.sum(1, keepdims=True), counts


def test_selective_pairs_follow_their_weights():
  d = tree_distances(6)  # groups {0, 1, 2} and {3, 4, 5}
  y = jnp.tile(jnp.arange(6, dtype=jnp.int32), 4000)  # 4000 anchors per class
  # alpha = 2, no cut-off: w = 1 (same class), 1/4 (same group), 1/9 (other group).
  freq, counts = selective_frequencies(y, d, alpha=2.0)
  want = np.where(d == 0, 1.0, np.where(d == 1, 1 / 4, 1 / 9))
  want /= want.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(losses.selective_pair_weights(d, alpha=2.0)),
                             np.where(d == 0, 1.0, np.where(d == 1, 1 / 4, 1 / 9)), rtol=1e-6)
  expected = want * counts.sum(1, keepdims=True)
  chi2 = float(np.sum((counts - expected) ** 2 / expected))
  assert chi2 < 30 + 6 * np.sqrt(60), chi2  # 30 degrees of freedom: mean 30, std sqrt(60)
  # alpha = 0 with cut-off 2: uniform over the own group (class included), never across.
  freq, _ = selective_frequencies(y, d, alpha=0.0, max_level=2)
  np.testing.assert_array_equal(freq[d == 2], 0.0)
  np.testing.assert_allclose(freq[d < 2], 1 / 3, atol=0.03)
  # alpha = 0 without cut-off: uniform over all C classes.
  freq, _ = selective_frequencies(y, d, alpha=0.0)
  np.testing.assert_allclose(freq, 1 / 6, atol=0.03)
  # max_level = 1: identical pairs only, whatever alpha.
  ident = losses.sample_pair_labels(jax.random.key(1), y, kind="selective",
                                    distances=jnp.asarray(d), alpha=2.0, max_level=1)
  np.testing.assert_array_equal(ident, y)


def test_selective_pairs_same_on_8_devices_as_on_1(num_devices):
  # The draw is a function of (key, labels), not of how the batch is laid out over devices.
  y = jnp.asarray(np.random.default_rng(0).integers(0, 6, 64), jnp.int32)
  draw = jax.jit(lambda key, y, d, alpha: losses.sample_pair_labels(
      key, y, kind="selective", distances=d, alpha=alpha, max_level=2))
  d = jnp.asarray(tree_distances(6))
  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = draw(jax.random.key(3), jax.device_put(y, NamedSharding(mesh, P("data"))), d, 2.0)
  single = draw(jax.random.key(3), y, d, 2.0)
  assert len(sharded.sharding.device_set) == num_devices
  np.testing.assert_array_equal(sharded, single)
  assert sharded.dtype == y.dtype and not np.array_equal(single, y)


def test_subspace_diagnostics():
  a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  k = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  g = jnp.array([[1.0, 0.0], [0.5, 0.5]])
  y1, y2, yk = jnp.array([0, 1]), jnp.array([0, 2]), jnp.array([0, 1, 2])
  d = losses.subspace_diagnostics(a, k, g, y1, y2, yk)
  # Anchor 0 (gate on dim 0): positive key 0 cos 1; negatives keys 1 (cos 0) and 2 (cos -1).
  # Anchor 1: positive key 2 (cos 0); same-class key 1 (cos 1); negative key 0 (cos 0).
  np.testing.assert_allclose(d["cos_positive"], 0.5, atol=1e-6)
  np.testing.assert_allclose(d["cos_same_class"], 1.0, atol=1e-6)
  np.testing.assert_allclose(d["cos_negative"], -1 / 3, atol=1e-6)
  np.testing.assert_allclose(d["gate_activation"], 1.0)
  np.testing.assert_allclose(d["gate_open_fraction"], 0.25)
  np.testing.assert_allclose(d["gate_entropy"], np.log(2) / 2, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Packaging: simlap.losses imports only jax, and the README snippet runs.
# --------------------------------------------------------------------------------------------
def test_losses_module_imports_only_jax_and_stdlib():
  tree = ast.parse((REPO / "simlap" / "losses.py").read_text())
  roots = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      roots |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      roots.add(node.module.split(".")[0])
  assert roots <= {"jax", "__future__", "functools", "typing"}, roots


def test_losses_import_with_training_stack_blocked():
  blocked = ["flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "clu",
             "ml_collections", "numpy.testing"]
  code = (
      "import sys\n"
      f"blocked = {blocked!r}\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] in blocked or name in blocked:\n"
      "      raise ImportError('blocked: ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      "import jax.numpy as jnp\n"
      "from simlap import losses\n"
      "x = jnp.ones((4, 3)); y = jnp.arange(4) % 2\n"
      "print(float(losses.simlap_loss(x, x, x, y, y, y)))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert np.isfinite(float(out.stdout.strip().splitlines()[-1]))


def test_readme_snippet_runs():
  readme = (REPO / "README.md").read_text()
  match = re.search(r"<!-- loss-snippet -->\s*```python\n(.*?)```", readme, re.S)
  assert match, "README lost its loss snippet marker"
  namespace = {}
  exec(compile(match.group(1), "README.md", "exec"), namespace)  # noqa: S102
  assert np.isfinite(float(namespace["loss"]))
  assert namespace["grads"][0].shape == namespace["z1"].shape


@pytest.mark.parametrize("same_view_negatives", [False, True])
def test_nt_xent_gradient_has_no_conditional(same_view_negatives):
  # jnp.diagonal lowers to a platform-dependent conditional (stablehlo.case). Batch-sharded on
  # XLA:CPU, a conditional holding a collective ran in another order on some devices than on
  # others and deadlocked the 8-device momentum-encoder step, so the loss avoids it.
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))
  x = jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=rows)
  grad = jax.jit(jax.grad(functools.partial(losses.nt_xent,
                                            same_view_negatives=same_view_negatives),
                          argnums=(0, 1)))
  text = grad.lower(x, x).as_text()
  assert "stablehlo.case" not in text and "stablehlo.if" not in text
  diagonal_form = jax.jit(jax.grad(lambda a, k: jnp.mean(jnp.diagonal(a @ k.T))))
  assert "stablehlo.case" in diagonal_form.lower(x, x).as_text()  # what the check guards
