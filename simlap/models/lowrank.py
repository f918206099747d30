"""The low-rank ablation of the gate: a class pair (y1, y2) -> r directions U in R^{D x r}.

The head is a grouped (block-diagonal) Dense whose weights number H * D for every r, as the
gate's last Dense(H -> D) does, so the two tables differ only by (r - 1) * D biases
(docs/method.md, "Low-rank pair subspaces"). Analyses get diag(P) (`class_gates`,
`pair_gates`): D values in [0, 1] summing to r, the projection's counterpart of a gate vector.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from simlap import losses

KIND = "lowrank"


def parameter_count(num_classes: int, dim: int, embed_dim: int, hidden_dim: int,
                    rank: int | None = None) -> int:
  """Parameters of the gate table (rank None) or of the low-rank table of `rank` directions."""
  trunk = num_classes * embed_dim + 2 * embed_dim + embed_dim * hidden_dim + 3 * hidden_dim
  return trunk + hidden_dim * dim + (1 if rank is None else rank) * dim


class LowRankTable(nn.Module):
  """Label embeddings -> the gate's MLP trunk -> r directions per pair.

      E, trunk: the gate's label-embedding table and MLP trunk (`GateTable`, up to its last
                BatchNorm): h = trunk((E[y1] + E[y2]) / 2) in R^H
      head:     h split into r groups of H / r features; u_j = W_j h_(j) + b_j in R^D
      U = [u_1 ... u_r],   P = U (U^T U + lambda I)^-1 U^T    (losses.lowrank_subspace_logits)

  Attributes:
    num_classes: C.
    dim: D.
    rank: r, the subspace dimension; must divide hidden_dim.
    embed_dim, hidden_dim, bn_momentum: as in `GateTable`.
    ridge: the relative Tikhonov term of P (losses.lowrank_subspace_logits).
  """
  num_classes: int
  dim: int = 256
  rank: int = 16
  embed_dim: int = 512
  hidden_dim: int = 1024
  bn_momentum: float = 0.9
  ridge: float = 1e-4

  def setup(self):
    if not 1 <= self.rank <= self.dim or self.hidden_dim % self.rank:
      raise ValueError(f"gate.rank={self.rank} must be in [1, D={self.dim}] and divide "
                       f"gate.hidden_dim={self.hidden_dim}")
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=1.0),
                                (self.num_classes, self.embed_dim), jnp.float32)
    bn = lambda name: nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-5,  # noqa: E731
                                   dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    self.bn1 = bn("bn1")
    self.fc1 = nn.Dense(self.hidden_dim, dtype=jnp.float32, param_dtype=jnp.float32)
    self.bn2 = bn("bn2")
    group = self.hidden_dim // self.rank
    # lecun_normal of a Dense(group -> D) for each direction: fan-in = group.
    self.head_kernel = self.param(
        "head_kernel", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                        in_axis=1, out_axis=2,
                                                        batch_axis=0),
        (self.rank, group, self.dim), jnp.float32)
    self.head_bias = self.param("head_bias", nn.initializers.zeros, (self.rank, self.dim),
                                jnp.float32)

  def __call__(self, labels: jnp.ndarray, pair_labels: jnp.ndarray, *,
               train: bool) -> jnp.ndarray:
    """Directions of the pairs (labels[b], pair_labels[b]).

    Args:
      labels: (B,) int y1. pair_labels: (B,) int y2.
      train: BatchNorm on batch statistics (and updating them).
    Returns:
      (B, D, r) float32 directions U.
    """
    e1 = jnp.take(self.embedding, jnp.asarray(labels, jnp.int32), axis=0)
    e2 = jnp.take(self.embedding, jnp.asarray(pair_labels, jnp.int32), axis=0)
    h = self.bn1(nn.relu((e1 + e2) / 2), use_running_average=not train)
    h = self.bn2(nn.relu(self.fc1(h)), use_running_average=not train)
    h = h.reshape(h.shape[0], self.rank, -1)  # (B, r, H / r)
    u = jnp.einsum("brg,rgd->brd", h, self.head_kernel) + self.head_bias
    return jnp.swapaxes(u, 1, 2)

  def pair_gates(self, labels: jnp.ndarray, pair_labels: jnp.ndarray) -> jnp.ndarray:
    """diag(P) of (y1, y2) for (N,) label vectors, BatchNorm in inference mode: (N, D)."""
    return losses.projection_diagonal(self(labels, pair_labels, train=False), ridge=self.ridge)

  def class_gates(self) -> jnp.ndarray:
    """diag(P) of (y, y) for every class, BatchNorm in inference mode: (C, D)."""
    y = jnp.arange(self.num_classes, dtype=jnp.int32)
    return self.pair_gates(y, y)
