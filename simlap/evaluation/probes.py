"""Linear probe and few-shot ridge probe over a row-sharded bank (protocols: array_eval.py).

Linear probe, data-parallel: each epoch draws the permutation `array_eval.linear_probe` draws
(same key, same minibatches); each device computes the gradient over the minibatch rows it
holds, summed over devices (psum). A device takes at most `cap` rows per step (its expected
share plus a margin); if a draw ever gives one more, the probe reruns with cap = B, exactly.
Few-shot: `array_eval.sample_few_shot` on the split-ordered labels; only the drawn rows move
(each from its owner, a psum of C·shots rows). Nothing of size N × F leaves the devices.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from simlap.evaluation import array_eval
from simlap.evaluation import bank as bank_lib
from simlap.evaluation.bank import Bank
from simlap.losses import l2_normalize

_HI = jax.lax.Precision.HIGHEST


def _positions(bank: Bank) -> np.ndarray:
  """(N,) int32: the bank row that holds each example of the split, in split order."""
  rows = bank_lib.gathered(bank, ("index",))["index"]
  pos = np.empty((bank.num_examples,), np.int32)
  real = rows >= 0
  pos[rows[real]] = np.flatnonzero(real)
  return pos


# ----------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=(
    "mesh", "num_classes", "epochs", "batch_size", "lr", "weight_decay", "standardize", "cap"))
def _train_probe(train, labels, mask, pos_of, test, key, *, mesh, num_classes, epochs,
                 batch_size, lr, weight_decay, standardize, cap):
  axes = mesh.axis_names
  train, test = array_eval._prepare(train, mask, test, standardize)  # noqa: SLF001 - sharded
  n, d = pos_of.shape[0], train.shape[1]
  steps_per_epoch = max(n // batch_size, 1)
  schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
  tx = optax.adamw(schedule, weight_decay=weight_decay, mask={"w": True, "b": False})

  def local(x, y, pos_of, key):
    rows = x.shape[0]
    me = jax.lax.axis_index(axes)
    params = {"w": jnp.zeros((d, num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}

    def loss_sum(p, xb, yb, wb):
      logits = jnp.dot(xb, p["w"], precision=_HI) + p["b"]
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, yb) * wb)

    def step(carry, idx):
      p, s, over = carry
      pos = pos_of[idx]
      mine = pos // rows == me
      # This device's rows of the minibatch first (stable), then at most `cap` of them.
      order = jnp.argsort(~mine, stable=True)[:cap]
      wb = mine[order].astype(jnp.float32)
      local_pos = jnp.where(mine[order], pos[order] - me * rows, 0)
      loss, g = jax.value_and_grad(loss_sum)(p, x[local_pos], y[local_pos].astype(jnp.int32),
                                             wb)
      g, loss = jax.lax.psum((g, loss), axes)
      g = jax.tree.map(lambda a: a / idx.shape[0], g)
      updates, s = tx.update(g, s, p)
      over = over | (jnp.sum(mine) > cap)
      return (optax.apply_updates(p, updates), s, over), loss / idx.shape[0]

    def epoch(carry, k):
      perm = jax.random.permutation(k, n)[:steps_per_epoch * batch_size]
      carry, losses = jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, -1))
      return carry, jnp.mean(losses)

    (params, _, over), losses = jax.lax.scan(
        epoch, (params, tx.init(params), jnp.bool_(False)), jax.random.split(key, epochs))
    return params, jax.lax.pmax(over.astype(jnp.int32), axes), losses[-1]

  params, over, loss = jax.shard_map(
      local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P(),
      check_vma=False)(train, labels, pos_of, key)
  return params, over, loss, train, test


@jax.jit
def _probe_accuracy(params, x, y, m):
  logits = jnp.dot(x, params["w"], precision=_HI) + params["b"]
  return array_eval._masked_accuracy(  # noqa: SLF001
      jnp.argmax(logits, -1), jnp.asarray(y, jnp.int32), m)


def linear_probe(bank: Bank, test: Bank, *, num_classes: int, feature: str = "features",
                 epochs: int = 30, batch_size: int = 4096, lr: float = 1e-2,
                 weight_decay: float = 1e-4, standardize: bool = True, seed: int = 0
                 ) -> dict[str, Any]:
  """`array_eval.linear_probe`'s protocol and result dict, trained data-parallel on `bank`."""
  mesh = bank.mesh
  devices = int(np.prod(list(mesh.shape.values())))
  n = bank.num_examples
  batch_size = int(min(batch_size, n))
  pos_of = jnp.asarray(_positions(bank))
  # Expected share B / devices plus ~6 standard deviations of the binomial draw.
  share = batch_size / devices
  cap = int(min(batch_size, np.ceil(share + 6 * np.sqrt(share) + 8)))
  kw = dict(mesh=mesh, num_classes=num_classes, epochs=int(epochs), batch_size=batch_size,
            lr=float(lr), weight_decay=float(weight_decay), standardize=bool(standardize))
  args = (bank[feature], bank["labels"], bank["mask"], pos_of, test[feature],
          jax.random.key(seed))
  params, over, loss, train_x, test_x = _train_probe(*args, cap=cap, **kw)
  if int(over):  # a device drew more than `cap` rows in some step: exact rerun
    params, _, loss, train_x, test_x = _train_probe(*args, cap=batch_size, **kw)
  test_acc = _probe_accuracy(params, test_x, test["labels"], test["mask"])
  train_acc = _probe_accuracy(params, train_x, bank["labels"], bank["mask"])
  return array_eval.probe_result(test_acc, train_acc, loss, n=n, epochs=epochs,
                                 batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                 standardize=standardize, seed=seed)


