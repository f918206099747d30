"""Frozen-feature evaluators on whole arrays: kNN, linear probe, few-shot ridge probe, mean ± std.

Each takes features and labels (numpy, or global `jax.Array`s sharded over a mesh), returns plain
Python numbers for results.json and states its protocol in its docstring (docs/method.md,
"Evaluation protocols"). Besides jax, numpy and optax this imports only the jax-only
`simlap.losses`. Padded rows are masked (`train_mask` / `test_mask`, True = real row), never
sliced off, so sharded arrays stay sharded. Everything reduces in float32 with HIGHEST matmul
precision (TPUs default to bf16 passes).
"""
from __future__ import annotations
from collections.abc import Sequence
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import optax

# The jax-only loss module (no other simlap import, no TensorFlow): its L2 normalisation.
from simlap.losses import l2_normalize

ArrayLike = Any  # np.ndarray | jax.Array
_HI = jax.lax.Precision.HIGHEST


def _mask_or_ones(mask: ArrayLike | None, n: int) -> jax.Array:
  return jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)


def _masked_accuracy(pred: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  correct = (pred == labels) & mask
  return jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1)


# ----------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_classes", "ks", "temperature", "chunk_size"))
def _knn_predict(train_feats, train_labels, train_mask, test_feats, *, num_classes, ks,
                 temperature, chunk_size):
  """(N, D), (N,), (N,), (M, D) -> (len(ks), M) int32 predictions."""
  train = l2_normalize(train_feats)
  test = l2_normalize(test_feats)
  labels = jnp.asarray(train_labels, jnp.int32)
  m = test.shape[0]
  n_chunks = -(-m // chunk_size)
  # Pad the test set to whole chunks; lax.map then runs one (chunk, N) similarity at a time,
  # so a 60k x 1.28M matrix never exists (peak memory ~ chunk_size * N * 4 bytes).
  test = jnp.pad(test, ((0, n_chunks * chunk_size - m), (0, 0)))
  test = test.reshape(n_chunks, chunk_size, test.shape[-1])
  kmax = min(max(ks), train.shape[0])

  def one_chunk(q):
    sim = jnp.dot(q, train.T, precision=_HI)                      # (chunk, N)
    sim = jnp.where(train_mask[None, :], sim, -jnp.inf)            # padded rows never vote
    top_sim, top_idx = jax.lax.top_k(sim, kmax)                   # sorted, descending
    # No slicing of the top-k outputs below (neither [:, :1] nor [:, :k]): XLA pushes such
    # slices into the TopK, cannot match its TopK rewrite any more, and falls back to a full
    # sort of every (chunk, N) row, far slower on CPU. Per-k votes use a rank mask instead.
    # Subtracting the row max leaves the argmax unchanged and keeps exp() <= 1 for any T.
    w = jnp.exp((top_sim - jnp.max(top_sim, axis=-1, keepdims=True)) / temperature)
    top_lab = labels[top_idx]
    rows = jnp.arange(q.shape[0])[:, None]
    rank = jnp.arange(kmax)
    preds = []
    for k in ks:  # scatter-add votes: (chunk, C) memory, not (chunk, k, C)
      votes = jnp.zeros((q.shape[0], num_classes), jnp.float32)
      votes = votes.at[rows, top_lab].add(jnp.where(rank < k, w, 0.0))
      preds.append(jnp.argmax(votes, axis=-1).astype(jnp.int32))
    return jnp.stack(preds)                                       # (len(ks), chunk)

  preds = jax.lax.map(one_chunk, test)                            # (chunks, len(ks), chunk)
  return jnp.moveaxis(preds, 1, 0).reshape(len(ks), -1)[:, :m]


def knn_classify(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike, *,
                 num_classes: int, ks: Sequence[int] = (10, 20, 50), temperature: float = 0.07,
                 chunk_size: int = 256,
                 train_mask: ArrayLike | None = None) -> dict[int, jax.Array]:
  """Weighted kNN predictions (InstDisc / DINO protocol).

  Args:
    train_feats: (N, D) bank features (any float dtype; normalised here).
    train_labels: (N,) int labels in [0, num_classes).
    test_feats: (M, D) query features.
    num_classes: C.
    ks: neighbour counts; all share one top-max(ks) search.
    temperature: vote weight exp(cos / temperature).
    chunk_size: test rows per similarity block (memory ~ chunk_size * N * 4 bytes).
    train_mask: optional (N,) bool, False for padded bank rows.

  Returns:
    {k: (M,) int32 predictions}; ties in the vote go to the lowest class index.
  """
  ks = tuple(int(k) for k in ks)
  train_feats = jnp.asarray(train_feats)
  mask = _mask_or_ones(train_mask, train_feats.shape[0])
  preds = _knn_predict(train_feats, train_labels, mask, test_feats, num_classes=num_classes,
                       ks=ks, temperature=float(temperature), chunk_size=int(chunk_size))
  return {k: preds[i] for i, k in enumerate(ks)}


def knn_accuracy(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: ArrayLike, *, num_classes: int, ks: Sequence[int] = (10, 20, 50),
                 temperature: float = 0.07, chunk_size: int = 256,
                 train_mask: ArrayLike | None = None,
                 test_mask: ArrayLike | None = None) -> dict[int, float]:
  """kNN top-1 accuracy per k over the unmasked test rows: {k: accuracy in [0, 1]}.

  Arguments as `knn_classify`'s, plus test_labels (M,) int and test_mask (M,) bool."""
  preds = knn_classify(train_feats, train_labels, test_feats, num_classes=num_classes, ks=ks,
                       temperature=temperature, chunk_size=chunk_size, train_mask=train_mask)
  labels = jnp.asarray(test_labels, jnp.int32)
  mask = _mask_or_ones(test_mask, labels.shape[0])
  return {k: float(_masked_accuracy(p, labels, mask)) for k, p in preds.items()}


# ----------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------
def _prepare(train, train_mask, test, standardize):
  """L2-normalise, then (optionally) standardise both sets with the *train* statistics."""
  train, test = l2_normalize(train), l2_normalize(test)
  if standardize:
    # After L2-normalisation each coordinate is ~1/sqrt(D) in size; per-dimension
    # standardisation makes one learning rate work for any D and any backbone.
    w = train_mask.astype(jnp.float32)[:, None]
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(train * w, 0) / n
    std = jnp.sqrt(jnp.sum(jnp.square(train - mean) * w, 0) / n + 1e-8)
    train, test = (train - mean) / std, (test - mean) / std
  return train, test


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "epochs", "batch_size", "lr", "weight_decay", "standardize"))
def _linear_probe(train, train_labels, train_mask, test, test_labels, test_mask, key, *,
                  num_classes, epochs, batch_size, lr, weight_decay, standardize):
  train, test = _prepare(train, train_mask, test, standardize)
  train_labels = jnp.asarray(train_labels, jnp.int32)
  n, d = train.shape
  steps_per_epoch = max(n // batch_size, 1)  # drop the ragged tail; reshuffled every epoch
  # Zero init: the probe is convex, so the start only matters for reproducibility.
  params = {"w": jnp.zeros((d, num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
  tx = optax.adamw(schedule, weight_decay=weight_decay,
                   mask={"w": True, "b": False})  # no decay on the bias
  opt_state = tx.init(params)

  def loss_fn(p, x, y, m):
    logits = jnp.dot(x, p["w"], precision=_HI) + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)

  def step(carry, idx):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(
        p, train[idx], train_labels[idx], train_mask[idx].astype(jnp.float32))
    updates, s = tx.update(g, s, p)
    return (optax.apply_updates(p, updates), s), loss

  def epoch(carry, k):
    perm = jax.random.permutation(k, n)[:steps_per_epoch * batch_size]
    carry, losses = jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, -1))
    return carry, jnp.mean(losses)

  (params, _), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))

  def acc(x, y, m):
    return _masked_accuracy(jnp.argmax(jnp.dot(x, params["w"], precision=_HI) + params["b"], -1),
                            jnp.asarray(y, jnp.int32), m)

  return acc(test, test_labels, test_mask), acc(train, train_labels, train_mask), losses[-1]


def linear_probe(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: ArrayLike, *, num_classes: int, epochs: int = 30,
                 batch_size: int = 4096, lr: float = 1e-2, weight_decay: float = 1e-4,
                 standardize: bool = True, seed: int = 0,
                 train_mask: ArrayLike | None = None,
                 test_mask: ArrayLike | None = None) -> dict[str, Any]:
  """Softmax-regression probe on frozen features, one fixed protocol for every method.

  Protocol: L2-normalise; standardise each dimension with the train mean/std (`standardize`);
  zero-initialised linear layer + bias; AdamW (decay on weights only), cosine decay from `lr`
  to 0 over `epochs` epochs of shuffled minibatches (ragged tail dropped each epoch); no
  augmentation, no early stopping, no model selection on the test set.

  Args:
    train_feats: (N, D); train_labels: (N,) ints; test_feats: (M, D); test_labels: (M,).
    num_classes: C.
    epochs, batch_size, lr, weight_decay, standardize, seed: the protocol (returned too).
    train_mask / test_mask: optional (N,) / (M,) bool, False for padded rows.

  Returns:
    {"accuracy": test top-1, "train_accuracy": float, "final_loss": mean loss of the last
     epoch, "hparams": {"optimizer", "schedule", "epochs", "batch_size", "lr",
     "weight_decay", "standardize", "seed", "steps"}}.
  """
  train_feats = jnp.asarray(train_feats)
  test_feats = jnp.asarray(test_feats)
  n = train_feats.shape[0]
  batch_size = int(min(batch_size, n))
  test_acc, train_acc, loss = _linear_probe(
      train_feats, train_labels, _mask_or_ones(train_mask, n), test_feats, test_labels,
      _mask_or_ones(test_mask, test_feats.shape[0]), jax.random.key(seed),
      num_classes=num_classes, epochs=int(epochs), batch_size=batch_size, lr=float(lr),
      weight_decay=float(weight_decay), standardize=bool(standardize))
  return probe_result(test_acc, train_acc, loss, n=n, epochs=epochs, batch_size=batch_size,
                      lr=lr, weight_decay=weight_decay, standardize=standardize, seed=seed)


