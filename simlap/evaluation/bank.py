"""The feature bank: frozen features of a whole split as global arrays split by rows.

Each device writes its own rows of every eval batch into a preallocated, donated buffer, so it
holds N_pad / devices rows and the bank is never replicated, concatenated or copied to a host.
Rows are device-major, so every column carries "index", the position in the split (-1 on padding,
whose "mask" is False); on each device the real rows ascend in it, and evaluators order by it
(kNN ties, few-shot draws, probe minibatches): results do not depend on the device or process
count. Jitted functions are cached per (model, mesh, shape), so a run's evaluations compile once.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simlap.runtime import sharding
from simlap.data import datasets
from simlap.data import eval_stream
from simlap.evaluation import progress as progress_lib


@dataclasses.dataclass(frozen=True)
class Bank:
  """Columns of one split, each a global array of N_pad rows split over the mesh's devices.

  columns: "features" (N_pad, F) backbone features, "predictions" (N_pad,) online-probe argmax,
  "labels" (N_pad,), "mask" (N_pad,) bool, "index" (N_pad,) int32 position in the split (-1 on
  padding), with `embeddings` also "embeddings" (N_pad, D), and extra label keys (e.g.
  "coarse_label"). num_examples: the real rows, N.
  """
  columns: dict[str, jax.Array]
  num_examples: int
  mesh: Mesh

  def __getitem__(self, name: str) -> jax.Array:
    return self.columns[name]

  def host(self, name: str) -> np.ndarray:
    """(N,) column of the real rows in split order on every host. For small columns only
    (labels, predictions): an (N, F) column would put the whole bank on each host."""
    return host_rows(self, (name,))[name]


def row_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh.axis_names))


def gathered(bank: Bank, names) -> dict[str, np.ndarray]:
  """Columns `names` whole, in bank row order, as numpy on every process. For the test split
  (analysis) and (N,) columns only, never the train bank's features."""
  cols = {n: bank[n] for n in names}
  if jax.process_count() > 1:
    cols = multihost_utils.process_allgather(cols, tiled=True)
  return {n: np.asarray(v) for n, v in cols.items()}


def host_rows(bank: Bank, names) -> dict[str, np.ndarray]:
  """Real rows of `names` in split order, as numpy on every process (see `gathered`)."""
  cols = gathered(bank, (*names, "index"))
  index = cols.pop("index")
  order = np.argsort(index, kind="stable")[index.size - bank.num_examples:]  # -1 rows first
  return {n: v[order] for n, v in cols.items()}


# ----------------------------------------------------------------------------------------------
# Compiled once per (model, mesh, shape)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)  # bounded: a method x seed grid builds many models in one process
def features_fn(model, mesh: Mesh, embeddings: bool):
  """jit(params, batch_stats, images) -> row-sharded dict of one batch's outputs."""
  def fn(params, batch_stats, images):
    # Whole weights against split batches, also when the state is sharded (FSDP): XLA then
    # gathers the weights, never the activations. A no-op for a replicated state.
    params, batch_stats = jax.lax.with_sharding_constraint((params, batch_stats),
                                                           sharding.replicated(mesh))
    out = model.apply({"params": params["model"], "batch_stats": batch_stats}, images,
                      train=False)
    res = {"features": out["features"],
           "predictions": jnp.argmax(out["probe_logits"], axis=-1).astype(jnp.int32)}
    if embeddings:  # otherwise XLA drops the projector: online eval pays nothing for it
      res["embeddings"] = out["embeddings"]
    return res
  return jax.jit(fn, out_shardings=row_sharding(mesh))


@functools.cache
def _zeros_fn(mesh: Mesh, shapes: tuple):
  """jit() -> {name: zeros(shape, dtype)} created sharded (no device ever holds it whole)."""
  return jax.jit(lambda: {n: jnp.zeros(s, d) for n, s, d in shapes},
                 out_shardings=row_sharding(mesh))


