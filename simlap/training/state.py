"""The train state: its fields, the model and optimizer it belongs to, its first value, and its
shape-only form with shardings.

Training and evaluation both take the state's layout from here, so evaluation restores a
checkpoint without building the train step. The objective (`simlap.objectives.get`) adds its
own fields (the momentum encoder) and the model's parts (the predictor).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from simlap.data import datasets
from simlap.models import model as model_lib
from simlap.runtime import sharding
from simlap.training import optim


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree Orbax saves as is.

  params: {"model": flax params, "log_scale": () when learned}.
  nonfinite_step / nonfinite: step and code of the first NaN/Inf (-1 / 0 while healthy). A bad
  update is never applied, so the state stays the last good one and can still be checkpointed.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_step: jax.Array
  nonfinite: jax.Array


def build(config: ml_collections.ConfigDict, info: datasets.DatasetInfo, objective,
          platform: str | None = None):
  """(model, optimizer, LR schedule) of `config` for `objective` on a dataset described by
  `info`; `platform` is the one the step is compiled for (None = JAX's default backend)."""
  model = model_lib.build_model(config.model, config.gate, info.num_classes,
                                predictor=objective.predictor, platform=platform)
  tx, schedule = optim.make_optimizer(config, info.num_train,
                                      separate_probe=not objective.probe_is_objective)
  return model, tx, schedule


def num_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """The run's length in optimizer steps (its schedule's) on a split of `num_train` images."""
  return optim.total_steps(config, num_train)


def view_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of one augmented view."""
  d = config.dataset
  return (d.image_size, d.image_size, d.channels)


def init_state(config: ml_collections.ConfigDict, model, tx, objective) -> TrainState:
  """Fresh state; called under `jax.jit` so every leaf is born with its sharding."""
  params_rng, gate_rng = jax.random.split(jax.random.key(config.seed))
  images = jnp.zeros((2, *view_shape(config)), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32)
  variables = model.init({"params": params_rng, "gate": gate_rng}, images, labels, labels,
                         train=False)
  params = {"model": variables["params"]}
  if config.loss.learn_scale:
    params["log_scale"] = jnp.log(jnp.float32(1.0 / config.loss.temperature))
  fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                nonfinite_step=jnp.full((), -1, jnp.int32), nonfinite=jnp.zeros((), jnp.int32))
  return objective.init_state(TrainState, fields, variables)


def abstract_state(config: ml_collections.ConfigDict, model, tx, objective, mesh):
  """(ShapeDtypeStructs of the state with their shardings, the shardings): what a checkpoint
  restores into. Replicated, or split by `config.sharding.params` (FSDP)."""
  abstract = jax.eval_shape(functools.partial(init_state, config, model, tx, objective))
  shardings = sharding.state_shardings(abstract, mesh, config.sharding.params,
                                       config.sharding.fsdp_min_size)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings
