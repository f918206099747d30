"""SimLAPModel: backbone + projector + gate table + online linear probe (+ MoCo's predictor).

One module serves every objective, so baselines share the backbone, projector and probe exactly;
objectives differ only in which outputs the loss uses. Variables: "params" and "batch_stats";
the "gate" rng stream is needed only for the gumbel and stochastic gates with train=True:

    model = build_model(config.model, config.gate, num_classes)
    variables = model.init({"params": k1, "gate": k2}, images, labels, labels, train=False)
"""
from __future__ import annotations
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simlap.models import backbones
from simlap.models import gates as gates_lib
from simlap.models import heads
from simlap.models import lowrank


class SimLAPModel(nn.Module):
  """The full network. Submodules are passed in (see `build_model`), so tests can swap parts.

  Attributes:
    backbone: images (B, H, W, C), train -> features (B, F) float32.
    projector: features, train -> embeddings (B, D) float32.
    gate: a `GateTable` with `dim == D`.
    probe: a `LinearHead` on the features.
    probe_stop_gradient: stop the probe's gradient at the features (online linear evaluation).
      False only for the supervised CE baseline, whose loss is the probe's cross-entropy.
    predictor: embeddings, train -> predictions (B, D) float32; only the momentum-encoder
      objective has one (MoCo-v3's query-side MLP).
    pixel_mean, pixel_std: per-channel input normalisation, (x - mean) / std, applied to the
      images before the backbone; empty = none (the images arrive in [0, 1]). The authors'
      recipes normalise, so their converted weights need the same map.
  """
  backbone: nn.Module
  projector: nn.Module
  gate: nn.Module  # gates_lib.GateTable or lowrank.LowRankTable
  probe: heads.LinearHead
  probe_stop_gradient: bool = True
  predictor: nn.Module | None = None
  pixel_mean: tuple[float, ...] = ()
  pixel_std: tuple[float, ...] = ()

  def _backbone(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.pixel_mean:
      images = (images - jnp.asarray(self.pixel_mean, images.dtype)) / jnp.asarray(
          self.pixel_std, images.dtype)
    return self.backbone(images, train=train)

  def __call__(self, images: jnp.ndarray, labels: jnp.ndarray | None = None,
               pair_labels: jnp.ndarray | None = None, *,
               train: bool) -> dict[str, jnp.ndarray]:
    """Runs the network.

    Args:
      images: (B, H, W, C) images.
      labels: optional (B,) int anchor classes y1.
      pair_labels: optional (B,) int pair classes y2; gates are computed only if both are given.
      train: BatchNorm on batch statistics (mutable "batch_stats"), gate noise on.

    Returns:
      dict with
        "features": (B, F) float32 pooled backbone features,
        "embeddings": (B, D) float32 projector output (LayerNorm-ed, not L2-normalised),
        "probe_logits": (B, num_classes) float32 linear probe logits,
        "gates": (B, D) float32 in [0, 1], only when labels and pair_labels are given
          (gate.kind "lowrank": (B, D, r) directions),
        "predictions": (B, D) float32 predictor output, only when the model has a predictor.
    """
    features = self._backbone(images, train)
    out = {
        "features": features,
        "embeddings": self.projector(features, train=train),
        "probe_logits": self.probe(
            jax.lax.stop_gradient(features) if self.probe_stop_gradient else features,
            train=train),
    }
    if self.predictor is not None:
      out["predictions"] = self.predictor(out["embeddings"], train=train)
    if labels is not None and pair_labels is not None:
      out["gates"] = self.gate(labels, pair_labels, train=train)
    return out

  def encode(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """Backbone features only (kNN / probes): (B, H, W, C) -> (B, F) float32."""
    return self._backbone(images, train)

  def key_embeddings(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Backbone + projector only: the momentum (key) encoder's path, (B, H, W, C) -> (B, D).

    Applied to the momentum encoder's variables, which hold just these two submodules."""
    return self.projector(self._backbone(images, train), train=train)

  def gates(self, labels: jnp.ndarray, pair_labels: jnp.ndarray, *,
            train: bool) -> jnp.ndarray:
    """Gates of (labels[b], pair_labels[b]) without running the image network: (B, D)."""
    return self.gate(labels, pair_labels, train=train)

  def class_gates(self) -> jnp.ndarray:
    """g(y, y) for every class, BatchNorm in inference mode: (C, D) float32."""
    return self.gate.class_gates()

  def pair_gates(self, labels: jnp.ndarray, pair_labels: jnp.ndarray) -> jnp.ndarray:
    """g(y1, y2) for arbitrary (N,) label vectors, BatchNorm in inference mode: (N, D)."""
    return self.gate.pair_gates(labels, pair_labels)

  @property
  def num_classes(self) -> int:
    return self.gate.num_classes


def build_model(model: ml_collections.ConfigDict, gate: ml_collections.ConfigDict,
                num_classes: int, *, predictor: bool = False,
                platform: str | None = None) -> SimLAPModel:
  """SimLAPModel from the `config.model` and `config.gate` sections.

  Every field is read without a fallback (the schema holds the defaults): a missing one raises,
  naming it.

  Args:
    model: `config.model`.
    gate: `config.gate`.
    num_classes: C, for the gate table and the probe.
    predictor: add MoCo-v3's predictor, q = predictor(projector(backbone(x))) (objective moco).
    platform: the platform the program is compiled for ("cpu", "tpu", "cuda", ...), which
      `model.conv_impl="auto"` resolves against; None = JAX's default backend.

  Returns:
    An unbound `SimLAPModel`.
  """
  dtype = backbones.parse_dtype(model.dtype)
  bn_momentum = float(model.bn_momentum)
  dim = int(model.projector_dim)
  hidden = tuple(int(w) for w in model.projector_hidden)
  head = lambda widths, **kw: heads.Projector(  # noqa: E731
      hidden=widths, out_dim=dim, bn_momentum=bn_momentum, dtype=dtype,
      use_bias=bool(model.projector_bias), **kw)
  return SimLAPModel(
      backbone=backbones.build_backbone(model, platform),
      projector=head(hidden),
      gate=_gate_table(int(num_classes), dim, bn_momentum, **gate),
      probe=heads.LinearHead(int(num_classes), bn_momentum=bn_momentum),
      probe_stop_gradient=bool(model.probe_stop_gradient),
      # () = the projector's last hidden width (MoCo-v3 uses mlp_dim for both), or D if none.
      predictor=head(tuple(int(w) for w in model.predictor_hidden) or hidden[-1:] or (dim,),
                     last_norm="none") if predictor else None,
      pixel_mean=tuple(float(v) for v in model.pixel_mean),
      pixel_std=tuple(float(v) for v in model.pixel_std),
  )


def _gate_table(num_classes: int, dim: int, bn_momentum: float, *, kind: str, fuse: str,
                embed_dim: int, hidden_dim: int, tau: float, noise_std: float, penalty: float,
                rank: int) -> nn.Module:
  """The pair module from the `config.gate` fields: a `GateTable`, or for kind "lowrank" a
  `lowrank.LowRankTable`. A missing or unknown field is a TypeError naming it."""
  del penalty  # the objective's weight on the gates, not part of the table
  if kind == lowrank.KIND:
    return lowrank.LowRankTable(
        num_classes=num_classes, dim=dim, rank=int(rank), embed_dim=int(embed_dim),
        hidden_dim=int(hidden_dim), bn_momentum=bn_momentum)
  return gates_lib.GateTable(
      num_classes=num_classes, dim=dim, embed_dim=int(embed_dim), hidden_dim=int(hidden_dim),
      kind=kind, fuse=fuse, tau=float(tau), noise_std=float(noise_std),
      bn_momentum=bn_momentum)