# ----------------------------------------------------------------------------------------------
# Few-shot
# ----------------------------------------------------------------------------------------------
@functools.cache
def _take_fn(mesh: Mesh):
  """jit(bank (N_pad, F) row-sharded, pos (R,) replicated) -> (R, F) replicated rows: each row
  comes from its owner (others add zeros); only the R rows cross devices."""
  axes = mesh.axis_names

  def local(x, pos):
    rows = x.shape[0]
    mine = pos // rows == jax.lax.axis_index(axes)
    got = jnp.where(mine[:, None], x[jnp.where(mine, pos - rows * jax.lax.axis_index(axes), 0)],
                    0)
    return jax.lax.psum(got, axes)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P()), out_specs=P(),
                               check_vma=False))


def few_shot_ridge(bank: Bank, test: Bank, *, num_classes: int, feature: str = "features",
                   shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                   lam: float = 1e-3) -> dict[str, Any]:
  """`array_eval.few_shot_ridge`'s protocol, draws and result dict, on a sharded bank."""
  labels = bank.host("labels")  # (N,) in split order: array_eval's draws on the same split
  pos_of = _positions(bank)
  take = _take_fn(bank.mesh)
  rows = max(shots) * num_classes
  res = {}
  for s in shots:
    accs = []
    for seed in seeds:
      idx = array_eval.sample_few_shot(labels, int(s), num_classes, int(seed))
      weights = np.zeros((rows,), np.float32)
      weights[:idx.size] = 1.0
      idx = np.pad(idx, (0, rows - idx.size), mode="edge")
      x = take(bank[feature], jnp.asarray(pos_of[idx]))
      accs.append(float(array_eval._ridge_accuracy(  # noqa: SLF001
          x, jnp.asarray(labels[idx], jnp.int32), weights, test[feature], test["labels"],
          test["mask"], jnp.float32(lam), num_classes=num_classes)))
    mean, std = array_eval.mean_std(accs)
    res[int(s)] = {"mean": mean, "std": std, "per_seed": accs}
  return {"lam": float(lam), "seeds": [int(s) for s in seeds], "shots": res}


# ----------------------------------------------------------------------------------------------
# Full ridge probe (robustness)
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_classes",))
def _ridge_fit_rows(x, y, mask, lam, *, num_classes):
  # Row-sharded x: XLA forms each device's (F+1) x (F+1) Gram block and sums them (psum).
  return array_eval._ridge_fit(  # noqa: SLF001
      l2_normalize(x), jax.nn.one_hot(y, num_classes), lam, mask.astype(jnp.float32))


@jax.jit
def _ridge_rows_accuracy(w, x, y, m):
  logits = jnp.dot(l2_normalize(x), w[:-1], precision=_HI) + w[-1]
  return array_eval._masked_accuracy(  # noqa: SLF001
      jnp.argmax(logits, -1), jnp.asarray(y, jnp.int32), m)


def ridge_probe(bank: Bank, *, num_classes: int, feature: str = "features",
                lam: float = 1e-3) -> jax.Array:
  """The authors' few-shot ridge (L2-normalised features + bias, one-hot targets, λ) fitted on
  every real row of `bank`: (F + 1, C) weights, the bias last. Padding rows weigh 0; the bank
  stays split by rows."""
  return _ridge_fit_rows(bank[feature], bank["labels"], bank["mask"], jnp.float32(lam),
                         num_classes=num_classes)


def ridge_accuracy(weights: jax.Array, test: Bank, *, feature: str = "features") -> float:
  """Top-1 accuracy of `ridge_probe` weights (F + 1, C) over the real rows of `test`."""
  return float(_ridge_rows_accuracy(weights, test[feature], test["labels"], test["mask"]))
