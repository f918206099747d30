"""Entry point: `python -m simlap.main --config=configs/default.py --workdir=runs/x`.

Flags only; the work happens in `simlap.training.loop.train_and_evaluate`. Config overrides use
ml_collections syntax (`--config=configs/in1k.py:smoke --config.batch_size=512`); `--config_help`
lists every field. Errors end the run with one line, status 2 for bad input, 1 for run-time
faults (simlap/runtime/errors.py). Process 0 holds the workdir's lease (simlap/runtime/lease.py);
a process that fails in a multi-process job exits at once (`distributed.exit_now`) so that its
peers stop too (docs/reliability.md).
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

from simlap.runtime import console  # noqa: E402
from simlap.runtime import distributed  # noqa: E402
from simlap.runtime import platforms  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.")
flags.DEFINE_bool("config_help", False, "Print every config field (name, default, description) "
                  "and exit; needs no other flag.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def _claim_workdir(workdir: str):
  """Checks and prepares `workdir` and takes its lease on process 0; every process gets the
  same verdict (all refuse or all go on). Returns (resolved workdir, lease or None)."""
  with console.quiet_native_stderr():
    from simlap.runtime import lease as lease_lib  # noqa: PLC0415 - imports TensorFlow
    from simlap.runtime import workdir as workdir_lib  # noqa: PLC0415
  workdir = workdir_lib.prepare(workdir)  # refuses an empty one before anything is written
  lease, refusal = None, None
  if jax.process_index() == 0:
    lease = lease_lib.Lease(workdir)
    try:
      lease.acquire()
    except lease_lib.WorkdirBusyError as e:
      lease, refusal = None, e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
    if refused and refusal is None:
      refusal = lease_lib.WorkdirBusyError(
          f"workdir {workdir!r} is in use by another run (process 0 could not take its lease)")
  if refusal is not None:
    raise refusal
  return workdir, lease


def _exit(status: int, lease=None) -> None:
  """Releases the lease, then exits at once with `status` (`distributed.exit_now` says why)."""
  if lease is not None:
    try:
      lease.release()
    except Exception:  # pylint: disable=broad-except
      logging.warning("could not release the workdir lease", exc_info=True)
  distributed.exit_now(status)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.filter_console()  # before JAX's first log line (e.g. probing for a TPU)
  platforms.skip_absent_tpu()
  from simlap.runtime import errors  # noqa: PLC0415
  try:
    _CONFIG.value.method  # a config file that failed to load raises here
  except Exception as e:  # pylint: disable=broad-except
    _exit(errors.report("main", e))
  multi_process = distributed.initialize()  # the one start-up shared with simlap.evaluate
  lease = None
  try:
    # Before the log file: a refused run must not write into the owner's log.
    workdir, lease = _claim_workdir(_WORKDIR.value)
    log_file = console.log_to_file(workdir, jax.process_index())
    if log_file:
      logging.info("full log: %s", log_file)
    # Imported here, after distributed init (keeps `--help` instant), with TensorFlow's
    # import-time C++ notices kept off the console.
    with console.quiet_native_stderr():
      from simlap.training import loop as train  # noqa: PLC0415
    summary = train.train_and_evaluate(_CONFIG.value, workdir)
  except BaseException as e:  # pylint: disable=broad-except
    if multi_process:
      logging.error("process %d of %d failed; exiting now so the other processes stop too",
                    jax.process_index(), jax.process_count())
    _exit(errors.report("main", e), lease)
  if lease is not None:
    lease.release()
  if jax.process_index() == 0:
    print("\n==== simlap summary ====")
    print(json.dumps(summary, indent=2))
    print(f"TensorBoard: tensorboard --logdir {summary['workdir']}")
    print(f"Checkpoints: {os.path.join(summary['workdir'], 'checkpoints')}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override as one line and exit status 2.

  An unknown `--config.<field>` names the field and the closest valid ones. `--config_help`
  prints the schema and exits 0 before the required flags are checked.
  """
  if "--config_help" in argv[1:]:
    from simlap import config_schema  # noqa: PLC0415
    print(config_schema.help_text())
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except AttributeError as e:  # ml_collections: an override of a field the config lacks
    message = _unknown_field(argv) or f"bad config override: {e}"
  print(f"simlap.main: error: {message}", file=sys.stderr)
  sys.exit(2)


def _unknown_field(argv: list[str]) -> str | None:
  """'unknown config field ...' for the first `--config.<field>` the schema lacks."""
  from simlap import config_schema  # noqa: PLC0415
  from simlap.runtime import errors  # noqa: PLC0415

  def flat(tree, prefix=""):
    for key, value in tree.items():
      yield f"{prefix}{key}"
      if hasattr(value, "items"):
        yield from flat(value, f"{prefix}{key}.")
  known = list(flat(config_schema.base_config()))
  for arg in argv:
    field = arg.split("=", 1)[0].removeprefix("--config.")
    if arg.startswith("--config.") and field not in known:
      near = errors.closest(field, known)
      hint = f"; closest valid: {', '.join(near)}" if near else ""
      return f"unknown config field {field!r} (--config.{field}){hint}"
  return None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
