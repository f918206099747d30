"""One jitted update for every objective: (state, global batch) -> (state, metrics).

The objective (`simlap.objectives.get(config.objective)`) supplies the pair labels, the loss
and its own state updates; this module applies the gradient and the rules every run shares.
Every random key is `fold_in(key(seed), step)`, so the step alone fixes a resumed step's
randomness. A non-finite loss or gradient is never applied.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from simlap import objectives
from simlap.data import device_colour
from simlap.runtime import sharding
from simlap.training import state as state_lib

# Codes for TrainState.nonfinite: which quantity first went NaN/Inf.
_NONFINITE_NAMES = {1: "loss", 2: "gradient norm"}


def _fields(shardings, *names):
  """The shardings of some state fields (one, or a tuple), or None in replicated mode."""
  if shardings is None:
    return None
  parts = tuple(getattr(shardings, name) for name in names)
  return parts[0] if len(parts) == 1 else parts


def device_views(batch: dict[str, jax.Array], config) -> dict[str, jax.Array]:
  """The views as the model takes them, float32 (B, H, W, C) in [0, 1], made on the device.

  uint8 views in [0, 255] are divided by 255 (the host sends uint8 to move a quarter of
  float32's bytes); where the batch holds `view1_colour` / `view2_colour` (B, P), the host sent
  the crops before the colour stage and it runs here (`device_colour.second_stage`, with the
  view's config). The parameter arrays leave the batch.
  """
  out = dict(batch)
  for name, view in (("view1", config.augment.view1), ("view2", config.augment.view2)):
    v = out[name]
    v = v.astype(jnp.float32) / 255 if v.dtype == jnp.uint8 else v
    if name + "_colour" in out:
      v = device_colour.second_stage(v, out.pop(name + "_colour"), view)
    out[name] = v
  return out


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *, config, model, tx,
               schedule, fsdp=None, constants: Any = None
               ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimisation step on a global batch.

  Args:
    state: the train state (its objective's subclass, if it has one).
    batch: {view1, view2: (B, H, W, C) float32 in [0, 1] or uint8 in [0, 255], optionally
      view1_colour, view2_colour: (B, P) (`device_views`), label: (B,) int}; the objective may
      read more keys (`true_label`).
    config, model, tx, schedule: the run's config, model, optimizer and learning-rate schedule.
    fsdp: the state's shardings under FSDP; None when replicated.
    constants: the objective's `step_constants` (its schedules).

  Returns:
    (the next state, scalar metrics: the objective's plus loss, grad_norm, learning_rate).
  """
  objective = objectives.get(config.objective)
  batch = device_views(batch, config)
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  pair_rng, gate_rng = jax.random.split(rng)
  params, stats = sharding.gather((state.params, state.batch_stats),
                                  _fields(fsdp, "params", "batch_stats"))
  pair_labels = objective.pair_labels(config, pair_rng, batch["label"], model.num_classes)
  context = objective.prepare(state, batch, model=model, constants=constants, shardings=fsdp)
  loss_fn = functools.partial(objective.loss, config=config, model=model, batch=batch,
                              pair_labels=pair_labels, gate_rng=gate_rng, context=context)
  grads, (loss, metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(params, stats)
  # FSDP: whole weights and BN statistics in, gradient and statistics shards out (sharding.py).
  grads, batch_stats = sharding.scatter((grads, batch_stats),
                                        _fields(fsdp, "params", "batch_stats"))
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  # Never apply a non-finite update: keep the last good state and record where it happened.
  code = jnp.where(~jnp.isfinite(loss), 1, jnp.where(~jnp.isfinite(grad_norm), 2, 0))
  ok = code == 0
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  first_bad = (state.nonfinite == 0) & ~ok
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
      nonfinite=jnp.where(first_bad, code, state.nonfinite))
  new_state = objective.after_update(new_state, state, context, keep, fsdp)
  metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step))
  return new_state, metrics


def raise_if_nonfinite(state: state_lib.TrainState) -> None:
  """Host check (one scalar fetch): stop the run, naming the step and the metric.

  Steps are numbered as in metrics.jsonl and checkpoints (step s = the state after s updates),
  so "at step s" is the metrics row whose loss is null, and s - 1 the last good state.
  """
  code = int(jax.device_get(state.nonfinite))
  if code:
    step = int(jax.device_get(state.nonfinite_step)) + 1
    raise FloatingPointError(
        f"non-finite {_NONFINITE_NAMES[code]} at step {step}; that update was not applied and no "
        f"checkpoint after step {step - 1} was written. Lower the learning rate or check the "
        "data.")
