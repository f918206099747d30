"""Distributed weighted kNN over a row-sharded bank (protocol: simlap/evaluation/array_eval.py).

Per query block (Q queries, replicated): every device scores the block against its own bank
rows and keeps a local top-k; the devices' k candidates (Q, devices·k, tiny) are all-gathered
and merged into the global top-k; the votes are then exactly those of the single-device kNN.
No device ever holds more than its own rows of the bank, and the (Q, N) similarity is never
formed (peak per device: Q × N/devices × 4 bytes).

Tie rule: equal similarities go to the neighbour with the lower position in the split (the
bank's "index" column), which is what `lax.top_k` does on a bank in split order, so the
predictions equal `array_eval.knn_classify`'s whatever the device or process count.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from simlap.evaluation import progress as progress_lib
from simlap.evaluation.bank import Bank
from simlap.losses import l2_normalize

HIGHEST = jax.lax.Precision.HIGHEST


def default_precision(backend: str | None = None) -> jax.lax.Precision:
  """HIGHEST on every backend: see docs/performance.md ("kNN precision") for the measurement.

  On CPU the default is float32 anyway (same numbers, same time); on TPU the default is one
  bf16 pass, which changes neighbours (the numbers in docs/performance.md), and the similarity
  matmul is a small part of an evaluation next to the feature extraction.
  """
  del backend
  return HIGHEST


@functools.cache
def _block_fn(mesh: Mesh, q_local: int, num_classes: int, ks: tuple[int, ...],
              temperature: float, precision):
  """jit(bank feats, labels, mask, index, query feats, labels, mask, index, block) ->
  (len(ks), Q) predictions, (Q,) labels, (Q,) valid, (Q,) query index; all replicated."""
  axes = mesh.axis_names
  spec = P(axes)
  kmax = max(ks)

  def local(bf, by, bm, bi, qf, qy, qm, qi, b):
    # This device's q_local rows of the block; the last block overlaps the previous one
    # (dynamic_slice clamps), and rows already scored are marked invalid.
    n_q = qf.shape[0]
    start = jnp.minimum(b * q_local, n_q - q_local)
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, q_local, 0)  # noqa: E731
    valid = (start + jnp.arange(q_local) >= b * q_local) & take(qm)
    gather = lambda a: jax.lax.all_gather(a, axes, tiled=True)  # noqa: E731
    q, q_y, valid, q_i = gather(l2_normalize(take(qf))), gather(take(qy)), gather(valid), \
        gather(take(qi))
    sim = jnp.dot(q, l2_normalize(bf).T, precision=precision)      # (Q, N / devices)
    sim = jnp.where(bm[None, :], sim, -jnp.inf)                      # padding never votes
    k_local = min(kmax, bf.shape[0])
    top_sim, top_pos = jax.lax.top_k(sim, k_local)                  # ties: lower local row
    # Local rows are in split order on each device, so a tie already went to the lower index.
    top_idx = jnp.where(jnp.isfinite(top_sim), bi[top_pos], jnp.iinfo(jnp.int32).max)
    top_lab = by[top_pos].astype(jnp.int32)
    cand = [jax.lax.all_gather(a, axes, axis=1, tiled=True) for a in (top_sim, top_idx,
                                                                      top_lab)]
    # Global top-k by (similarity descending, split index ascending): the tie rule.
    neg, _, lab = jax.lax.sort((-cand[0], cand[1], cand[2]), dimension=1, num_keys=2)
    top_sim, top_lab = -neg[:, :kmax], lab[:, :kmax]
    kk = top_sim.shape[1]
    w = jnp.exp((top_sim - jnp.max(top_sim, axis=-1, keepdims=True)) / temperature)
    rows = jnp.arange(q.shape[0])[:, None]
    rank = jnp.arange(kk)
    preds = []
    for k in ks:  # scatter-add votes, as in array_eval._knn_predict
      votes = jnp.zeros((q.shape[0], num_classes), jnp.float32)
      votes = votes.at[rows, top_lab].add(jnp.where(rank < k, w, 0.0))
      preds.append(jnp.argmax(votes, axis=-1).astype(jnp.int32))
    return jnp.stack(preds), q_y.astype(jnp.int32), valid, q_i

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 8 + (P(),),
                               out_specs=P(), check_vma=False))


def knn_predict(bank: Bank, queries: Bank, *, num_classes: int,
                ks: Sequence[int] = (10, 20, 50), temperature: float = 0.07,
                feature: str = "features", query_block: int = 1024,
                precision: jax.lax.Precision | None = None,
                should_stop: Callable[[], bool] | None = None,
                name: str = "knn", timings: dict[str, float] | None = None
                ) -> dict[str, object]:
  """Weighted kNN of every real query row against the bank.

  Args:
    bank, queries: row-sharded banks on the same mesh; `feature` names the column used.
    num_classes, ks, temperature: the protocol (array_eval.knn_classify).
    query_block: queries per block (rounded to a multiple of the device count); memory per
      device ~ query_block × N / devices × 4 bytes.
    precision: of the similarity matmul; None = `default_precision()`.
    should_stop: asked after every block (raises `progress.Interrupted`).
    name, timings: the part's name in the log; its seconds are stored in `timings[name]`.

  Returns:
    {"predictions": {k: (M,) int32 in split order}, "accuracy": {k: float}}.
  """
  mesh = bank.mesh
  devices = int(np.prod(list(mesh.shape.values())))
  ks = tuple(int(k) for k in ks)
  m_local = queries[feature].shape[0] // devices
  q_local = max(1, min(query_block // devices, m_local))
  blocks = -(-m_local // q_local)
  fn = _block_fn(mesh, q_local, num_classes, ks, float(temperature),
                 precision or default_precision())
  prog = progress_lib.Progress(name, blocks, should_stop=should_stop)
  outs = []
  args = [bank[feature], bank["labels"], bank["mask"], bank["index"], queries[feature],
          queries["labels"], queries["mask"], queries["index"]]
  for b in range(blocks):
    outs.append([np.asarray(o) for o in fn(*args, np.int32(b))])  # small: (len(ks), Q)
    prog.step()
  preds, labels, valid, index = (np.concatenate([o[i] for o in outs], axis=-1)
                                 for i in range(4))
  dt = prog.finish()
  if timings is not None:
    timings[name] = dt
  order = np.argsort(np.where(valid, index, np.iinfo(np.int32).max), kind="stable")
  order = order[:int(valid.sum())]
  return {"predictions": {k: preds[i][order] for i, k in enumerate(ks)},
          "accuracy": {k: float(np.mean(preds[i][order] == labels[order])) for i, k in
                       enumerate(ks)}}