@functools.cache
def _write_fn(mesh: Mesh):
  """jit(bank, part, i) -> bank with each device's rows of batch i written at its local row
  i * (rows per device): local copies only, the buffer donated (no second bank)."""
  spec = P(mesh.axis_names)

  def local(bank, part, i):
    return jax.tree.map(lambda b, p: jax.lax.dynamic_update_slice_in_dim(
        b, p.astype(b.dtype), i * p.shape[0], axis=0), bank, part)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=spec),
                 donate_argnums=0)


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------
def _slice_sizes(config, split: str) -> list[int]:
  """Examples in each process's slice of `split` (contiguous, in process order)."""
  builder = datasets.prepared_builder(config)
  pc = jax.process_count()
  return [datasets.num_examples(builder, tfds.split_for_jax_process(
      split, process_index=i, process_count=pc)) for i in range(pc)]


def extract_bank(config, model, state, mesh: Mesh, split: str, *, embeddings: bool = False,
                 should_stop: Callable[[], bool] | None = None,
                 timings: dict[str, float] | None = None) -> Bank:
  """Runs the model in inference mode over every example of `split` -> a row-sharded `Bank`.

  `should_stop` is asked after every batch (raises `progress.Interrupted` when it says so);
  the extraction's seconds go to `timings["extract <split>"]`.
  """
  return extract_batches(model, state, mesh, eval_stream.eval_iterator(config, mesh, split),
                         _slice_sizes(config, split), name=f"extract {split}",
                         embeddings=embeddings, should_stop=should_stop, timings=timings)


def extract_batches(model, state, mesh: Mesh, batches, sizes: Sequence[int], *, name: str,
                    embeddings: bool = False, should_stop: Callable[[], bool] | None = None,
                    timings: dict[str, float] | None = None) -> Bank:
  """`extract_bank` over any eval batches: `batches` has a len() (the same on every process)
  and yields global {"image", "label", "mask", extra labels} batches of each process's
  contiguous slice, `sizes[i]` real examples for process i (eval_stream's contract)."""
  start, count = sum(sizes[:jax.process_index()]), sizes[jax.process_index()]
  fn, write = features_fn(model, mesh, embeddings), _write_fn(mesh)
  prog = progress_lib.Progress(name, len(batches), should_stop=should_stop)
  bank = None
  local_rows = None
  for i, batch in enumerate(batches):
    part = fn(state.params, state.batch_stats, batch.pop("image"))
    part.update({"labels" if k == "label" else k: v for k, v in batch.items()})
    if local_rows is None:
      local_rows = part["mask"].shape[0] // jax.process_count()
    pos = i * local_rows + np.arange(local_rows)
    index = np.where(pos < count, start + pos, -1).astype(np.int32)
    part["index"] = jax.make_array_from_process_local_data(row_sharding(mesh), index)
    if bank is None:
      n_pad = len(batches) * part["mask"].shape[0]
      shapes = tuple((n, (n_pad, *v.shape[1:]), v.dtype) for n, v in sorted(part.items()))
      bank = _zeros_fn(mesh, shapes)()
    bank = write(bank, part, np.int32(i))
    prog.step()
  dt = prog.finish()
  if timings is not None:
    timings[prog.name] = dt
  return Bank(columns=bank, num_examples=sum(sizes), mesh=mesh)


def extract_features(config, model, state, mesh, split: str, *,
                     embeddings: bool = False) -> dict[str, np.ndarray]:
  """Frozen features of every example of `split` on the host, padding rows last (see "mask").

  Returns host arrays over the padded split (N_pad rows, the N real ones first in split
  order): "features" (N_pad, F) pooled backbone features, "predictions" (N_pad,) online-probe
  argmax, "labels" (N_pad,), "mask" (N_pad,) bool (True = real example; each appears exactly
  once), with `embeddings` also "embeddings" (N_pad, D), and any extra label keys of the
  dataset (e.g. "coarse_label") under their own names.
  """
  bank = extract_bank(config, model, state, mesh, split, embeddings=embeddings)
  names = [n for n in bank.columns if n != "index"]
  cols = gathered(bank, names + ["index"])
  index = cols.pop("index")
  order = np.argsort(np.where(index < 0, np.iinfo(np.int32).max, index), kind="stable")
  return {n: v[order] for n, v in cols.items()}
