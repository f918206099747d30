"""The momentum-encoder objective's moving parts (MoCo-v3; the paper's v1 "Hydra-MoCo").

Query path: backbone -> projector -> predictor, the trained params. Key path: an exponential
moving average (EMA) of backbone + projector, the train state's `momentum`
{"params", "batch_stats"}; it never receives a gradient. At step t (MoCo-v3's order):

    m_t  = 1 - (1 - m_0) (1 + cos(pi t / T)) / 2            cosine from m_0 up to 1 at T
    ema <- m_t ema + (1 - m_t) params                       with the params the step starts from
    k1, k2 = key encoder(view1), key encoder(view2)         with the updated ema, no gradient

Each view goes through each encoder on its own, as in MoCo-v3, so every BatchNorm normalises one
view's global batch (synchronized BN); the key encoder keeps its own running statistics. The
loss on (q, k) is `objectives.moco_loss`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simlap import objectives
from simlap import optim

# The submodules the key encoder copies: the predictor, gate and probe have no momentum twin.
KEY_MODULES = ("backbone", "projector")


def key_subset(tree: dict[str, Any]) -> dict[str, Any]:
  """The key encoder's part of a Flax variable collection (params or batch_stats)."""
  return {name: tree[name] for name in KEY_MODULES if name in tree}


def init_momentum(model_params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
  """The key encoder at step 0: a copy of the query encoder's backbone and projector."""
  copy = lambda tree: jax.tree.map(jnp.copy, key_subset(tree))  # noqa: E731
  return {"params": copy(model_params), "batch_stats": copy(batch_stats)}


def momentum_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """t -> m_t, MoCo-v3's cosine increase from config.moco.momentum to 1 over the run."""
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
  `train_step._two_view_loss` is for the other objectives: returns (loss + probe loss,
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
  probe_ce, probe_acc = objectives.probe_loss(jnp.concatenate(probe_logits),
                                              jnp.concatenate([labels, labels]))
  scale = objectives.logit_scale(config, params)
  loss, metrics = objectives.moco_loss(config, tuple(queries), keys, labels, pair_labels, gates,
                                       scale, gate_warmup)
  metrics.update(probe_loss=probe_ce, probe_accuracy=probe_acc, logit_scale=scale)
  # The probe sees stop-gradient features: adding its loss trains only the probe.
  return loss + probe_ce, (loss, metrics, stats)
