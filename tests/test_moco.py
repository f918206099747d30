"""The momentum-encoder objective (`hydra`, `moco`): loss algebra, EMA, gradients, devices, resume.

Loss-level tests run on random tensors; step-level tests train the tiny test model on real
Fashion-MNIST with plain SGD (no momentum, no weight decay), so a parameter change is exactly
-lr * gradient and gradients can be compared through it.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap.runtime import checkpointing
from simlap import config_schema
from simlap import losses
from simlap.objectives import momentum
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import train_stream
from test_train import tiny_config



def moco_config(method: str = "hydra", **overrides):
  c = config_schema.apply_method(config_schema.base_config(), method)
  c.update_from_flattened_dict(overrides)
  return c


def random_views(b: int = 12, d: int = 8, num_classes: int = 4, seed: int = 0):
  ks = jax.random.split(jax.random.key(seed), 7)
  q1, q2, k1, k2 = (jax.random.normal(k, (b, d)) for k in ks[:4])
  labels = jax.random.randint(ks[4], (b,), 0, num_classes)
  pairs = losses.sample_pair_labels(ks[5], labels, kind="arbitrary")
  gates = jax.nn.sigmoid(2.0 * jax.random.normal(ks[6], (2 * b, d)))  # g(y, y2) over g(y, y)
  return (q1, q2), (k1, k2), labels, pairs, gates


def numpy_infonce(q, k, temperature):
  """MoCo-v3's contrastive_loss: CE of normalized q @ normalized k.T / T, positives diagonal."""
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  k /= np.linalg.norm(k, axis=1, keepdims=True)
  logits = q @ k.T / temperature
  logits -= logits.max(axis=1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(np.diag(logp))


def test_beta_alpha_zero_is_exactly_the_moco_v3_loss():
  config = moco_config("moco", **{"loss.temperature": 0.2})
  queries, keys, labels, pairs, gates = random_views()
  loss, metrics = momentum.moco_loss(config, queries, keys, labels, pairs, gates,
                                       jnp.float32(1 / 0.2))
  want = 0.5 * (numpy_infonce(queries[0], keys[1], 0.2) + numpy_infonce(queries[1], keys[0],
                                                                          0.2))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert set(metrics) == {"instance_loss"}  # no gated term was computed at all


def test_hydra_loss_is_the_weighted_mean_of_instance_and_gated_terms():
  beta, alpha, scale = 1.0, 0.5, 10.0
  config = moco_config("hydra", **{"moco.alpha": alpha})
  (q1, q2), (k1, k2), labels, pairs, gates = random_views()
  loss, metrics = momentum.moco_loss(config, (q1, q2), (k1, k2), labels, pairs, gates,
                                       jnp.float32(scale))
  num = labels.shape[0]

  def d(g, y2):  # the plain-autodiff oracle of the gated loss, both directions
    ref = lambda a, k: losses.simlap_loss_reference(a, k, g, labels, y2, labels,  # noqa: E731
                                                    scale=scale)
    return 0.5 * (float(ref(q1, k2)) + float(ref(q2, k1)))

  instance = 0.5 * (numpy_infonce(q1, k2, 1 / scale) + numpy_infonce(q2, k1, 1 / scale))
  want = (instance + beta * d(gates[:num], pairs) + alpha * d(gates[num:], labels)) / (
      1 + alpha + beta)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["class_loss"]), d(gates[num:], labels), rtol=1e-5)


def test_keys_and_warm_up_queries_get_no_gradient_from_the_gated_loss():
  config = moco_config("hydra")
  queries, keys, labels, pairs, gates = random_views()
  scale = jnp.float32(10.0)

  def total(queries, keys, gates, warm):
    return momentum.moco_loss(config, queries, keys, labels, pairs, gates[:12], scale, warm)[0]

  def instance_only(queries):
    return momentum.moco_loss(moco_config("moco"), queries, keys, labels, pairs, None,
                                scale)[0]

  for warm in (True, False):
    gq, gk, gg = jax.grad(total, argnums=(0, 1, 2))(queries, keys, gates, warm)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in gk), "a key received a gradient"
    assert float(jnp.abs(gg).max()) > 0  # the gate always learns from D
    # In warm-up the queries see only the instance term, divided by 1 + beta.
    half = jax.tree.map(lambda g: g / 2, jax.grad(instance_only)(queries))
    close = all(np.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(gq, half))
    assert close == warm


