"""The first save of a process compiles nothing for small replicated arrays, and keeps Orbax's
replica-parallel save for big ones (runtime/checkpointing.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL).

Orbax's default slices every replicated array across its replicas on the device: one compiled
program per array shape at a process's first save (128 on the test model, 5 s on 2 cores). The
arrays here have shapes no other test uses, so the in-process jit cache cannot hide a slice.
"""
from __future__ import annotations

import jax
import numpy as np
from jax import monitoring
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simlap.runtime import checkpointing


def _compiles_during(fn) -> int:
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":  # jax's BACKEND_COMPILE_EVENT
      count[0] += 1

  monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    monitoring.unregister_event_duration_listener(listener)
  return count[0]


def _replicated(shape, seed):
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return jax.device_put(x, NamedSharding(mesh, P()))


def _save_compiles(tmp_path, name, tree) -> int:
  """Compiles during the save of `tree` (the write awaited); checks it restores equal."""
  ckpt = checkpointing.Checkpointer(str(tmp_path / name), every_steps=1, keep=2)
  try:
    compiles = _compiles_during(lambda: (ckpt.save(1, tree, {"step": 1}, force=True),
                                         ckpt.check_saves(wait=True)))
    restored, _, step = ckpt.restore(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree), step=1)
  finally:
    ckpt.close()
  assert step == 1
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  return compiles


def test_small_replicated_arrays_are_saved_without_compiling(num_devices, tmp_path):
  # 8 rows: each replica's slice would be one row of 4-52 bytes, far below the threshold.
  small = {f"w{i}": _replicated((num_devices, 1 + 13 * i), i) for i in range(1, 5)}
  assert _save_compiles(tmp_path, "small", small) == 0


def test_big_replicated_arrays_keep_the_replica_parallel_save(num_devices, tmp_path):
  per_replica = checkpointing.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL // 4 + 3  # float32 elements
  big = {"w": _replicated((num_devices, per_replica), 7)}
  assert _save_compiles(tmp_path, "big", big) >= 1  # its slice, on the device
