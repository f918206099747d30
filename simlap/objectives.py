"""Training objectives on the model's outputs for two views: SimLAP and its baselines.

All four share the model, data, augmentation, optimizer and evaluation, so that a comparison
changes exactly one thing. Each returns (loss, metrics) for one global batch of B images seen
as two views; embeddings z1, z2 are (B, D), labels y (B,).

  simlap  1/2 [L(z1, z2) + L(z2, z1)] (or L(z1, z2) alone) with gates g(y, y2), y2 sampled
          by `loss.pair_kind`; + gate.penalty * mean Bernoulli entropy of g.
  simclr  NT-Xent over the 2B views (SimCLR's form: 2B - 2 negatives per sample).
  supcon  SupCon L_out over the 2B views, self excluded (Khosla et al.).
  ce      cross-entropy of the (not stop-gradient) linear head, both views.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simlap import losses
from simlap.data import class_trees
from simlap.models import gates as gates_lib

OBJECTIVES = ("simlap", "simclr", "supcon", "ce")


def logit_scale(config: ml_collections.ConfigDict, params: dict) -> jax.Array:
  """s = 1 / temperature, or exp(learned log s) when loss.learn_scale."""
  if config.loss.learn_scale:
    return jnp.exp(params["log_scale"])
  return jnp.asarray(1.0 / config.loss.temperature, jnp.float32)


def pair_label_options(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """Extra keyword arguments of `losses.sample_pair_labels` for `config.loss.pair_kind`:
  for "selective", the dataset's (C, C) class-tree distances, alpha and max_level (None for
  the config's 0, no cut-off); {} for the other kinds."""
  loss = config.loss
  if loss.pair_kind != "selective":
    return {}
  return {"distances": jnp.asarray(class_trees.dataset_distances(config.dataset.name,
                                                                 num_classes)),
          "alpha": float(loss.selective_alpha),
          "max_level": loss.selective_max_level or None}


def probe_loss(probe_logits: jax.Array, labels2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and accuracy of the linear head; probe_logits (2B, C), labels2 (2B,)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(probe_logits, labels2).mean()
  accuracy = jnp.mean(jnp.argmax(probe_logits, axis=-1) == labels2)
  return ce, accuracy


def contrastive_loss(config: ml_collections.ConfigDict, z1: jax.Array, z2: jax.Array,
                     labels: jax.Array, pair_labels: jax.Array | None, gates: jax.Array | None,
                     scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective's loss (not the probe's) and its diagnostics. z1, z2 (B, D); labels (B,)."""
  objective = config.objective
  if objective == "simclr":
    return losses.nt_xent(z1, z2, scale=scale, same_view_negatives=True), {}
  if objective == "supcon":
    z = jnp.concatenate([z1, z2])
    y = jnp.concatenate([labels, labels])
    return losses.supcon_loss(z, z, y, y, scale=scale, exclude_self=True), {}
  if objective != "simlap":
    raise ValueError(f"objective {objective!r} has no contrastive loss")
  kwargs = dict(scale=scale, variant=config.loss.variant, reduction=config.loss.reduction,
                chunk_size=config.loss.chunk_size or None)
  loss = losses.simlap_loss(z1, z2, gates, labels, pair_labels, labels, **kwargs)
  if config.loss.symmetric:  # both views as anchors, one shared permutation
    loss = 0.5 * (loss + losses.simlap_loss(z2, z1, gates, labels, pair_labels, labels,
                                            **kwargs))
  metrics = losses.subspace_diagnostics(z1, z2, gates, labels, pair_labels, labels,
                                        variant=config.loss.variant)
  if config.gate.penalty:
    penalty = gates_lib.gate_penalty(gates)
    metrics["gate_penalty"] = penalty
    loss = loss + config.gate.penalty * penalty
  return loss, metrics
