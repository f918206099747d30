"""simlap.objectives: logit scale, probe loss and each objective's contrastive loss.

Each objective is checked against the losses.py function it is documented to be, called here
directly, so a wrong argument order, a missing symmetric term or a dropped penalty shows.
(`objectives.validate` is tested with the config checks, not here.)
"""
from __future__ import annotations
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap import config_schema
from simlap import losses
from simlap import objectives
from simlap.objectives import base

B, D, C = 8, 6, 4


def make_config(objective="simlap", **loss_overrides):
  c = config_schema.base_config()
  c.objective = objective
  c.loss.update(loss_overrides)
  return c


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  z1 = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  z2 = jnp.asarray(z1 + 0.5 * rng.normal(size=(B, D)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 0, 1, 2, 0], jnp.int32)
  pair_labels = jnp.asarray([1, 0, 0, 2, 3, 2, 1, 0], jnp.int32)  # a permutation of labels
  gates = jnp.asarray(1 / (1 + np.exp(-2 * rng.normal(size=(B, D)))), jnp.float32)
  return dict(z1=z1, z2=z2, labels=labels, pair_labels=pair_labels, gates=gates,
              scale=jnp.float32(7.0))


def call(config, b, **over):
  args = dict(b) | over
  objective = objectives.get(config.objective)
  return objective.embedding_loss(config, args["z1"], args["z2"], args["labels"],
                                  args["pair_labels"], args["gates"], args["scale"])


# ------------------------------------------------------------------------------------------------
# logit_scale and probe_loss.
# ------------------------------------------------------------------------------------------------
def test_logit_scale_fixed():
  s = base.logit_scale(make_config(temperature=0.1), {})
  assert s.dtype == jnp.float32 and s.shape == ()
  assert float(s) == np.float32(10.0)
  assert float(base.logit_scale(make_config(temperature=0.5), {"log_scale": 3.0})) == 2.0


def test_logit_scale_learned_is_exp_of_param_with_gradient():
  config = make_config(learn_scale=True, temperature=0.1)
  params = {"log_scale": jnp.float32(np.log(5.0))}
  np.testing.assert_allclose(base.logit_scale(config, params), 5.0, rtol=1e-6)
  # The temperature is not used once the scale is learned; d exp(x) / dx = exp(x).
  grad = jax.grad(lambda p: base.logit_scale(config, p))(params)
  np.testing.assert_allclose(grad["log_scale"], 5.0, rtol=1e-6)