def probe_result(test_acc, train_acc, loss, *, n: int, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, standardize: bool, seed: int) -> dict[str, Any]:
  """The linear probe's result dict (see `linear_probe`), shared by the sharded probe."""
  return {
      "accuracy": float(test_acc), "train_accuracy": float(train_acc),
      "final_loss": float(loss),
      "hparams": {
          "optimizer": "adamw", "schedule": "cosine", "epochs": int(epochs),
          "batch_size": batch_size, "lr": float(lr), "weight_decay": float(weight_decay),
          "standardize": bool(standardize), "seed": int(seed),
          "steps": int(epochs) * max(n // batch_size, 1),
          "features": "l2-normalised" + (", standardised" if standardize else ""),
      },
  }


# ----------------------------------------------------------------------------------------------
# Few-shot ridge probe
# ----------------------------------------------------------------------------------------------
def sample_few_shot(labels: ArrayLike, shots: int, num_classes: int, seed: int,
                    mask: ArrayLike | None = None) -> np.ndarray:
  """Indices of `shots` distinct examples of every class, drawn with numpy from `seed`.

  Per class the draw is a prefix of one seeded permutation, so for a fixed seed the 1-shot set
  is inside the 5-shot set (shot counts are compared on nested data, less noise).

  Args:
    labels: (N,) int labels (host-readable: numpy or a fully addressable jax.Array).
    shots: examples per class.
    num_classes: C; every class must have >= shots unmasked examples.
    seed: the draw.
    mask: optional (N,) bool, False for rows that may not be drawn (padding).

  Returns:
    (C * shots,) int64 indices, class-major (class 0's shots first).
  """
  labels = np.asarray(labels).astype(np.int64)
  ok = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
  rng = np.random.default_rng(seed)
  out = []
  for c in range(num_classes):
    members = np.flatnonzero((labels == c) & ok)
    if members.size < shots:
      raise ValueError(f"class {c} has {members.size} examples, fewer than shots={shots}")
    out.append(rng.permutation(members)[:shots])
  return np.concatenate(out)


def _ridge_fit(x, y, lam, weights=None):
  """Ridge with bias column: argmin Σ_i w_i ||[x_i 1] W - y_i||² + lam ||W||² -> (D + 1, C).

  The bias is regularised like the weights (the plain closed form the authors use). Solved in
  the primal, a (D+1) x (D+1) system whatever the number of rows, so zero-weight padding rows
  let every shot count share one compiled program.
  """
  x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
  xw = x if weights is None else x * weights[:, None]
  gram = jnp.dot(xw.T, x, precision=_HI) + lam * jnp.eye(x.shape[1], dtype=x.dtype)
  # assume_a="pos": the Gram matrix + lam I is symmetric positive definite -> Cholesky.
  return jax.scipy.linalg.solve(gram, jnp.dot(xw.T, y, precision=_HI), assume_a="pos")


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _ridge_accuracy(x, y, weights, test, test_labels, test_mask, lam, *, num_classes):
  w = _ridge_fit(l2_normalize(x), jax.nn.one_hot(y, num_classes), lam, weights)
  logits = jnp.dot(l2_normalize(test), w[:-1], precision=_HI) + w[-1]
  return _masked_accuracy(jnp.argmax(logits, -1), jnp.asarray(test_labels, jnp.int32),
                          test_mask)


def few_shot_ridge(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                   test_labels: ArrayLike, *, num_classes: int,
                   shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                   lam: float = 1e-3, train_mask: ArrayLike | None = None,
                   test_mask: ArrayLike | None = None) -> dict[str, Any]:
  """Few-shot probe: closed-form ridge on L2-normalised features + bias against one-hot targets,
  fitted on `shots` balanced examples per class; mean ± std over seeds.

  Args:
    train_feats: (N, D) pool the shots are drawn from; train_labels: (N,) ints (read on host).
    test_feats: (M, D); test_labels: (M,).
    num_classes: C.
    shots: examples per class; seeds: one balanced draw per seed (see `sample_few_shot`).
    lam: ridge λ.
    train_mask / test_mask: optional bool masks, False for padded rows.

  Returns:
    {"lam": λ, "seeds": [...], "shots": {s: {"mean", "std", "per_seed": [acc per seed]}}};
    std is the sample std (ddof=1), 0 for one seed.
  """
  train_feats = jnp.asarray(train_feats)
  test_feats = jnp.asarray(test_feats)
  tmask = _mask_or_ones(test_mask, test_feats.shape[0])
  host_labels = np.asarray(train_labels)  # sampling is host-side numpy, labels are small
  # Every draw is padded to max(shots) * C rows with zero weights: one compilation in all.
  rows = max(shots) * num_classes
  res = {}
  for s in shots:
    accs = []
    for seed in seeds:
      idx = sample_few_shot(host_labels, int(s), num_classes, int(seed), train_mask)
      weights = np.zeros((rows,), np.float32)
      weights[:idx.size] = 1.0
      idx = np.pad(idx, (0, rows - idx.size), mode="edge")
      accs.append(float(_ridge_accuracy(
          train_feats[idx], jnp.asarray(host_labels[idx], jnp.int32), weights, test_feats,
          test_labels, tmask, jnp.float32(lam), num_classes=num_classes)))
    mean, std = mean_std(accs)
    res[int(s)] = {"mean": mean, "std": std, "per_seed": accs}
  return {"lam": float(lam), "seeds": [int(s) for s in seeds], "shots": res}


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std with ddof=1); std is 0.0 for a single value, NaN mean for none."""
  v = np.asarray(list(values), np.float64)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else 0.0)
