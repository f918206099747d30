"""Device mesh and shardings. One place decides how arrays are laid out over devices.

The batch is split over every mesh axis; parameters and optimizer state are replicated (a
future FSDP rule for ViT would shard them over "data" too). Because the train step is a
`jax.jit` over global arrays, BatchNorm statistics and the contrastive loss are computed over
the *global* batch: XLA inserts the all-reduce / all-gather, and gradients through them are exact.
"""
from __future__ import annotations
import collections
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from `[(name, size), ...]`; one size may be -1 (all remaining devices).

  Axis types are Auto (the `jax.sharding.Mesh` default): shardings are given on inputs and
  outputs of `jax.jit`, and XLA propagates them inside, which is what the trainer relies on.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {list(axes)}: at most one axis may have size -1")
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


