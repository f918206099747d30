"""The two-view contrastive family: SimLAP, SimCLR, SupCon and X-CLR.

Each scores the embeddings z1, z2 (B, D) of one global batch of B images seen as two views,
labels y (B,). They share the model, data, augmentation, optimizer and evaluation, so a
comparison changes exactly one thing; each class says which loss it takes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from simlap import losses
from simlap.data import class_trees
from simlap.models import gates as gates_lib
from simlap.models import lowrank
from simlap.objectives import base


@dataclasses.dataclass(frozen=True)
class SimCLR(base.TwoViewObjective):
  """NT-Xent. `same_view_negatives`: SimCLR's, over the 2B views (2B - 2 negatives per sample);
  False: each view-1 anchor over the B view-2 keys, one direction (MoCo-v3's negatives)."""
  same_view_negatives: bool = True

  def embedding_loss(self, config, z1, z2, labels, pair_labels, gates, scale):
    return losses.nt_xent(z1, z2, scale=scale, same_view_negatives=self.same_view_negatives), {}


class SupCon(base.TwoViewObjective):
  """SupCon's L_out (Khosla et al.) over the 2B views, self excluded, every same-label view a
  positive."""

  def embedding_loss(self, config, z1, z2, labels, pair_labels, gates, scale):
    z, y = jnp.concatenate([z1, z2]), jnp.concatenate([labels, labels])
    return losses.supcon_loss(z, z, y, y, scale=scale, exclude_self=True), {}


class XCLR(base.TwoViewObjective):
  """X-CLR over the 2B views: soft targets softmax(S[y_i, y_j] / tau_s), S the class
  similarity of the dataset's class tree (`class_similarity`; docs/method.md, "X-CLR")."""

  def validate(self, config):
    super().validate(config)
    if config.dataset.name not in class_trees.TREES:
      raise ValueError(f"config.objective='xclr' takes its class similarity from a class tree; "
                       f"config.dataset.name={config.dataset.name!r} has none")

  def embedding_loss(self, config, z1, z2, labels, pair_labels, gates, scale):
    z, y = jnp.concatenate([z1, z2]), jnp.concatenate([labels, labels])
    sim = class_similarity(config.dataset.name, config.dataset.num_classes)
    return losses.xclr_loss(z, y, sim, scale=scale, graph_scale=1.0 / config.loss.xclr_tau_s), {}


def class_similarity(dataset: str, num_classes: int) -> jax.Array:
  """(C, C) class similarity S of X-CLR from the dataset's class tree: 1 - d / 2, i.e. 1 for
  the same class, 1/2 within a group, 0 across groups. The authors use the cosine of sentence
  embeddings of "a photo of a {class}"; no text model ships here, so the known hierarchy
  stands in."""
  d = class_trees.dataset_distances(dataset, num_classes)
  return jnp.asarray(1.0 - d / 2.0, jnp.float32)


class SimLAP(base.TwoViewObjective):
  """The subspace-masked multi-positive NT-Xent with gates g(y, y2), y2 drawn by
  `loss.pair_kind`: 1/2 [L(z1, z2) + L(z2, z1)] (L(z1, z2) alone without `loss.symmetric`),
  + gate.penalty * the gates' mean Bernoulli entropy. With gate.kind = "lowrank" the gates are
  rank-r pair subspaces."""

  def validate(self, config):
    base.check_selective(config)
    if config.gate.kind == lowrank.KIND and config.gate.penalty:
      raise ValueError(f"config.gate.kind='lowrank' has no gate entropy: set gate.penalty=0 "
                       f"(got {config.gate.penalty})")

  def trains_gates(self, config):
    return config.gate.kind != "open"

  def pair_labels(self, config, rng, labels, num_classes):
    return base.sample_pair_labels(config, rng, labels, num_classes)

  def embedding_loss(self, config, z1, z2, labels, pair_labels, gates, scale):
    if config.gate.kind == lowrank.KIND:
      kwargs = dict(scale=scale, reduction=config.loss.reduction)
      pair_loss, metrics = losses.lowrank_simlap_loss, {}  # gates: directions (B, D, r)
    else:
      kwargs = base.simlap_loss_options(config, scale)
      pair_loss = losses.simlap_loss
      metrics = losses.subspace_diagnostics(z1, z2, gates, labels, pair_labels, labels,
                                            variant=config.loss.variant)
    loss = pair_loss(z1, z2, gates, labels, pair_labels, labels, **kwargs)
    if config.loss.symmetric:  # both views as anchors, one shared permutation
      loss = 0.5 * (loss + pair_loss(z2, z1, gates, labels, pair_labels, labels, **kwargs))
    if config.gate.penalty:
      metrics["gate_penalty"] = gates_lib.gate_penalty(gates)
      loss = loss + config.gate.penalty * metrics["gate_penalty"]
    return loss, metrics
