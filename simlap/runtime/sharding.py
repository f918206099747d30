"""Device mesh and shardings. One place decides how arrays are laid out over devices.

The batch is split over every mesh axis. The train state (parameters, optimizer state,
BatchNorm statistics) is either replicated on every device or, with `config.sharding.params =
"fsdp"` (ZeRO-3), split over the same axes: each large leaf along one dimension, so a device
keeps 1/n of it (`state_shardings`). Because the train step is a `jax.jit` over global arrays,
BatchNorm statistics and the contrastive loss are computed over the *global* batch: XLA inserts
the all-reduce / all-gather, and gradients through them are exact.
"""
from __future__ import annotations
import collections
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# config.sharding.params: how the train state is laid out over the mesh.
PARAM_MODES = ("replicated", "fsdp")


def mesh_axes(axes: Sequence) -> tuple[tuple[str, int], ...]:
  """`config.mesh` as ((name, size), ...), checked; raises ValueError naming the problem.

  Takes pairs, `(("data", 8),)` or `[("data", 8)]`, and also the flat `("data", 8)`: that is
  what `--config.mesh="('data',8)"` (or repeated `--config.mesh` flags) parses to, since
  ml_collections reads a tuple field's override as one tuple.
  """
  items = list(axes)
  if items and all(isinstance(a, (str, int, np.integer)) for a in items):  # name, size, ...
    items = [tuple(items[i:i + 2]) for i in range(0, len(items), 2)]
  hint = "expected (name, size) pairs such as (('data', -1),)"
  if not items or not all(isinstance(a, (tuple, list)) and len(a) == 2 for a in items):
    raise ValueError(f"mesh {axes!r}: {hint}")
  if not all(isinstance(n, str) and isinstance(s, (int, np.integer)) and not isinstance(s, bool)
             and (s > 0 or s == -1) for n, s in items):
    raise ValueError(f"mesh {axes!r}: {hint}, names strings, sizes positive or -1")
  out = tuple((name, int(size)) for name, size in items)
  if len({n for n, _ in out}) != len(out):
    raise ValueError(f"mesh {axes!r}: axis names must differ")
  if [s for _, s in out].count(-1) > 1:
    raise ValueError(f"mesh {axes!r}: at most one axis may have size -1")
  return out


def make_mesh(axes: Sequence = (("data", -1),),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from `((name, size), ...)` (any form `mesh_axes` takes); one size may be -1
  (all remaining devices). `devices` defaults to all of them; a subset gives a smaller mesh.

  Axis types are Auto (the `jax.sharding.Mesh` default): shardings are given on inputs and
  outputs of `jax.jit`, and XLA propagates them inside, which is what the trainer relies on.
  """
  axes = mesh_axes(axes)
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [size for _, size in axes]
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
          f"mesh {list(axes)}: {len(devices)} devices do not split into axes of {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"mesh {list(axes)} needs {int(np.prod(sizes))} devices, but {len(devices)} are present")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_spec(mesh: Mesh) -> P:
  """The leading (batch) dimension is split over all mesh axes."""
  return P(mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  """How many ways the global batch is split (product of all mesh axis sizes)."""
  return int(np.prod(list(mesh.shape.values())))


def fsdp_spec(shape: Sequence[int], mesh: Mesh, min_size: int) -> P:
  """FSDP layout of one array of `shape`: split over all mesh axes (as the batch is) along its
  largest dimension divisible by the device count n; ties go to the last such dimension (the
  output features of a kernel). P() (replicated) for scalars, arrays of fewer than `min_size`
  elements (the bytes saved would not pay for the gathers) and arrays with no such dimension.
  """
  n = num_batch_shards(mesh)
  if not shape or math.prod(shape) < min_size:
    return P()
  dims = [d for d, size in enumerate(shape) if size >= n and size % n == 0]
  if not dims:
    return P()
  dim = max(dims, key=lambda d: (shape[d], d))
  return P(*([None] * dim), mesh.axis_names)


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str = "replicated",
                    min_size: int = 2**16) -> Any:
  """NamedShardings for every leaf of `abstract_state` (anything with `.shape`: arrays or
  ShapeDtypeStructs), one pytree of the same structure.

  "replicated": every leaf on every device. "fsdp" (ZeRO-3): each leaf laid out by `fsdp_spec`,
  so a device holds 1/n of every large parameter, optimizer moment and BatchNorm statistic.
  """
  if mode not in PARAM_MODES:
    raise ValueError(f"sharding mode {mode!r} is not one of {PARAM_MODES}")
  if mode == "replicated":
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, mesh, min_size)),
                      abstract_state)


def gather(tree: Any, shardings: Any = None) -> Any:
  """ZeRO-3, into the step: `tree` (weights, BatchNorm statistics) constrained to replicated,
  so XLA all-gathers each sharded leaf and the layers compute on whole weights against
  batch-split activations, as in replicated training. Identity when `shardings` is None
  (replicated mode), so the replicated program carries no constraint at all."""
  if shardings is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, _whole(shardings))


def scatter(tree: Any, shardings: Any = None) -> Any:
  """ZeRO-3, out of the step: `tree` (gradients, new statistics), summed over devices whole,
  then cut to `shardings`: each device keeps its slice of the sum (an all-reduce + slice; the
  CPU and TPU compilers keep it so, docs/tpu.md). Identity when `shardings` is None.

  Why whole first: constrained straight to the shard layout, XLA propagates it back into the
  backward pass and, to compute each device's slice of a weight gradient, all-gathers the
  layer's *activations* over the batch (tested: tests/test_fsdp.py).
  """
  if shardings is None:
    return tree
  tree = jax.lax.with_sharding_constraint(tree, _whole(shardings))
  return jax.lax.with_sharding_constraint(tree, shardings)


def _whole(shardings):
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P()), shardings)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  """Raises a clear error if the global batch cannot be split evenly over devices/processes."""
  shards = num_batch_shards(mesh)
  procs = jax.process_count()
  if global_batch % shards or global_batch % procs:
    raise ValueError(
        f"batch_size={global_batch} does not split evenly over {shards} devices in "
        f"{procs} process(es); choose a multiple of {np.lcm(shards, procs)}")


def global_batches(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                   prefetch: int) -> Iterator[dict[str, jax.Array]]:
  """Global jax.Arrays from local numpy rows, `prefetch` device transfers kept in flight."""
  sharding_ = batch_sharding(mesh)
  queue = collections.deque()

  def put(batch):
    # global_shape=None: JAX infers it from the process count (local rows x processes).
    return {k: jax.make_array_from_process_local_data(sharding_, v)
            for k, v in batch.items()}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


