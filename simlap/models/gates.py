"""The SimLAP gate table: a class pair (y1, y2) -> a gate vector g in [0, 1]^D (`GateTable`).

The table runs in float32 whatever the compute dtype: bfloat16 would quantise g near 0 and 1,
where the entropy penalty reads it. Noise (the gumbel and stochastic kinds) comes from the Flax
rng stream "gate", only with train=True. Analysis (`class_gates`, `pair_gates`, `pair_matrix`)
runs the BatchNorms on their running statistics, so it never changes `batch_stats`.
"""
from __future__ import annotations
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from simlap import losses

GATE_KINDS = ("sigmoid", "open", "gumbel", "stochastic")
FUSES = ("mean", "product")


class GateTable(nn.Module):
  """Label-embedding table -> MLP -> gate.

      E: (C, embed_dim) label embeddings, N(0, 1) init
      f: ReLU -> BN -> Dense(hidden_dim) -> ReLU -> BN -> Dense(D)
      fuse "mean":    g = act(f((E[y1] + E[y2]) / 2))          symmetric in (y1, y2)
      fuse "product": g = act(f(E[y1])) * act(f(E[y2]))

  `act` by `kind`: "sigmoid"; "open", 1 everywhere (no parameters); "gumbel" and "stochastic"
  (STG), noisy in training, noise-free in evaluation (`_activate`).

  Attributes:
    num_classes: C.
    dim: D, the embedding dimension the gates act on.
    embed_dim: width of the label embeddings.
    hidden_dim: hidden width of the MLP f.
    kind: "sigmoid" | "open" | "gumbel" | "stochastic".
    fuse: "mean" | "product".
    tau: temperature of the "gumbel" kind.
    noise_std: std of the "stochastic" kind's Gaussian noise (0.5 in STG).
    bn_momentum: running-average decay of the two BatchNorms.
  """
  num_classes: int
  dim: int = 256
  embed_dim: int = 512
  hidden_dim: int = 1024
  kind: str = "sigmoid"
  fuse: str = "mean"
  tau: float = 1.0
  noise_std: float = 0.5
  bn_momentum: float = 0.9

  def setup(self):
    if self.kind not in GATE_KINDS:
      raise ValueError(f"unknown gate kind {self.kind!r}; expected one of {GATE_KINDS}")
    if self.fuse not in FUSES:
      raise ValueError(f"unknown gate fuse {self.fuse!r}; expected one of {FUSES}")
    if self.kind == "open":
      return  # no parameters: an open gate must not add weights the optimizer would decay
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=1.0),
                                (self.num_classes, self.embed_dim), jnp.float32)
    bn = lambda name: nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-5,  # noqa: E731
                                   dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    self.bn1 = bn("bn1")
    self.fc1 = nn.Dense(self.hidden_dim, dtype=jnp.float32, param_dtype=jnp.float32)
    self.bn2 = bn("bn2")
    self.fc2 = nn.Dense(self.dim, dtype=jnp.float32, param_dtype=jnp.float32)

  def logits(self, e: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """The MLP f: label embeddings (N, embed_dim) -> gate logits (N, D) float32."""
    h = self.bn1(nn.relu(e), use_running_average=not train)
    h = self.bn2(nn.relu(self.fc1(h)), use_running_average=not train)
    return self.fc2(h)

  def _activate(self, logits: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Gate logits (N, D) -> gates (N, D) in [0, 1] for this table's kind.

    gumbel:     train sigmoid((l + G) / tau), G a logistic sample (= difference of two Gumbels);
                eval sigmoid(l / tau), the gate's median under the training noise (G's is 0).
    stochastic: train clip(l + 0.5 + eps, 0, 1), eps ~ N(0, noise_std^2); eval clip(l + 0.5).
    """
    if self.kind == "sigmoid":
      return jax.nn.sigmoid(logits)
    if self.kind == "gumbel":
      if train:
        logits = logits + jax.random.logistic(self.make_rng("gate"), logits.shape, jnp.float32)
      return jax.nn.sigmoid(logits / self.tau)
    # "stochastic": the +0.5 centres mu = 0 on a half-open gate, as in STG.
    mu = logits + 0.5
    if train:
      mu = mu + self.noise_std * jax.random.normal(self.make_rng("gate"), mu.shape, jnp.float32)
    return jnp.clip(mu, 0.0, 1.0)

  def __call__(self, labels: jnp.ndarray, pair_labels: jnp.ndarray, *,
               train: bool) -> jnp.ndarray:
    """Gates of the pairs (labels[b], pair_labels[b]).

    Args:
      labels: (B,) int anchor classes y1.
      pair_labels: (B,) int pair classes y2.
      train: BatchNorm on batch statistics (and updating them), noise on for gumbel/stochastic.

    Returns:
      (B, D) float32 gates in [0, 1].
    """
    labels = jnp.asarray(labels, jnp.int32)
    pair_labels = jnp.asarray(pair_labels, jnp.int32)
    if self.kind == "open":
      return jnp.ones(labels.shape + (self.dim,), jnp.float32)
    e1 = jnp.take(self.embedding, labels, axis=0)
    e2 = jnp.take(self.embedding, pair_labels, axis=0)
    if self.fuse == "mean":
      return self._activate(self.logits((e1 + e2) / 2, train=train), train=train)
    # Product: one pass over the stacked 2B embeddings, so the BatchNorm sees (and, in
    # training, records) a single batch rather than two half batches.
    g = self._activate(self.logits(jnp.concatenate([e1, e2]), train=train), train=train)
    return g[:labels.shape[0]] * g[labels.shape[0]:]

  def class_gates(self) -> jnp.ndarray:
    """g(y, y) for every class, BatchNorm in inference mode: (C, D) float32."""
    y = jnp.arange(self.num_classes, dtype=jnp.int32)
    return self(y, y, train=False)

  def pair_gates(self, labels: jnp.ndarray, pair_labels: jnp.ndarray) -> jnp.ndarray:
    """g(y1, y2) for arbitrary (N,) label vectors, BatchNorm in inference mode: (N, D)."""
    return self(labels, pair_labels, train=False)


def gate_penalty(gates: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Mean Bernoulli entropy of the gates, a scalar in [0, log 2] nats.

  Minimising it (times gamma = config.gate.penalty) pushes gates towards binary. Unlike the
  authors' code, which computed it under no_grad, this is differentiable w.r.t. `gates`.

  Args:
    gates: (..., D) gates in [0, 1].
    eps: clip margin for the logs.

  Returns:
    () float32.
  """
  return jnp.mean(losses.bernoulli_entropy(gates, eps=eps))


def subspace_size(gates: jnp.ndarray) -> jnp.ndarray:
  """(N, D) gates -> (N,) sum_d g_d, the soft size of each pair's subspace."""
  return jnp.sum(gates, axis=-1)


def pair_matrix(model: nn.Module, variables, num_classes: int | None = None, *,
                stat: Callable[[jnp.ndarray], jnp.ndarray] = subspace_size,
                chunk_size: int = 64, method: str = "pair_gates") -> jnp.ndarray:
  """A statistic of g(i, j) over all C x C class pairs, `chunk_size` rows of i at a time.

  Only (chunk_size * C, D) gates exist at once, so C = 1000 fits in memory. BatchNorm runs in
  inference mode (through `method`), and `variables` are used read-only.

  Args:
    model: a `GateTable` or any module with a `pair_gates(labels, pair_labels)` method (e.g.
      `SimLAPModel`).
    variables: its variables ({"params", "batch_stats"}).
    num_classes: C; defaults to `model.num_classes`, or `model.gate.num_classes`.
    stat: (N, D) gates -> (N,) per-pair statistic; default `subspace_size`.
    chunk_size: rows i per step.
    method: name of the pair-gate method on `model`.

  Returns:
    (C, C) float32 with M[i, j] = stat(g(i, j)).
  """
  if num_classes is None:
    num_classes = getattr(model, "num_classes", None) or model.gate.num_classes
  c = int(num_classes)
  chunk_size = max(1, min(int(chunk_size), c))
  n_chunks = -(-c // chunk_size)
  # Pad the rows to whole chunks with class 0 (a valid label) and drop the padding afterwards.
  rows = jnp.arange(n_chunks * chunk_size, dtype=jnp.int32) % c
  cols = jnp.arange(c, dtype=jnp.int32)

  def one_chunk(row_ids):  # (chunk_size,) -> (chunk_size, C)
    y1 = jnp.repeat(row_ids, c)
    y2 = jnp.tile(cols, chunk_size)
    g = model.apply(variables, y1, y2, method=method)
    return stat(g).astype(jnp.float32).reshape(chunk_size, c)

  # lax.map runs the chunks sequentially in one compiled loop (no C x C x D intermediate).
  out = jax.lax.map(one_chunk, rows.reshape(n_chunks, chunk_size))
  return out.reshape(n_chunks * chunk_size, c)[:c]
