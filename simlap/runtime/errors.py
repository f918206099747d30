"""How the command-line tools end on an error: one line for the user, the traceback in the log.

`simlap.<cmd>: error: <what went wrong>` goes to stderr. Expected errors (a bad config, CLI
value, workdir, dataset, checkpoint or convert source: ValueError, OSError such as a missing
file, KeyError) exit with status 2; run-time faults (a failed save, NaN, a bug) with 1; Ctrl-C
outside the training loop with 130. The traceback goes only to the log files
(W/logs/simlap.<process>.log) that are open when the error happens.
"""
from __future__ import annotations

import difflib
import logging
import sys
import traceback
from collections.abc import Iterable

USAGE = 2
FAULT = 1
INTERRUPTED = 130

# Raised for bad input, by simlap or by the libraries it hands input to.
_EXPECTED = (ValueError, OSError, KeyError, LookupError)
# Run-time faults (status 1) whose message says it all, so `one_line` drops the type name. NaN
# (FloatingPointError, an ArithmeticError) is a fault too, by not being listed above.
_FAULTS = ("SaveFailedError",)


def exit_status(e: BaseException) -> int:
  if isinstance(e, KeyboardInterrupt):
    return INTERRUPTED
  if type(e).__name__ in _FAULTS:
    return FAULT
  return USAGE if isinstance(e, _EXPECTED) else FAULT


def one_line(e: BaseException) -> str:
  """The message of `e` on one line; the type name is kept for run-time faults and for
  errors whose message alone says little (KeyError's is just the key)."""
  if isinstance(e, KeyboardInterrupt):
    return "interrupted (Ctrl-C)"
  text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
  unexpected = exit_status(e) == FAULT and type(e).__name__ not in _FAULTS
  if isinstance(e, KeyError) or not text or unexpected:
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text


def _log_traceback(e: BaseException) -> bool:
  """Writes `e`'s traceback to the open log files only; False if there is none."""
  files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
  if not files:
    return False
  record = logging.LogRecord("simlap", logging.ERROR, __file__, 0, "error: %s", (one_line(e),),
                             (type(e), e, e.__traceback__))
  for handler in files:
    handler.handle(record)
    handler.flush()
  return True


def report(cmd: str, e: BaseException) -> int:
  """Prints `simlap.<cmd>: error: ...` (and where the traceback is), returns the exit status."""
  status = exit_status(e)
  logged = _log_traceback(e)
  if not logged and status == FAULT and type(e).__name__ not in _FAULTS:
    # An unexpected fault with no log file to hold its traceback: keep it, after the line.
    traceback.print_exception(e, file=sys.stderr)
  where = ""
  files = [h.baseFilename for h in logging.getLogger().handlers
           if isinstance(h, logging.FileHandler)]
  if files and status == FAULT:
    where = f" (traceback in {files[0]})"
  print(f"simlap.{cmd}: error: {one_line(e)}{where}", file=sys.stderr, flush=True)
  return status


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
  """Up to `n` of `choices` closest to `name`: the last dotted part counts most, so
  `--config.model.bakbone` finds `model.backbone` and `--config.lr` finds `optimizer.lr`."""
  choices = list(choices)
  whole = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
  tail = name.rsplit(".", 1)[-1]
  by_tail = {c.rsplit(".", 1)[-1]: c for c in choices}
  tails = [by_tail[t] for t in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.6)]
  out = []
  for c in whole + tails:
    if c not in out:
      out.append(c)
  return out[:n]
