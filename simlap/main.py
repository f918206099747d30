"""Entry point: `python -m simlap.main --config=configs/default.py --workdir=runs/x`.

Flags only; the work happens in `simlap.train.train_and_evaluate`. Config overrides use
ml_collections syntax: `--config=configs/in1k.py:smoke --config.batch_size=512`.

Multi-process jobs: on Cloud TPU pods and under SLURM (one task per GPU) JAX finds its peers by
itself; elsewhere pass --coordinator_address, --num_processes and --process_id (and
--local_device_ids when a process should see only some local devices).
"""
import json
import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

# Before TensorFlow or JAX start: quiet TF's C++ logs and keep TFDS away from GCS metadata,
# which, offline, retries for minutes before failing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Local device ids to use.")
flags.mark_flags_as_required(["config", "workdir"])


def _should_initialize_distributed() -> bool:
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    return True
  # Auto-detected clusters: SLURM with several tasks, or a multi-host Cloud TPU slice.
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Orbax logs every save at INFO; keep its warnings, drop the chatter."""
  return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in logging.getLogger().handlers:
    handler.addFilter(_quiet_orbax)
  if _should_initialize_distributed():
    local_ids = [int(i) for i in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value, local_device_ids=local_ids)
  logging.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)

  from simlap import train  # after distributed init: importing TF/TFDS first is harmless,
  # but keeping the heavy imports here makes `--help` instant.
  summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print("\n==== simlap summary ====")
    print(json.dumps(summary, indent=2))
    print(f"TensorBoard: tensorboard --logdir {summary['workdir']}")
    print(f"Checkpoints: {os.path.join(summary['workdir'], 'checkpoints')}")


if __name__ == "__main__":
  app.run(main)
