"""training/optim.py: schedules, LR scaling, step counts, weight-decay masks, the probe's Adam.

Everything here is a few scalars or tiny arrays: no model is built and nothing takes seconds.
"""
from __future__ import annotations
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simlap import config_schema
from simlap.training import optim

# num_train // batch_size = 1000 // 100 = 10 steps per epoch.
NUM_TRAIN, BATCH = 1000, 100


def make_config(**overrides):
  c = config_schema.base_config()
  c.batch_size = BATCH
  c.num_epochs = 5.0  # 50 steps
  c.num_steps = 0
  c.optimizer.lr = 0.4
  c.optimizer.warmup_epochs = 1.0  # 10 steps
  c.update_from_flattened_dict(overrides)  # {"optimizer.lr": 0.1, ...}
  return c


def params_tree():
  """{"model": {...}, "log_scale": ()} shaped like the trainer's params, with 1-D and N-D leaves."""
  return {
      "model": {
          "backbone": {"conv": {"kernel": jnp.full((2, 2, 1, 3), 2.0)},
                       "bn": {"scale": jnp.full((3,), 3.0), "bias": jnp.full((3,), -1.5)}},
          "projector": {"dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 4.0]]),
                                  "bias": jnp.array([0.25, -0.75])}},
          "probe": {"fc": {"kernel": jnp.full((3, 4), -0.5), "bias": jnp.full((4,), 0.5)}},
      },
      "log_scale": jnp.asarray(np.log(10.0), jnp.float32),
  }


def one_update(tx, params, grads, steps=1):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


# ------------------------------------------------------------------------------------------------
# Step counts and the peak learning rate.
# ------------------------------------------------------------------------------------------------
def test_steps_per_epoch_and_total_steps():
  c = make_config()
  assert optim.steps_per_epoch(c.batch_size, NUM_TRAIN) == 10
  assert optim.steps_per_epoch(c.batch_size, 1099) == 10  # the last partial batch is dropped
  assert optim.steps_per_epoch(c.batch_size, 37) == 1  # never 0, even when one batch is more
  assert optim.total_steps(c, NUM_TRAIN) == 50
  c.num_epochs = 2.5
  assert optim.total_steps(c, NUM_TRAIN) == 25
  c.num_epochs = 2.55  # 25.5 steps: rounded up
  assert optim.total_steps(c, NUM_TRAIN) == 26
  c.num_epochs = 0.001
  assert optim.total_steps(c, NUM_TRAIN) == 1
  c.num_steps = 7  # overrides num_epochs, whatever num_train is
  assert optim.total_steps(c, NUM_TRAIN) == 7
  assert optim.total_steps(c, 10) == 7
  c.num_epochs = 0.0
  assert optim.total_steps(c, NUM_TRAIN) == 7  # num_epochs is not needed with num_steps


