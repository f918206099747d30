"""What the console shows, and where the rest goes.

The console keeps simlap's own lines (config, start or resume, periodic loss, evaluation results,
summary), clu's progress line (steps/s and ETA) and every warning or error except known library
noise. Everything, INFO and library lines included, also goes to W/logs/simlap.<process>.log for
local workdirs. TensorFlow prints oneDNN notices from C++ while it is imported, before its log
level can be set, so entry points import it inside `quiet_native_stderr`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # simlap/
_PROGRESS = "Setting work unit notes"  # clu.periodic_actions.ReportProgress: steps/s, ETA
# Warnings that say nothing a user can act on: TFDS's own deprecations and first-prepare notes.
_NOISE_SOURCES = (os.sep + "tensorflow_datasets" + os.sep,)


class ConsoleFilter(logging.Filter):
  """Passes simlap's records, clu's progress line and non-noise warnings (see module doc)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.pathname.startswith(_PACKAGE_DIR):
      return True
    if record.levelno >= logging.WARNING:
      return not any(s in record.pathname for s in _NOISE_SOURCES)
    return record.getMessage().startswith(_PROGRESS)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
  """Sends what native code writes to file descriptor 2 to /dev/null inside the block.

  Python exceptions still propagate (and print after the block); only C++ chatter is lost.
  """
  sys.stderr.flush()
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def filter_console() -> None:
  """Adds `ConsoleFilter` to the handlers that exist now (absl's stderr handler)."""
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
      handler.addFilter(ConsoleFilter())


def log_to_file(workdir: str, process_index: int = 0) -> str | None:
  """Sends every record to W/logs/simlap.<process>.log; returns its path (None for a URL
  workdir, which Python's file logging cannot append to: there the console is the log)."""
  root = logging.getLogger()
  if "://" in workdir:
    return None
  path = os.path.join(os.path.abspath(workdir), "logs", f"simlap.{process_index}.log")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  file_handler = logging.FileHandler(path, encoding="utf-8")
  file_handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"))
  root.addHandler(file_handler)
  return path
