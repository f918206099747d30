"""Growing files on object stores, written as numbered part objects from a background thread.

GCS has no append, and rewriting a growing file whole at every log step writes O(steps²) bytes
on the training thread. Here each write is a new object `<folder>/<prefix><first>-<last><suffix>`
(8-digit numbers, so names sort) holding the bytes since the last one, written by a daemon
thread; every `merge_every` single parts are merged into one, so every byte is written at most
twice. Reading concatenates the parts in name order, skipping a part whose numbers fall inside
an earlier one's (left by a merge or heal killed before it removed its inputs).
"""
from __future__ import annotations

import logging
import queue
import re
import threading
from typing import NamedTuple

from simlap.runtime import storage


class Part(NamedTuple):
  first: int
  last: int
  path: str


class Parts:
  """The parts in `folder` named `<prefix><first:08d>-<last:08d><suffix>`."""

  def __init__(self, folder: str, prefix: str = "", suffix: str = ""):
    self.folder, self.prefix, self.suffix = folder, prefix, suffix
    self._pattern = re.compile(re.escape(prefix) + r"(\d{8})-(\d{8})" + re.escape(suffix) + "$")

  def path(self, first: int, last: int) -> str:
    return f"{self.folder}/{self.prefix}{first:08d}-{last:08d}{self.suffix}"

  def all(self) -> list[Part]:
    """Every part, in reading order: by first number, the widest first."""
    found = []
    for name in storage.listdir(self.folder):
      m = self._pattern.match(name)
      if m:
        found.append(Part(int(m.group(1)), int(m.group(2)), f"{self.folder}/{name}"))
    return sorted(found, key=lambda p: (p.first, -p.last))

  def split(self) -> tuple[list[Part], list[Part]]:
    """(parts to read, parts covered by an earlier one)."""
    live, covered, end = [], [], -1
    for part in self.all():
      (covered if part.last <= end else live).append(part)
      end = max(end, part.last)
    return live, covered

  def read(self) -> bytes:
    return b"".join(storage.read_bytes(p.path) for p in self.split()[0])

  def last_number(self) -> int:
    return max((p.last for p in self.all()), default=0)

  def remove_covered(self) -> None:
    for part in self.split()[1]:
      storage.remove(part.path, missing_ok=True)


class PartWriter:
  """Appends bytes to `parts` as new part objects, written by a daemon thread.

  `append` only queues; `sync` waits until everything queued is written; `close` also stops
  the thread. A write that fails is raised by the next `append`, `sync` or `close`.
  """

  def __init__(self, parts: Parts, merge_every: int = 64):
    self.parts = parts
    parts.remove_covered()
    self._next = parts.last_number() + 1
    self._merge_every = merge_every
    self._singles: list[tuple[int, bytes]] = []  # parts not merged yet, with their bytes
    self._queue: queue.Queue[bytes | None] = queue.Queue()
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name="simlap-parts", daemon=True)
    self._thread.start()

  def _raise(self) -> None:
    if self._error is not None:
      error, self._error = self._error, None
      raise OSError(f"writing {self.parts.folder}: {error}") from error

  def append(self, data: bytes) -> None:
    self._raise()
    if data:
      self._queue.put(data)

  def sync(self) -> None:
    self._queue.join()
    self._raise()

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join()
    self._raise()

  def _run(self) -> None:
    while True:
      items = [self._queue.get()]
      while not self._queue.empty():  # a slow store gets fewer, larger parts
        items.append(self._queue.get())
      stop = items[-1] is None
      data = b"".join(x for x in items if x is not None)
      try:
        if data:
          self._write(data)
      except Exception as e:  # pylint: disable=broad-except - reported to the writer's caller
        logging.warning("could not write a part to %s", self.parts.folder, exc_info=True)
        self._error = e
      for _ in items:
        self._queue.task_done()
      if stop:
        return

  def _write(self, data: bytes) -> None:
    number, self._next = self._next, self._next + 1
    storage.write_bytes(self.parts.path(number, number), data)
    self._singles.append((number, data))
    if len(self._singles) >= self._merge_every:
      first, last = self._singles[0][0], self._singles[-1][0]
      storage.write_bytes(self.parts.path(first, last), b"".join(d for _, d in self._singles))
      for n, _ in self._singles:  # a kill here leaves covered parts: skipped, then removed
        storage.remove(self.parts.path(n, n), missing_ok=True)
      self._singles = []
