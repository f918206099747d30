"""Entry point: `python -m simlap.main --config=configs/default.py --workdir=runs/x`.

Flags only; the work happens in `simlap.train.train_and_evaluate`. Config overrides use
ml_collections syntax: `--config=configs/in1k.py:smoke --config.batch_size=512`.

Multi-process jobs: on Cloud TPU pods and under SLURM (one task per GPU) JAX finds its peers by
itself; elsewhere pass --coordinator_address, --num_processes and --process_id (and
--local_device_ids when a process should see only some local devices).

A process that fails in a multi-process job exits at once (status 1) instead of waiting in JAX's
shutdown barrier for peers that are themselves blocked in a collective on it: its closed
connections make their collectives fail too, so the whole job stops within seconds. A process
that hangs or is killed without an error is declared dead by the coordinator after
--heartbeat_timeout_seconds, which then stops the others. A SIGTERM (preemption) to any process
stops every process after one agreed step, with a checkpoint of it (simlap/preemption.py).
"""
from __future__ import annotations
import json
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

# Before TensorFlow or JAX start: quiet TF's C++ logs and keep TFDS away from GCS metadata,
# which, offline, retries for minutes before failing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402

from simlap import console  # noqa: E402
from simlap import platforms  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Local device ids to use.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100,
    "Multi-process: a process silent this long is declared dead and the job is stopped.")
flags.mark_flags_as_required(["config", "workdir"])


def _should_initialize_distributed() -> bool:
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    return True
  # Auto-detected clusters: SLURM with several tasks, or a multi-host Cloud TPU slice.
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def _connect_cpu_collectives() -> None:
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
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  mesh = Mesh(np.asarray(jax.devices()), ("all",))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec("all")), np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(ones)
  if int(total) != jax.device_count():
    raise RuntimeError(f"all-device sum is {int(total)}, expected {jax.device_count()}")


def _exit_now() -> None:
  """Logs the exception and exits with status 1, skipping `jax.distributed.shutdown`.

  The atexit shutdown barrier would wait (up to its 5-minute timeout) for peers that are
  blocked in a collective with this process; exiting closes its connections instead, so they
  fail at once with a collective error and exit through here too.
  """
  logging.exception("process %d of %d failed; exiting now so the other processes stop too",
                    jax.process_index(), jax.process_count())
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # skips the atexit shutdown barrier on purpose (see the docstring)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.filter_console()  # before JAX's first log line (e.g. probing for a TPU)
  platforms.skip_absent_tpu()
  if _should_initialize_distributed():
    local_ids = [int(i) for i in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, local_device_ids=local_ids,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  logging.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  log_file = console.log_to_file(_WORKDIR.value, jax.process_index())
  if log_file:
    logging.info("full log: %s", log_file)
  multi_process = jax.process_count() > 1
  try:
    if multi_process and jax.devices()[0].platform == "cpu":
      _connect_cpu_collectives()
    # Imported here, after distributed init (keeps `--help` instant), with TensorFlow's
    # import-time C++ notices kept off the console.
    with console.quiet_native_stderr():
      from simlap import train  # noqa: PLC0415
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except BaseException:  # pylint: disable=broad-except
    if not multi_process:
      raise
    _exit_now()
  if jax.process_index() == 0:
    print("\n==== simlap summary ====")
    print(json.dumps(summary, indent=2))
    print(f"TensorBoard: tensorboard --logdir {summary['workdir']}")
    print(f"Checkpoints: {os.path.join(summary['workdir'], 'checkpoints')}")


if __name__ == "__main__":
  app.run(main)
