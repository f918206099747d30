"""The train step: `TrainState`, its initialisation and one jitted update, for every objective.

`train_step` is pure: (state, global batch) -> (state, metrics). simlap/train.py jits it with
shardings and runs the loop. Objectives other than "moco" see both views in one forward pass
(`_two_view_loss`); "moco" runs a momentum encoder and a predictor (simlap/momentum.py). Every
random key is `fold_in(key(seed), step)`, so the step alone fixes a resumed step's randomness.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from simlap import losses
from simlap import momentum as momentum_lib
from simlap import objectives
from simlap import optim
from simlap import sharding
from simlap.data import datasets
from simlap.models import model as model_lib

# Codes for TrainState.nonfinite: which quantity first went NaN/Inf.
_NONFINITE_NAMES = {1: "loss", 2: "gradient norm"}


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


@flax.struct.dataclass
class MomentumTrainState(TrainState):
  """TrainState of objective "moco": also the key encoder, momentum = {"params",
  "batch_stats"} of its backbone and projector (simlap/momentum.py). A subclass rather than a
  field of every state, so the other objectives' checkpoints keep their exact tree."""
  momentum: Any


def build(config: ml_collections.ConfigDict, info: datasets.DatasetInfo,
          platform: str | None = None):
  """Model, optimizer and LR schedule for `config` on a dataset described by `info`; `platform`
  is the one the step is compiled for (None = JAX's default backend)."""
  model = model_lib.build_model(config.model, config.gate, info.num_classes,
                                predictor=config.objective == "moco", platform=platform)
  tx, schedule = optim.make_optimizer(config, info.num_train,
                                      separate_probe=config.objective != "ce")
  return model, tx, schedule


def init_state(config, model, tx, image_shape) -> TrainState:
  """Fresh state; called under `jax.jit` so every leaf is born with its sharding."""
  rng = jax.random.key(config.seed)
  params_rng, gate_rng = jax.random.split(rng)
  images = jnp.zeros((2, *image_shape), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32)
  variables = model.init({"params": params_rng, "gate": gate_rng}, images, labels, labels,
                         train=False)
  params = {"model": variables["params"]}
  if config.loss.learn_scale:
    params["log_scale"] = jnp.log(jnp.float32(1.0 / config.loss.temperature))
  batch_stats = variables.get("batch_stats", {})
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32),
                nonfinite=jnp.zeros((), jnp.int32))
  if config.objective == "moco":
    return MomentumTrainState(**fields, momentum=momentum_lib.init_momentum(
        variables["params"], batch_stats))
  return TrainState(**fields)


def _two_view_loss(params, stats, *, config, model, batch, pair_labels, gate_rng):
  """The loss of every objective but "moco", to differentiate w.r.t. `params`: returns
  (loss + probe loss, (loss, metrics, new batch_stats))."""
  labels = batch["label"]
  num = labels.shape[0]
  variables = {"params": params["model"], "batch_stats": stats}
  # Both views in one pass: BatchNorm normalises over all 2B images, as in SimCLR.
  images = jnp.concatenate([batch["view1"], batch["view2"]])
  out, updates = model.apply(variables, images, labels, pair_labels, train=True,
                             mutable=["batch_stats"], rngs={"gate": gate_rng})
  z1, z2 = out["embeddings"][:num], out["embeddings"][num:]
  # The online probe evaluates the features: it learns the true labels even when the objective
  # sees random ones (dataset.random_labels; the stream then carries both). CE's objective is
  # the probe, so it learns the labels the objective is given.
  probe_labels = labels if config.objective == "ce" else batch.get("true_label", labels)
  probe_ce, probe_acc = objectives.probe_loss(out["probe_logits"],
                                              jnp.concatenate([probe_labels, probe_labels]))
  metrics = {"probe_loss": probe_ce, "probe_accuracy": probe_acc}
  if config.objective == "ce":
    return probe_ce, (probe_ce, metrics, updates["batch_stats"])
  scale = objectives.logit_scale(config, params)
  loss, extra = objectives.contrastive_loss(config, z1, z2, labels, pair_labels,
                                            out.get("gates"), scale)
  metrics.update(extra, logit_scale=scale)
  # The probe sees stop-gradient features: adding its loss trains only the probe.
  return loss + probe_ce, (loss, metrics, updates["batch_stats"])


def _fields(shardings, *names):
  """The shardings of some state fields (one, or a tuple), or None in replicated mode."""
  if shardings is None:
    return None
  parts = tuple(getattr(shardings, name) for name in names)
  return parts[0] if len(parts) == 1 else parts


def float_views(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """uint8 views (B, H, W, C) in [0, 255] -> float32 in [0, 1], on the device; float views
  pass through. The host sends uint8 to move a quarter of float32's bytes."""
  to_float = lambda v: v.astype(jnp.float32) / 255 if v.dtype == jnp.uint8 else v  # noqa: E731
  return {**batch, "view1": to_float(batch["view1"]), "view2": to_float(batch["view2"])}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, config, model, tx,
               schedule, fsdp=None, moco=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on a global batch {view1, view2: (B, H, W, C), label: (B,)}.

  Views are float32 in [0, 1] or uint8 in [0, 255] (`float_views`). `fsdp`: the state's
  shardings under FSDP; None when replicated. `moco`: (momentum schedule, gate warm-up steps)
  for objective "moco" (simlap/momentum.py)."""
  batch = float_views(batch)
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  pair_rng, gate_rng = jax.random.split(rng)
  params, stats = sharding.gather((state.params, state.batch_stats),
                                  _fields(fsdp, "params", "batch_stats"))
  pair_labels = None
  if config.objective == "simlap" or (config.objective == "moco" and config.moco.beta):
    pair_labels = losses.sample_pair_labels(
        pair_rng, batch["label"], kind=config.loss.pair_kind, num_classes=model.num_classes,
        **objectives.pair_label_options(config, model.num_classes))
  kwargs = dict(config=config, model=model, batch=batch, pair_labels=pair_labels,
                gate_rng=gate_rng)
  if config.objective == "moco":
    momentum_at, warmup_steps = moco
    # The EMA on the stored (under FSDP: sharded) leaves, elementwise, before this step's keys.
    ema = momentum_lib.ema_update(state.momentum["params"],
                                  momentum_lib.key_subset(state.params["model"]),
                                  momentum_at(state.step))
    keys, key_stats = momentum_lib.encode_keys(
        model, sharding.gather({"params": ema, "batch_stats": state.momentum["batch_stats"]},
                               _fields(fsdp, "momentum")),
        (batch["view1"], batch["view2"]))
    loss_fn = functools.partial(momentum_lib.query_loss, keys=keys,
                                gate_warmup=state.step < warmup_steps, **kwargs)
  else:
    loss_fn = functools.partial(_two_view_loss, **kwargs)

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
  if config.objective == "moco":
    momentum_sharding = _fields(fsdp, "momentum")
    key_stats = sharding.scatter(key_stats, momentum_sharding and momentum_sharding["batch_stats"])
    new_state = new_state.replace(momentum=keep({"params": ema, "batch_stats": key_stats},
                                                state.momentum))
  metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step))
  return new_state, metrics


def raise_if_nonfinite(state: TrainState) -> None:
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
