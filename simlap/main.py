"""Entry point: `python -m simlap.main --config=configs/default.py --workdir=runs/x`.

Flags only; the work happens in `simlap.train.train_and_evaluate`. Config overrides use
ml_collections syntax: `--config=configs/in1k.py:smoke --config.batch_size=512`.

Multi-process jobs: simlap/distributed.py (its flags: --coordinator_address, --num_processes,
--process_id, --local_device_ids, --heartbeat_timeout_seconds).

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

from absl import app
from absl import flags
from ml_collections import config_flags

# Before TensorFlow or JAX start: quiet TF's C++ logs and keep TFDS away from GCS metadata,
# which, offline, retries for minutes before failing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402

from simlap import console  # noqa: E402
from simlap import distributed  # noqa: E402
from simlap import platforms  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.filter_console()  # before JAX's first log line (e.g. probing for a TPU)
  platforms.skip_absent_tpu()
  multi_process = distributed.initialize()  # the one start-up shared with simlap.evaluate
  log_file = console.log_to_file(_WORKDIR.value, jax.process_index())
  if log_file:
    logging.info("full log: %s", log_file)
  try:
    # Imported here, after distributed init (keeps `--help` instant), with TensorFlow's
    # import-time C++ notices kept off the console.
    with console.quiet_native_stderr():
      from simlap import train  # noqa: PLC0415
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except BaseException:  # pylint: disable=broad-except
    if not multi_process:
      raise
    distributed.exit_now()
  if jax.process_index() == 0:
    print("\n==== simlap summary ====")
    print(json.dumps(summary, indent=2))
    print(f"TensorBoard: tensorboard --logdir {summary['workdir']}")
    print(f"Checkpoints: {os.path.join(summary['workdir'], 'checkpoints')}")


if __name__ == "__main__":
  app.run(main)