def test_probe_loss_by_hand():
  logits = np.array([[2.0, 0.0, -1.0],
                     [0.0, 0.0, 0.0],
                     [1.0, 3.0, 0.5],
                     [-2.0, 1.0, 4.0]], np.float32)
  labels2 = np.array([0, 2, 0, 2], np.int32)
  ce, acc = base.probe_loss(jnp.asarray(logits), jnp.asarray(labels2))
  log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
  expected = -np.mean([log_softmax[i, labels2[i]] for i in range(4)])
  np.testing.assert_allclose(ce, expected, rtol=1e-6)
  # Row 1 is a three-way tie: argmax picks class 0, so it is wrong; rows 0 and 3 are right.
  assert float(acc) == 0.5
  # A uniform row costs exactly log C.
  ce_uniform, _ = base.probe_loss(jnp.zeros((2, 3)), jnp.array([1, 2]))
  np.testing.assert_allclose(ce_uniform, np.log(3.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The baselines.
# ------------------------------------------------------------------------------------------------
def test_a_registry_line_adds_a_method_that_trains(batch):
  # objectives/__init__.py's "simclr_cross_view" line is the whole method: NT-Xent whose
  # negatives are the other view's samples only, and the config accepts it.
  loss, _ = call(make_config("simclr_cross_view"), batch)
  expected = losses.nt_xent(batch["z1"], batch["z2"], scale=batch["scale"],
                            same_view_negatives=False)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  config = make_config("simclr_cross_view")
  config_schema.validate(config)


def test_simclr_is_nt_xent_with_same_view_negatives(batch):
  loss, metrics = call(make_config("simclr"), batch)
  expected = losses.nt_xent(batch["z1"], batch["z2"], scale=batch["scale"],
                            same_view_negatives=True)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert metrics == {}
  # Labels, pairs and gates are not used at all.
  other, _ = call(make_config("simclr"), batch, labels=None, pair_labels=None, gates=None)
  assert float(other) == float(loss)
  # The documented form, not the one-directional InfoNCE.
  assert not np.isclose(float(loss), float(losses.nt_xent(batch["z1"], batch["z2"],
                                                          scale=batch["scale"])))


def test_supcon_is_supcon_loss_on_both_views_without_self(batch):
  loss, metrics = call(make_config("supcon"), batch)
  z = jnp.concatenate([batch["z1"], batch["z2"]])
  y = jnp.concatenate([batch["labels"], batch["labels"]])
  expected = losses.supcon_loss(z, z, y, y, scale=batch["scale"], exclude_self=True)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert metrics == {}
  # Pair labels and gates are ignored; the anchor labels are not.
  same, _ = call(make_config("supcon"), batch, pair_labels=None, gates=None)
  assert float(same) == float(loss)
  shuffled, _ = call(make_config("supcon"), batch, labels=batch["pair_labels"])
  assert not np.isclose(float(shuffled), float(loss))
  with_self = losses.supcon_loss(z, z, y, y, scale=batch["scale"], exclude_self=False)
  assert not np.isclose(float(with_self), float(loss))


# ------------------------------------------------------------------------------------------------
# SimLAP.
# ------------------------------------------------------------------------------------------------
def _simlap(b, anchors, keys, **kw):
  return losses.simlap_loss(anchors, keys, b["gates"], b["labels"], b["pair_labels"],
                            b["labels"], scale=b["scale"], **kw)


@pytest.mark.parametrize("variant,reduction", [("cosine", "anchor"), ("weighted", "pair")])
def test_simlap_symmetric_is_mean_of_both_directions(batch, variant, reduction):
  config = make_config(symmetric=True, variant=variant, reduction=reduction)
  loss, metrics = call(config, batch)
  kw = dict(variant=variant, reduction=reduction)
  forward = _simlap(batch, batch["z1"], batch["z2"], **kw)
  backward = _simlap(batch, batch["z2"], batch["z1"], **kw)
  np.testing.assert_allclose(loss, 0.5 * (forward + backward), rtol=1e-6)
  assert not np.isclose(float(forward), float(backward))  # both terms matter
  # One shared pair_labels: the loss is not the one with identical pairs.
  identical, _ = call(config, batch, pair_labels=batch["labels"])
  assert not np.isclose(float(identical), float(loss))
  expected_metrics = losses.subspace_diagnostics(
      batch["z1"], batch["z2"], batch["gates"], batch["labels"], batch["pair_labels"],
      batch["labels"], variant=variant)
  assert set(metrics) == set(expected_metrics)  # no gate_penalty when the penalty is 0
  for k, v in expected_metrics.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-6, err_msg=k)


def test_simlap_non_symmetric_is_the_single_term(batch):
  loss, _ = call(make_config(symmetric=False), batch)
  np.testing.assert_allclose(loss, _simlap(batch, batch["z1"], batch["z2"]), rtol=1e-6)


def test_simlap_chunked_matches_unchunked(batch):
  full, _ = call(make_config(chunk_size=0), batch)
  chunked, _ = call(make_config(chunk_size=3), batch)
  np.testing.assert_allclose(chunked, full, rtol=1e-6)


def test_gate_penalty_adds_gamma_entropy_with_gradient(batch):
  gamma = 0.25
  plain = make_config()
  penalised = make_config()
  penalised.gate.penalty = gamma
  loss0, m0 = call(plain, batch)
  loss1, m1 = call(penalised, batch)
  g = np.clip(np.asarray(batch["gates"], np.float64), 1e-6, 1 - 1e-6)
  entropy = float(np.mean(-(g * np.log(g) + (1 - g) * np.log1p(-g))))
  np.testing.assert_allclose(m1["gate_penalty"], entropy, rtol=1e-5)
  np.testing.assert_allclose(loss1 - loss0, gamma * entropy, rtol=1e-5)
  assert "gate_penalty" not in m0

  def loss_of_gates(config, gates):
    return call(config, batch, gates=gates)[0]

  g0 = jax.grad(lambda x: loss_of_gates(plain, x))(batch["gates"])
  g1 = jax.grad(lambda x: loss_of_gates(penalised, x))(batch["gates"])
  # The penalty's own gradient, gamma * dH/dg = gamma * log((1 - g) / g) / (B D), is present.
  expected = gamma * np.log((1 - g) / g) / g.size
  np.testing.assert_allclose(g1 - g0, expected, rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(g1 - g0).max()) > 0
  assert float(jnp.abs(g0).max()) > 0  # and the loss itself trains the gates


def test_unknown_objective_raises(batch):
  with pytest.raises(ValueError, match="byol"):
    call(make_config("byol"), batch)
  assert not hasattr(objectives.get("ce"), "embedding_loss")  # CE is not a two-view loss

