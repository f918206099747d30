"""Training objectives on the model's outputs for two views: SimLAP and its baselines.

Every objective in OBJECTIVES shares the model, data, augmentation, optimizer and evaluation, so
a comparison changes exactly one thing. Each returns (loss, metrics) for one global batch of B
images seen as two views; embeddings z1, z2 are (B, D), labels y (B,).

  simlap  1/2 [L(z1, z2) + L(z2, z1)] (or L(z1, z2) alone) with gates g(y, y2), y2 sampled
          by `loss.pair_kind`; + gate.penalty * mean Bernoulli entropy of g.
  simclr  NT-Xent over the 2B views (SimCLR's form: 2B - 2 negatives per sample).
  supcon  SupCon L_out over the 2B views, self excluded (Khosla et al.).
  ce      cross-entropy of the (not stop-gradient) linear head, both views.
  xclr    X-CLR over the 2B views: soft targets softmax(S[y_i, y_j] / tau_s) from a class
          similarity S, self excluded (`losses.xclr_loss`; S from the class tree,
          `xclr_class_similarity`).
  moco    the momentum-encoder objective (MoCo-v3; with beta > 0 the paper's v1 "Hydra-MoCo"):
          queries q = predictor outputs, keys k = momentum-encoder embeddings (no gradient),
          L = (instance + beta D(y, y2) + alpha D(y, y)) / (1 + alpha + beta); `moco_loss`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simlap import losses
from simlap.data import class_trees
from simlap.models import gates as gates_lib
from simlap.models import lowrank

OBJECTIVES = ("simlap", "simclr", "supcon", "ce", "moco", "xclr")


def trains_gates(config: ml_collections.ConfigDict) -> bool:
  """Whether the objective learns the gate table: simlap, or moco with a gated term (beta or
  alpha > 0), with a gate that is not the open one."""
  gated = config.objective == "simlap" or (
      config.objective == "moco" and (config.moco.beta or config.moco.alpha))
  return bool(gated) and config.gate.kind != "open"


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


def xclr_class_similarity(config: ml_collections.ConfigDict, num_classes: int) -> jax.Array:
  """(C, C) class similarity S of X-CLR from the dataset's class tree: 1 - d / 2, i.e. 1 for
  the same class, 1/2 within a group, 0 across groups. The authors use the cosine of sentence
  embeddings of "a photo of a {class}"; no text model ships here, so the known hierarchy
  stands in (docs/method.md, "X-CLR")."""
  d = class_trees.dataset_distances(config.dataset.name, num_classes)
  return jnp.asarray(1.0 - d / 2.0, jnp.float32)


def probe_loss(probe_logits: jax.Array, labels2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and accuracy of the linear head; probe_logits (2B, C), labels2 (2B,)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(probe_logits, labels2).mean()
  accuracy = jnp.mean(jnp.argmax(probe_logits, axis=-1) == labels2)
  return ce, accuracy


def _simlap_loss_options(config: ml_collections.ConfigDict, scale: jax.Array) -> dict:
  """`losses.simlap_loss` keyword arguments from config.loss (simlap and moco objectives)."""
  loss = config.loss
  return dict(scale=scale, variant=loss.variant, reduction=loss.reduction,
              chunk_size=loss.chunk_size or None)


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
  if objective == "xclr":
    z = jnp.concatenate([z1, z2])
    y = jnp.concatenate([labels, labels])
    sim = xclr_class_similarity(config, config.dataset.num_classes)
    return losses.xclr_loss(z, y, sim, scale=scale, graph_scale=1.0 / config.loss.xclr_tau_s), {}
  if objective != "simlap":
    raise ValueError(f"objective {objective!r} has no contrastive loss")
  if config.gate.kind == lowrank.KIND:
    return _lowrank_loss(config, z1, z2, labels, pair_labels, gates, scale)
  kwargs = _simlap_loss_options(config, scale)
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


def _lowrank_loss(config, z1, z2, labels, pair_labels, directions, scale):
  """The SimLAP loss with pair subspaces P(U) for gates; directions (B, D, r)."""
  kwargs = dict(scale=scale, reduction=config.loss.reduction)
  loss = losses.lowrank_simlap_loss(z1, z2, directions, labels, pair_labels, labels, **kwargs)
  if config.loss.symmetric:
    loss = 0.5 * (loss + losses.lowrank_simlap_loss(z2, z1, directions, labels, pair_labels,
                                                    labels, **kwargs))
  return loss, {}


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
  kwargs = _simlap_loss_options(config, scale)

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
