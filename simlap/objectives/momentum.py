"""The momentum-encoder objective "moco": MoCo-v3, and with moco.beta > 0 the paper's Hydra-MoCo.

Query path: backbone -> projector -> predictor, the trained params. Key path: an exponential
moving average (EMA) of backbone + projector, the train state's `momentum` {"params",
"batch_stats"}, which never receives a gradient. Each view goes through each encoder on its own,
as in MoCo-v3, so every BatchNorm normalises one view's global batch (synchronized BN); the key
encoder keeps its own running statistics.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax
import ml_collections
import optax

from simlap import losses
from simlap.models import gates as gates_lib
from simlap.objectives import base
from simlap.runtime import sharding
from simlap.training import optim
from simlap.training import state as state_lib

# The submodules the key encoder copies: the predictor, gate and probe have no momentum twin.
KEY_MODULES = ("backbone", "projector")


@flax.struct.dataclass
class MomentumTrainState(state_lib.TrainState):
  """The train state with the key encoder, momentum = {"params", "batch_stats"} of its
  backbone and projector. A subclass rather than a field of every state, so the other
  objectives' checkpoints keep their exact tree."""
  momentum: Any


def key_subset(tree: dict[str, Any]) -> dict[str, Any]:
  """The key encoder's part of a Flax variable collection (params or batch_stats)."""
  return {name: tree[name] for name in KEY_MODULES if name in tree}


def init_momentum(model_params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
  """The key encoder at step 0: a copy of the query encoder's backbone and projector."""
  copy = lambda tree: jax.tree.map(jnp.copy, key_subset(tree))  # noqa: E731
  return {"params": copy(model_params), "batch_stats": copy(batch_stats)}


def momentum_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """t -> m_t = 1 - (1 - m_0) (1 + cos(pi t / T)) / 2: MoCo-v3's cosine increase from
  m_0 = config.moco.momentum to 1 at T = `num_steps`."""
  decay = optax.cosine_decay_schedule(1.0 - config.moco.momentum, max(1, num_steps))
  return lambda step: 1.0 - decay(step)


def gate_warmup_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """Steps during which the gated loss trains only the gate (config.moco.gate_warmup_epochs)."""
  return optim.epochs_to_steps(config, config.moco.gate_warmup_epochs, num_train)


def ema_update(ema: Any, params: Any, momentum: jax.Array) -> Any:
  """m * ema + (1 - m) * params, leaf by leaf (float32; any sharding, elementwise)."""
  return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, ema, params)


def encode_keys(model, momentum_vars: dict[str, Any], views: tuple[jax.Array, ...]
                ) -> tuple[tuple[jax.Array, ...], dict[str, Any]]:
  """Key embeddings of each view (B, D) without gradient, and the key encoder's new BN stats.

  The key encoder runs in train mode, as MoCo-v3's does: batch statistics, updated running
  averages (used only by whoever evaluates the key encoder itself)."""
  stats = momentum_vars["batch_stats"]
  keys = []
  for view in views:
    k, updates = model.apply({"params": momentum_vars["params"], "batch_stats": stats}, view,
                             train=True, mutable=["batch_stats"], method="key_embeddings")
    stats = updates["batch_stats"]
    keys.append(jax.lax.stop_gradient(k))
  return tuple(keys), stats


