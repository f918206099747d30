"""Multi-process start-up shared by the CLIs (`simlap.main`, `simlap.evaluate`).

On Cloud TPU pods and under SLURM (one task per GPU) JAX finds its peers by itself; elsewhere
pass --coordinator_address, --num_processes and --process_id (and --local_device_ids when a
process should see only some local devices). `initialize` calls `jax.distributed.initialize`
exactly when the job has more than one process, so every CLI started on one worker of a slice
joins the others instead of waiting for them (libtpu) or believing it is process 0 (SLURM).
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags

_DEFS = (
    ("coordinator_address", flags.DEFINE_string, None,
     "host:port of process 0 (multi-process runs)."),
    ("num_processes", flags.DEFINE_integer, None, "Processes in the job."),
    ("process_id", flags.DEFINE_integer, None, "This process's index."),
    ("local_device_ids", flags.DEFINE_list, None, "Local device ids to use."),
    ("heartbeat_timeout_seconds", flags.DEFINE_integer, 100,
     "Multi-process: a process silent this long is declared dead and the job is stopped."),
)


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
  """Defines the multi-process flags on `flag_values` (default absl's FLAGS); idempotent."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for name, define, default, help_text in _DEFS:
    if name not in fv:
      define(name, default, help_text, flag_values=fv)


def should_initialize(fv: flags.FlagValues | None = None) -> bool:
  """Whether this job has several processes: flags, SLURM with several tasks, or a multi-host
  Cloud TPU slice."""
  fv = flags.FLAGS if fv is None else fv
  if fv.coordinator_address or (fv.num_processes or 1) > 1:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def initialize(fv: flags.FlagValues | None = None) -> bool:
  """`jax.distributed.initialize` from the flags when the job has several processes, then (on
  CPU) one collective so Gloo connects while the processes are in step. Returns whether the
  job is multi-process."""
  import jax  # noqa: PLC0415 - after the CLI has set its environment
  fv = flags.FLAGS if fv is None else fv
  if should_initialize(fv):
    local_ids = [int(i) for i in fv.local_device_ids] if fv.local_device_ids else None
    jax.distributed.initialize(coordinator_address=fv.coordinator_address,
                               num_processes=fv.num_processes, process_id=fv.process_id,
                               local_device_ids=local_ids,
                               heartbeat_timeout_seconds=fv.heartbeat_timeout_seconds)
  logging.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  multi = jax.process_count() > 1
  if multi and jax.devices()[0].platform == "cpu":
    connect_cpu_collectives()
  return multi


def connect_cpu_collectives() -> None:
  """Runs one all-device reduction so the processes' Gloo communicator exists from the start.

  Gloo (JAX's CPU collectives) connects the processes lazily, at their first collective, and
  gives the peers a fixed 30 s (in XLA, not configurable) to join. Processes can drift further
  apart than that before the first train step, e.g. when one compiles it from scratch and
  another loads it from a persistent compilation cache, and the early one then fails with
  "Gloo context initialization failed: ... GetKeyValue() timed out". Here, just after
  `jax.distributed.initialize` returned on every process, they are in step; once connected,
  a collective waits for a late peer for XLA's collective timeout (minutes), not 30 s.
  The communicator is keyed by its devices, so reducing over all of them covers the data
  mesh's collectives.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415
  mesh = Mesh(np.asarray(jax.devices()), ("all",))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec("all")), np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(ones)
  if int(total) != jax.device_count():
    raise RuntimeError(f"all-device sum is {int(total)}, expected {jax.device_count()}")


def exit_now(status: int = 1) -> None:
  """Flushes the logs and exits with `status` at once, skipping `jax.distributed.shutdown`.

  The atexit shutdown barrier would wait (up to its 5-minute timeout) for peers that are
  blocked in a collective with this process, and interpreter shutdown would wait for Orbax's
  and TensorFlow's threads; exiting closes the connections instead, so peers fail at once with
  a collective error and exit through here too. Callers report the error first.
  """
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # skips the atexit shutdown barrier and thread joins on purpose
