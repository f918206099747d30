"""One owner per workdir: a lease file, W/lease.json, that a run holds while it writes there.

Two runs writing one workdir would interleave metrics rows and overwrite each other's
checkpoints, so a run takes the lease before it writes anything and a second run is refused at
once, naming the owner. The file holds host, pid, start time, a heartbeat (rewritten every
`heartbeat_s` by a daemon thread) and a token that identifies the holder; a lease whose
heartbeat is older than `stale_after_s`, or whose process on this host is gone, may be taken
over. In a multi-process job only process 0 holds it and shares its verdict (`simlap.main`).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from simlap.runtime import storage

LEASE_FILE = "lease.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # 10 missed heartbeats: the holder is gone
# Tells this process from an earlier one with the same pid (a restarted container's pid 1).
_PROCESS = secrets.token_hex(8)


class WorkdirBusyError(ValueError):
  """Another live run holds the workdir's lease (bad input to this run: status 2)."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> dict[str, Any] | None:
  """The lease at `path`; None if there is none. A damaged lease reads as a stale one."""
  try:
    text = storage.read_text(path)
  except FileNotFoundError:
    return None
  try:
    lease = json.loads(text)
    float(lease["heartbeat"])
    return lease
  except (ValueError, KeyError, TypeError):
    return {"host": "?", "pid": -1, "start": 0.0, "heartbeat": 0.0, "token": "damaged"}


def describe(lease: dict[str, Any], now: float | None = None) -> str:
  now = time.time() if now is None else now
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("start", 0))))
  return (f"pid {lease.get('pid')} on host {lease.get('host')!r}, started {started}, "
          f"last heartbeat {now - float(lease['heartbeat']):.0f} s ago")


class Lease:
  """The lease on one workdir; `acquire` takes it or raises WorkdirBusyError."""

  def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.path = os.path.join(workdir, LEASE_FILE)
    self._workdir = workdir
    self._heartbeat_s = heartbeat_s
    self._stale_after_s = stale_after_s
    self._token = secrets.token_hex(8)
    self._start = time.time()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": self._start,
            "heartbeat": time.time(), "token": self._token, "process": _PROCESS}

  def _is_stale(self, lease: dict[str, Any]) -> str | None:
    """Why `lease` may be taken over, or None while its holder may still be alive."""
    age = time.time() - float(lease["heartbeat"])
    if age > self._stale_after_s:
      return f"its heartbeat is {age:.0f} s old (stale after {self._stale_after_s:.0f} s)"
    if lease.get("host") == socket.gethostname():
      pid = int(lease.get("pid", -1))
      earlier_life = pid == os.getpid() and lease.get("process") != _PROCESS
      if earlier_life or not _pid_alive(pid):
        return f"its process {pid} on this host no longer exists"
    return None

  def _write_new(self) -> bool:
    """Writes a lease where none is; False if another appeared first."""
    return storage.create_exclusive(self.path, json.dumps(self._record()).encode())

  def acquire(self) -> None:
    """Takes the lease (taking over a stale one, with a warning) and starts the heartbeat.

    The take is a create-if-absent (`storage.create_exclusive`), so of two racing runs exactly
    one wins. Taking over a stale lease removes it, then creates anew: two runs taking over the
    same lease both pass the removal, and the create lets one of them win.
    """
    for _ in range(3):  # a stale lease removed by us, then a racing run may win: re-read
      current = _read(self.path)
      if current is not None:
        why = self._is_stale(current)
        if why is None:
          raise WorkdirBusyError(
              f"workdir {self._workdir!r} is in use by another run ({describe(current)}); "
              f"wait for it to end, or use another --workdir (a crashed run's lease may be "
              f"taken over once its heartbeat is {self._stale_after_s:.0f} s old)")
        logging.warning("taking over the lease of %s from a run that is gone (%s): %s",
                        self._workdir, describe(current), why)
        storage.remove(self.path, missing_ok=True)
      if self._write_new():
        self._thread = threading.Thread(target=self._beat, name="simlap-lease", daemon=True)
        self._thread.start()
        return
    raise WorkdirBusyError(f"workdir {self._workdir!r}: another run took the lease first")

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      try:
        current = _read(self.path)
        if current is None or current.get("token") != self._token:
          logging.error("the lease on %s was taken by another run (%s); this run keeps "
                        "writing there", self._workdir,
                        describe(current) if current else "file removed")
          return
        storage.write_text(self.path, json.dumps(self._record()))
      except Exception:  # pylint: disable=broad-except
        # A heartbeat that cannot be written is not worth stopping a run for; the lease just
        # turns stale sooner. The run's own writes report a full or lost disk.
        logging.warning("could not renew the lease on %s", self._workdir, exc_info=True)

  def release(self) -> None:
    """Stops the heartbeat and removes the lease if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
      current = _read(self.path)
      if current is not None and current.get("token") == self._token:
        storage.remove(self.path, missing_ok=True)

  def __enter__(self) -> Lease:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