def test_momentum_schedule_and_ema_match_numpy():
  config = moco_config(**{"moco.momentum": 0.99})
  schedule = momentum.momentum_schedule(config, 100)
  for t in (0, 1, 37, 50, 99, 100, 120):
    want = 1 - (1 - 0.99) * (1 + math.cos(math.pi * min(t, 100) / 100)) / 2
    np.testing.assert_allclose(float(schedule(t)), want, rtol=1e-6)
  rng = np.random.default_rng(0)
  ema = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": np.float32(2.0)}}
  online = jax.tree.map(lambda x: np.asarray(x + 1.0, np.float32), ema)
  out = momentum.ema_update(ema, online, jnp.float32(0.9))
  for got, e, o in zip(jax.tree.leaves(out), jax.tree.leaves(ema), jax.tree.leaves(online)):
    np.testing.assert_allclose(got, 0.9 * e + 0.1 * o, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The train step on real data.
# ------------------------------------------------------------------------------------------------
def step_config(data_dir, method="hydra", **overrides):
  # Warm-up of exactly one step: 2048 images / batch 32 = 64 steps per epoch.
  return config_schema.apply_method(tiny_config(data_dir, **{
      "optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
      "optimizer.lr": 0.1, "model.predictor_hidden": (32,), "moco.gate_warmup_epochs": 1 / 64,
      **overrides}), method)


@pytest.fixture(scope="module")
def batches(fmnist_data_dir):
  config = tiny_config(fmnist_data_dir)
  stream = train_stream.train_iterator(config, sharding.make_mesh(config.mesh), seed=0)
  return [jax.device_get(next(stream)) for _ in range(3)]


def run(config, mesh, batches):
  """States (host copies) before and after each step, and the metrics, key -> list over steps."""
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  state = trainer.init_fn()
  states, history = [jax.device_get(state)], {}
  for batch in batches:
    state, metrics = trainer.step_fn(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    states.append(jax.device_get(state))
    for k, v in metrics.items():
      history.setdefault(k, []).append(float(v))
  return states, history


@pytest.fixture(scope="module")
def hydra_runs(fmnist_data_dir, batches):
  one = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  eight = sharding.make_mesh([("data", -1)])
  config = step_config(fmnist_data_dir)
  fsdp = step_config(fmnist_data_dir, **{"sharding.params": "fsdp", "sharding.fsdp_min_size": 0})
  return {"1": run(config, one, batches), "8": run(config, eight, batches),
          "8 fsdp": run(fsdp, eight, batches),
          # 12 steps (the 3 batches 4 times): the warm-up test needs 1, the learning test all.
          "moco 1": run(step_config(fmnist_data_dir, "moco"), one, batches * 4)}


def assert_trees_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tol)


@pytest.mark.parametrize("name", ["8", "8 fsdp"])
def test_moco_step_on_eight_devices_matches_one(hydra_runs, name):
  (states1, metrics1), (states8, metrics8) = hydra_runs["1"], hydra_runs[name]
  # Step 1 (gate warm-up) is not chaotic: the same loss, params and key encoder to round-off.
  np.testing.assert_allclose(metrics8["loss"][:2], metrics1["loss"][:2], rtol=1e-5)
  assert_trees_close(states8[1].params, states1[1].params, rtol=1e-5, atol=5e-6)
  assert_trees_close(states8[1].momentum, states1[1].momentum, rtol=1e-5, atol=5e-6)
  # Step 2, where D also trains the queries, starts from params that differ by round-off, which
  # BatchNorm amplifies a little: compare each leaf's update (-lr * gradient) in norm. A wrong
  # cross-device gradient (keys not gathered, a per-device loss) is off by tens of percent.
  # Whole modules, not leaves: a bias before a BatchNorm has a zero gradient up to round-off.
  for part in ("backbone", "projector", "predictor", "gate"):
    d8, d1 = module_update(states8, part, t=2), module_update(states1, part, t=2)
    err = np.linalg.norm(d8 - d1) / np.linalg.norm(d1)
    assert err < 2e-3, (part, err)


def test_ema_in_the_step_follows_the_schedule(hydra_runs, fmnist_data_dir):
  states, _ = hydra_runs["1"]
  schedule = momentum.momentum_schedule(step_config(fmnist_data_dir), 8)
  # Step 0 copies the query encoder; step t then mixes in the params the step started from.
  assert_trees_close(states[0].momentum["params"],
                     momentum.key_subset(states[0].params["model"]), rtol=0, atol=0)
  for t in (1, 2, 3):
    m = float(schedule(t - 1))
    want = jax.tree.map(lambda e, p: m * e + (1 - m) * p, states[t - 1].momentum["params"],
                        momentum.key_subset(states[t - 1].params["model"]))
    assert_trees_close(states[t].momentum["params"], want, rtol=1e-6, atol=1e-7)
  assert set(states[1].momentum) == {"params", "batch_stats"}
  assert "predictor" not in states[1].momentum["params"]  # the key side has no predictor
  # The key encoder's BN statistics are its own, moved by its own forward passes: after step 1
  # (the same weights as the queries' and the same views) they equal the query side's, later
  # they follow the EMA weights.
  key_stats = lambda t: states[t].momentum["batch_stats"]["backbone"]  # noqa: E731
  query_stats = lambda t: states[t].batch_stats["backbone"]  # noqa: E731
  assert_trees_close(key_stats(1), query_stats(1), rtol=1e-6, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(key_stats(3))[0], jax.tree.leaves(query_stats(3))[0],
                         rtol=1e-6, atol=1e-7)


def module_update(states, part, t=1):
  """Step t's change of one module's params, flattened (float64: small differences of floats)."""
  return np.concatenate([np.ravel(np.asarray(a, np.float64) - b) for a, b in zip(
      jax.tree.leaves(states[t].params["model"][part]),
      jax.tree.leaves(states[t - 1].params["model"][part]))])


def test_gate_warm_up_leaves_the_backbone_to_the_instance_loss_while_the_gate_moves(hydra_runs):
  (hydra, metrics), (moco, _) = hydra_runs["1"], hydra_runs["moco 1"]
  # Same init and data; SGD: in warm-up, hydra's update of the query side is exactly the
  # instance loss's, divided by 1 + beta = 2 (params are float32: compare the updates in norm).
  for part in ("backbone", "projector", "predictor"):
    half = module_update(moco, part) / 2
    err = np.linalg.norm(module_update(hydra, part) - half) / np.linalg.norm(half)
    assert err < 1e-4, (part, err)
  assert np.abs(module_update(hydra, "gate")).max() > 1e-4  # the gate learns from D
  assert np.abs(module_update(moco, "gate")).max() == 0.0  # moco: no D, no gate gradient
  # The warm-up ends after its one step (what D then does to the queries: the loss-level test).
  assert metrics["gate_warmup"] == [1.0, 0.0, 0.0]


def test_moco_preset_learns(hydra_runs):
  losses_ = hydra_runs["moco 1"][1]["loss"]
  assert np.all(np.isfinite(losses_)) and np.mean(losses_[-3:]) < np.mean(losses_[:3]), losses_


def test_hydra_resume_is_bitwise_and_hydra_learns(fmnist_data_dir, tmp_path):
  def final_state(config, workdir):
    trainer = train.make_trainer(config, sharding.make_mesh(config.mesh),
                                 datasets.get_dataset_info(config))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=4,
                                      keep=2)
    state, _, step = ckpt.restore(trainer.abstract_state)
    ckpt.close()
    return step, jax.device_get(state)

  config = config_schema.apply_method(tiny_config(fmnist_data_dir, **{
      "optimizer.lr": 3e-3, "model.predictor_hidden": (32,), "num_steps": 16,
      "checkpoint_every": 8, "log_every": 4}), "hydra")
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=8)["preempted"]
  assert train.train_and_evaluate(config, str(tmp_path / "resumed"))["step"] == 16
  (s1, a), (s2, b) = (final_state(config, str(tmp_path / d)) for d in ("straight", "resumed"))
  assert s1 == s2 == 16 and straight["step"] == 16
  for x, y in zip(jax.tree.leaves((a.params, a.momentum, a.opt_state)),
                  jax.tree.leaves((b.params, b.momentum, b.opt_state))):
    np.testing.assert_array_equal(x, y)
  # Loss goes down over 16 steps (means of the first and last two logged steps).
  from simlap.runtime import metrics_io  # noqa: PLC0415
  rows = [r for r in metrics_io.read_jsonl(str(tmp_path / "straight" / "metrics.jsonl"))
          if "loss" in r]
  assert np.mean([r["loss"] for r in rows[-2:]]) < np.mean([r["loss"] for r in rows[:2]])