def query_loss(params: dict[str, Any], batch_stats: dict[str, Any], *, config, model,
               batch: dict[str, jax.Array], pair_labels: jax.Array | None,
               keys: tuple[jax.Array, jax.Array], gate_rng: jax.Array,
               gate_warmup: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
  """Loss to differentiate w.r.t. `params` ({"model", maybe "log_scale"}), as
  `base.TwoViewObjective.loss` is for the two-view objectives: returns (loss + probe loss,
  (loss, metrics, new batch_stats))."""
  labels = batch["label"]
  beta, alpha = config.moco.beta, config.moco.alpha
  # Gate rows: g(y, y2) for D, then g(y, y) for the class loss; one gate call, one BN batch.
  gate_y1 = [labels for w in (beta, alpha) if w]
  gate_y2 = [y2 for w, y2 in ((beta, pair_labels), (alpha, labels)) if w]
  stats, queries, probe_logits, gates = batch_stats, [], [], None
  for i, view in enumerate((batch["view1"], batch["view2"])):
    with_gates = i == 0 and bool(gate_y1)
    out, updates = model.apply(
        {"params": params["model"], "batch_stats": stats}, view,
        jnp.concatenate(gate_y1) if with_gates else None,
        jnp.concatenate(gate_y2) if with_gates else None,
        train=True, mutable=["batch_stats"], rngs={"gate": gate_rng})
    stats = updates["batch_stats"]
    queries.append(out["predictions"])
    probe_logits.append(out["probe_logits"])
    gates = out.get("gates", gates)
  probe_ce, probe_acc = base.probe_loss(jnp.concatenate(probe_logits),
                                        jnp.concatenate([labels, labels]))
  scale = base.logit_scale(config, params)
  loss, metrics = moco_loss(config, tuple(queries), keys, labels, pair_labels, gates,
                                       scale, gate_warmup)
  metrics.update(probe_loss=probe_ce, probe_accuracy=probe_acc, logit_scale=scale)
  # The probe sees stop-gradient features: adding its loss trains only the probe.
  return loss + probe_ce, (loss, metrics, stats)


def moco_loss(config: ml_collections.ConfigDict, queries: tuple[jax.Array, jax.Array],
              keys: tuple[jax.Array, jax.Array], labels: jax.Array,
              pair_labels: jax.Array | None, gates: jax.Array | None, scale: jax.Array,
              gate_warmup: jax.Array | bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The momentum-encoder objective for queries (q1, q2) and keys (k1, k2), each (B, D).

    instance = 1/2 [InfoNCE(q1, k2) + InfoNCE(q2, k1)]           (MoCo-v3, logits s q.k)
    D(y2)    = 1/2 [simlap(q1, k2; g(y, y2)) + simlap(q2, k1; g(y, y2))]
    L = (instance + beta D(pair_labels) + alpha D(labels)) / (1 + alpha + beta)
        + gate.penalty * entropy(g)

  `gates` stacks g(y, y2) (B rows, when beta > 0) over g(y, y) (B rows, when alpha > 0).
  While `gate_warmup` is true the queries are stop-gradient inside D, so D trains only the gate.
  beta = alpha = 0 skips D entirely: exactly MoCo-v3's loss (as the authors compute it, without
  MoCo-v3's 2T factor, which only rescales the gradient).
  """
  (q1, q2), (k1, k2) = queries, jax.lax.stop_gradient(keys)
  beta, alpha = float(config.moco.beta), float(config.moco.alpha)
  instance = 0.5 * (losses.nt_xent(q1, k2, scale=scale) + losses.nt_xent(q2, k1, scale=scale))
  metrics = {"instance_loss": instance}
  if not (beta or alpha):
    return instance, metrics
  # jnp.where, not a Python branch: the warm-up ends at a step, inside one compiled program.
  d1, d2 = (jnp.where(gate_warmup, jax.lax.stop_gradient(q), q) for q in (q1, q2))
  metrics["gate_warmup"] = jnp.asarray(gate_warmup, jnp.float32)
  kwargs = base.simlap_loss_options(config, scale)

  def disparate(g, y2):
    return 0.5 * (losses.simlap_loss(d1, k2, g, labels, y2, labels, **kwargs)
                  + losses.simlap_loss(d2, k1, g, labels, y2, labels, **kwargs))

  num = labels.shape[0]
  total = instance
  if beta:
    g = gates[:num]
    metrics["disparate_loss"] = disparate(g, pair_labels)
    metrics.update(losses.subspace_diagnostics(q1, k2, g, labels, pair_labels, labels,
                                               variant=config.loss.variant))
    total = total + beta * metrics["disparate_loss"]
  if alpha:
    metrics["class_loss"] = disparate(gates[num:] if beta else gates, labels)
    total = total + alpha * metrics["class_loss"]
  loss = total / (1.0 + alpha + beta)
  if config.gate.penalty:
    metrics["gate_penalty"] = gates_lib.gate_penalty(gates)
    loss = loss + config.gate.penalty * metrics["gate_penalty"]
  return loss, metrics


class Momentum(base.Objective):
  """MoCo-v3 (beta = alpha = 0) and the paper's v1 Hydra-MoCo (beta > 0): the train step's
  momentum-encoder parts, in the order `simlap.training.step` calls them. At step t:

      ema <- m_t ema + (1 - m_t) params                 the params the step starts from
      k1, k2 = key encoder(view1), key encoder(view2)   the updated ema, no gradient
      loss = `moco_loss`(q1, q2, k1, k2)                m_t: `momentum_schedule`
  """

  predictor = True

  def validate(self, config):
    super().validate(config)
    base.check_selective(config)

  def trains_gates(self, config):
    return bool(config.moco.beta or config.moco.alpha) and config.gate.kind != "open"

  def pair_labels(self, config, rng, labels, num_classes):
    if not config.moco.beta:
      return None
    return base.sample_pair_labels(config, rng, labels, num_classes)

  def init_state(self, state_class, fields, variables):
    del state_class
    momentum = init_momentum(variables["params"], variables.get("batch_stats", {}))
    return MomentumTrainState(**fields, momentum=momentum)

  def reset_after_load(self, state):
    # The key encoder starts as the loaded query encoder.
    return state.replace(momentum=init_momentum(state.params["model"], state.batch_stats))

  def step_constants(self, config, num_steps, num_train):
    return momentum_schedule(config, num_steps), gate_warmup_steps(config, num_train)

  def prepare(self, state, batch, *, model, constants, shardings):
    momentum_at, warmup_steps = constants
    # The EMA on the stored (under FSDP: sharded) leaves, elementwise, before this step's keys.
    ema = ema_update(state.momentum["params"], key_subset(state.params["model"]),
                     momentum_at(state.step))
    gathered = sharding.gather({"params": ema, "batch_stats": state.momentum["batch_stats"]},
                               None if shardings is None else shardings.momentum)
    keys, key_stats = encode_keys(model, gathered, (batch["view1"], batch["view2"]))
    return {"ema": ema, "keys": keys, "key_stats": key_stats,
            "gate_warmup": state.step < warmup_steps}

  def loss(self, params, stats, *, config, model, batch, pair_labels, gate_rng, context):
    return query_loss(params, stats, config=config, model=model, batch=batch,
                      pair_labels=pair_labels, keys=context["keys"], gate_rng=gate_rng,
                      gate_warmup=context["gate_warmup"])

  def after_update(self, new_state, state, context, keep, shardings):
    key_stats = sharding.scatter(
        context["key_stats"], None if shardings is None else shardings.momentum["batch_stats"])
    return new_state.replace(momentum=keep({"params": context["ema"], "batch_stats": key_stats},
                                           state.momentum))