def test_peak_learning_rate_and_linear_scaling():
  c = make_config(**{"optimizer.lr": 0.3, "batch_size": 512})
  assert optim.peak_learning_rate(c) == 0.3  # "none" is the default
  c.optimizer.lr_scaling = "linear"
  assert optim.peak_learning_rate(c) == 0.3 * 512 / 256
  c.batch_size = 64
  assert optim.peak_learning_rate(c) == 0.3 * 64 / 256 == 0.075
  # The schedule peaks at the scaled value (4096 / 64 = 64 steps per epoch, warmup 64 steps).
  c.num_epochs, c.optimizer.warmup_epochs = 3.0, 1.0
  schedule = optim.learning_rate_schedule(c, 4096)
  assert float(schedule(64)) == pytest.approx(0.075, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Schedules.
# ------------------------------------------------------------------------------------------------
def test_cosine_schedule_values():
  peak, warmup, total = 0.4, 10, 50
  schedule = optim.learning_rate_schedule(make_config(), NUM_TRAIN)
  got = np.array([float(schedule(s)) for s in range(total + 3)])
  expected = [peak * s / warmup for s in range(warmup)]  # linear from 0
  expected += [peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
               for s in range(warmup, total + 1)]  # cosine to 0 at the last step
  expected += [0.0, 0.0]  # and 0 after it
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert got[0] == 0.0 and got[warmup] == pytest.approx(peak, rel=1e-7)
  assert got[5] == pytest.approx(peak / 2, rel=1e-6)  # half way up the warmup
  assert got[30] == pytest.approx(peak / 2, rel=1e-6)  # half way down the cosine
  assert got[total] == 0.0


def test_constant_schedule_values():
  schedule = optim.learning_rate_schedule(make_config(**{"optimizer.schedule": "constant"}),
                                          NUM_TRAIN)
  got = np.array([float(schedule(s)) for s in (0, 1, 5, 9, 10, 11, 30, 49, 50, 1000)])
  np.testing.assert_allclose(got, [0.0, 0.04, 0.2, 0.36, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4],
                             rtol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_no_warmup_starts_at_peak(schedule):
  s = optim.learning_rate_schedule(
      make_config(**{"optimizer.warmup_epochs": 0.0, "optimizer.schedule": schedule}), NUM_TRAIN)
  assert float(s(0)) == pytest.approx(0.4, rel=1e-7)
  if schedule == "cosine":
    assert float(s(25)) == pytest.approx(0.2, rel=1e-6)  # cosine over all 50 steps


def test_warmup_length_rounding_and_clipping():
  # 0.35 epochs = 3.5 steps -> 4 warmup steps: lr(4) is the peak, lr(2) half of it.
  s = optim.learning_rate_schedule(make_config(**{"optimizer.warmup_epochs": 0.35,
                                                  "optimizer.schedule": "constant"}), NUM_TRAIN)
  assert float(s(2)) == pytest.approx(0.2, rel=1e-6)
  assert float(s(4)) == pytest.approx(0.4, rel=1e-7)
  # Warmup longer than the run is clipped to total - 1 steps, so the peak is still reached.
  s = optim.learning_rate_schedule(make_config(**{"optimizer.warmup_epochs": 100.0,
                                                  "num_steps": 5}), NUM_TRAIN)
  np.testing.assert_allclose([float(s(i)) for i in range(6)], [0.0, 0.1, 0.2, 0.3, 0.4, 0.0],
                             rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Weight decay: kernels decay, 1-D leaves (biases, norm scales) and the scalar log_scale do not.
# ------------------------------------------------------------------------------------------------
def test_decay_mask():
  mask = optim.decay_mask(params_tree())
  assert mask["model"]["backbone"]["conv"]["kernel"] is True
  assert mask["model"]["projector"]["dense"]["kernel"] is True
  assert mask["model"]["backbone"]["bn"]["scale"] is False
  assert mask["model"]["backbone"]["bn"]["bias"] is False
  assert mask["model"]["projector"]["dense"]["bias"] is False
  assert mask["log_scale"] is False


def _expected_zero_grad_step(name, p, lr, wd, momentum):
  """One step from a zero gradient, by hand: only the decay (kernels only) moves anything."""
  p = np.asarray(p, np.float64)
  if name == "adamw":  # decoupled: p - lr * wd * p (Adam's own update of 0 is 0)
    return p - lr * wd * p
  if name == "adam_l2":  # Adam's first step on the gradient wd * p: lr * g / (|g| + 1e-8)
    g = wd * p
    return p - lr * g / (np.abs(g) + 1e-8)
  if name == "sgd":  # momentum trace starts at 0: the first step is p - lr * wd * p
    return p - lr * wd * p
  if name == "lars":  # trust ratio 1e-3 |p| / |wd p| rescales wd * p to 1e-3 * p
    return p - lr * 1e-3 * p
  raise AssertionError(name)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_zero_gradient_step_decays_kernels_only(name):
  lr, wd, momentum = 0.5, 0.1, 0.9
  c = make_config(**{"optimizer.name": name, "optimizer.lr": lr, "optimizer.weight_decay": wd,
                     "optimizer.momentum": momentum, "optimizer.warmup_epochs": 0.0})
  tx, schedule = optim.make_optimizer(c, NUM_TRAIN, separate_probe=False)
  assert float(schedule(0)) == lr
  params = params_tree()
  new = one_update(tx, params, jax.tree.map(jnp.zeros_like, params))
  flat_old = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_new = jax.tree.leaves(new)
  moved = []
  for (path, old), updated in zip(flat_old, flat_new):
    name_ = jax.tree_util.keystr(path)
    if old.ndim > 1:
      expected = _expected_zero_grad_step(name, old, lr, wd, momentum)
      # Compared as steps (new - old), so a step that lands near 0 is still judged relative to
      # its size; atol covers float32 rounding of p + step. adam_l2: optax's float32 bias
      # correction 1 - 0.999 is off by 1.3e-5 relative, so g / sqrt(v_hat) is off by ~7e-6.
      rtol = 2e-5 if name == "adam_l2" else 1e-6
      np.testing.assert_allclose(np.asarray(updated, np.float64) - np.asarray(old, np.float64),
                                 expected - np.asarray(old, np.float64), rtol=rtol,
                                 atol=1e-6 * float(jnp.abs(old).max()), err_msg=name_)
      assert not np.array_equal(updated, old), name_
      moved.append(name_)
    else:  # biases, norm scales and log_scale: exactly unchanged
      np.testing.assert_array_equal(updated, old, err_msg=name_)
  assert len(moved) == 3  # the two kernels and the probe kernel (no separate probe here)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_zero_weight_decay_zero_gradient_moves_nothing(name):
  c = make_config(**{"optimizer.name": name, "optimizer.weight_decay": 0.0,
                     "optimizer.warmup_epochs": 0.0})
  tx, _ = optim.make_optimizer(c, NUM_TRAIN, separate_probe=True)
  params = params_tree()
  new = one_update(tx, params, jax.tree.map(jnp.zeros_like, params), steps=2)
  jax.tree.map(np.testing.assert_array_equal, new, params)


def test_sgd_gradient_step_and_momentum():
  """Plain numbers: p1 = p0 - lr (g + wd p0); p2 = p1 - lr (m (g + wd p0) + g + wd p1)."""
  lr, wd, m = 0.1, 0.01, 0.9
  c = make_config(**{"optimizer.name": "sgd", "optimizer.lr": lr, "optimizer.weight_decay": wd,
                     "optimizer.momentum": m, "optimizer.schedule": "constant",
                     "optimizer.warmup_epochs": 0.0})
  tx, _ = optim.make_optimizer(c, NUM_TRAIN, separate_probe=False)
  params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}
  grads = {"kernel": jnp.array([[0.5, 0.5]]), "bias": jnp.array([1.0])}
  state = tx.init(params)
  p0 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
  d1 = {"kernel": g["kernel"] + wd * p0["kernel"], "bias": g["bias"]}
  p1 = {k: p0[k] - lr * d1[k] for k in p0}
  d2 = {"kernel": g["kernel"] + wd * p1["kernel"], "bias": g["bias"]}
  p2 = {k: p1[k] - lr * (m * d1[k] + d2[k]) for k in p0}
  for expected in (p1, p2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in params:
      np.testing.assert_allclose(params[k], expected[k], rtol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------------------------
# The probe's own Adam.
# ------------------------------------------------------------------------------------------------
def _moved(old, new):
  return {jax.tree_util.keystr(path): not np.array_equal(o, n) for (path, o), n in
          zip(jax.tree_util.tree_flatten_with_path(old)[0], jax.tree.leaves(new))}


def test_probe_has_its_own_adam_unaffected_by_schedule():
  probe_lr = 0.01
  # Step 0 of a warmup: the main learning rate is exactly 0, so only the probe may move.
  c = make_config(**{"optimizer.name": "sgd", "optimizer.probe_lr": probe_lr,
                     "optimizer.weight_decay": 0.5})
  tx, schedule = optim.make_optimizer(c, NUM_TRAIN, separate_probe=True)
  assert float(schedule(0)) == 0.0
  params = params_tree()
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 2.0), params)
  new = one_update(tx, params, grads)
  moved = _moved(params, new)
  assert {k for k, v in moved.items() if v} == {"['model']['probe']['fc']['bias']",
                                                "['model']['probe']['fc']['kernel']"}, moved
  # Adam's first step is lr * g / (|g| + eps): -probe_lr per element for a gradient of 2, with
  # no weight decay on the probe (the main optimizer's decay of 0.5 would be visible).
  probe = new["model"]["probe"]["fc"]
  np.testing.assert_allclose(probe["kernel"], -0.5 - probe_lr * 2 / (2 + 1e-8), rtol=1e-6)
  np.testing.assert_allclose(probe["bias"], 0.5 - probe_lr * 2 / (2 + 1e-8), rtol=1e-6)

  # Late in the schedule the main lr is 0 again (end of the cosine) and the probe's is not.
  state = tx.init(params)
  for _ in range(51):  # the k-th update uses schedule(k - 1): the last one schedule(50) = 0
    updates, state = tx.update(grads, state, params)
  assert float(schedule(50)) == 0.0
  np.testing.assert_allclose(updates["model"]["probe"]["fc"]["bias"], -probe_lr, rtol=1e-5)
  np.testing.assert_array_equal(updates["model"]["backbone"]["bn"]["scale"], 0.0)


def test_probe_adam_ignores_main_optimizer_and_lr():
  """The probe's update is the same whatever the main optimizer and its learning rate."""
  params = params_tree()
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
  probes = []
  for name, lr in (("adamw", 1e-3), ("sgd", 0.5), ("lars", 2.0), ("adam_l2", 0.1)):
    c = make_config(**{"optimizer.name": name, "optimizer.lr": lr,
                       "optimizer.warmup_epochs": 0.0, "optimizer.probe_lr": 0.02})
    tx, _ = optim.make_optimizer(c, NUM_TRAIN, separate_probe=True)
    probes.append(one_update(tx, params, grads, steps=3)["model"]["probe"])
  for other in probes[1:]:
    jax.tree.map(np.testing.assert_array_equal, other, probes[0])
  expected = optax.apply_updates(
      params["model"]["probe"],
      _adam_updates(0.02, params["model"]["probe"], grads["model"]["probe"], 3))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), probes[0], expected)


