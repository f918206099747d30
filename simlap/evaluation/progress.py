"""Progress of a long evaluation part on the console (done / total, rate, ETA), the stop check
between its blocks, and `timed`, the seconds of a named part.

At ImageNet size an extraction or a kNN takes minutes: the log shows how far it is, at most
every `every_s` seconds, and `should_stop` (the training loop's preemption check) is asked
after every block so that a notice is honoured within one block, the same way on every process.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def timed(timing: dict[str, float], name: str) -> Iterator[None]:
  """`with timed(timing, "knn"): ...` sets `timing["knn"]` to the block's wall seconds (a block
  that raises records nothing: its result is lost too)."""
  start = time.time()
  yield
  timing[name] = time.time() - start


class Interrupted(Exception):
  """An evaluation ended early because `should_stop` said so (a preemption notice)."""


class Progress:
  """Counts blocks of one part ("extract train", "knn backbone"), logs rate and ETA."""

  def __init__(self, name: str, total: int, *, every_s: float = 10.0,
               should_stop: Callable[[], bool] | None = None):
    self.name, self.total, self._every = name, int(total), every_s
    self._stop = should_stop
    self._t0 = self._last = time.time()
    self.done = 0

  def step(self, n: int = 1) -> None:
    """One more block done; raises `Interrupted` if the stop check asks for it."""
    self.done += n
    now = time.time()
    if now - self._last >= self._every and self.done < self.total:
      self._last = now
      rate = self.done / (now - self._t0)
      logging.info("%s: %d/%d (%.0f%%), %.1f blocks/s, ETA %s", self.name, self.done, self.total,
                   100 * self.done / self.total, rate, _clock((self.total - self.done) / rate))
    if self._stop is not None and self._stop():
      raise Interrupted(f"{self.name} stopped after {self.done}/{self.total} blocks")

  def elapsed(self) -> float:
    return time.time() - self._t0

  def finish(self) -> float:
    """Logs the part's time; returns it in seconds."""
    dt = self.elapsed()
    logging.info("%s: %d blocks in %.1f s", self.name, self.done, dt)
    return dt


def _clock(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