def _adam_updates(lr, params, grads, steps):
  """Sum of `steps` plain-Adam updates on a constant gradient (the reference)."""
  tx = optax.adam(lr)
  state = tx.init(params)
  total = jax.tree.map(jnp.zeros_like, params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    total = jax.tree.map(jnp.add, total, updates)
  return total


def test_without_separate_probe_the_probe_follows_the_main_optimizer():
  c = make_config(**{"optimizer.name": "sgd", "optimizer.weight_decay": 0.0,
                     "optimizer.probe_lr": 0.0})  # probe_lr is not read (the "ce" baseline)
  tx, schedule = optim.make_optimizer(c, NUM_TRAIN, separate_probe=False)
  params = params_tree()
  grads = jax.tree.map(jnp.ones_like, params)
  assert float(schedule(0)) == 0.0
  jax.tree.map(np.testing.assert_array_equal, one_update(tx, params, grads), params)


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,separate_probe,match", [
    ({"optimizer.name": "adagrad"}, False, "optimizer.name='adagrad'"),
    ({"optimizer.lr_scaling": "sqrt"}, False, "lr_scaling='sqrt'"),
    ({"optimizer.lr": 0.0}, False, "optimizer.lr must be positive"),
    ({"optimizer.lr": -1e-3}, False, "optimizer.lr must be positive"),
    ({"optimizer.schedule": "step"}, False, "schedule='step'"),
    ({"optimizer.probe_lr": 0.0}, True, "probe_lr must be positive"),
    ({"num_epochs": 0.0}, False, "num_epochs"),
])
def test_bad_values_raise_clear_errors(overrides, separate_probe, match):
  # config_schema.validate is the one early check of a config (before any data is read).
  del separate_probe
  with pytest.raises(ValueError, match=match):
    config_schema.validate(make_config(**overrides))


@pytest.mark.parametrize("overrides,separate_probe,match", [
    ({"optimizer.name": "adagrad"}, False, "optimizer.name='adagrad'"),
    ({"optimizer.schedule": "step"}, False, "schedule='step'"),
    ({"optimizer.probe_lr": 0.0}, True, "probe_lr must be positive"),
    ({"num_epochs": 0.0}, False, "num_epochs"),
])
def test_optimizer_used_as_a_library_refuses_bad_values(overrides, separate_probe, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(make_config(**overrides), NUM_TRAIN, separate_probe=separate_probe)
