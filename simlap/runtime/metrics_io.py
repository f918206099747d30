"""Metric output on process 0: TensorBoard (clu), a JSONL file and console progress."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers

from simlap.runtime import parts as parts_lib
from simlap.runtime import storage
from simlap.runtime import tb_events


class JsonlWriter(tb_events.ScalarWriter):
  """Appends one JSON object per `write_scalars` call to `path`: {"step": s, name: value}.

  Plain JSONL, so notebooks and scripts read a local run with `pandas.read_json(path,
  lines=True)`. Non-finite values are written as null (JSON has no NaN). Object stores (gs://)
  cannot append: there each flush queues the rows since the last one as a new part object of
  `path + ".parts"` (`simlap.runtime.parts`, written by a background thread), and `read_jsonl` reads
  the file and its parts back as one, in order.
  """

  def __init__(self, path: str, resume_step: int | None = None):
    """`resume_step`: the step a resumed run restored; the file is first healed to it
    (see `heal`), so that it holds each step once when the run goes on."""
    self._path = path
    self._remote = storage.is_remote(path)
    if resume_step is not None:
      heal(path, resume_step)
    if self._remote:
      self._parts = parts_lib.PartWriter(url_parts(path))
      self._lines: list[str] = []
    else:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    for name, value in scalars.items():
      value = float(np.asarray(value))
      row[name] = value if math.isfinite(value) else None
    line = json.dumps(row) + "\n"
    if self._remote:
      self._lines.append(line)
    else:
      self._file.write(line)

  def write_hparams(self, hparams):  # only scalars go to JSONL; the rest is TensorBoard's job
    pass

  def flush(self) -> None:
    """Local: to the file now. URL: queued as one part (written in the background)."""
    if self._remote:
      data, self._lines = "".join(self._lines).encode("utf-8"), []
      self._parts.append(data)
    else:
      self._file.flush()

  def sync(self) -> None:
    """Returns once every row written so far is stored (URL parts included)."""
    self.flush()
    if self._remote:
      self._parts.sync()

  def close(self) -> None:
    self.flush()
    if self._remote:
      self._parts.close()
    else:
      self._file.close()


def url_parts(path: str) -> parts_lib.Parts:
  """The part objects of the URL metrics file `path`: `path.parts/<first>-<last>.jsonl`."""
  return parts_lib.Parts(path + ".parts", suffix=".jsonl")


def _read_all(path: str) -> bytes:
  """The metrics file at `path` with its parts (URLs), in order; b"" when there is none.

  A whole `path` object comes first, as part 0, unless a part numbered from 0 (the one `heal`
  writes) covers it."""
  if not storage.is_remote(path):
    return storage.read_bytes(path) if storage.exists(path) else b""
  parts = url_parts(path)
  live = parts.split()[0]
  base = b""
  if not (live and live[0].first == 0) and storage.exists(path):
    base = storage.read_bytes(path)
  return base + b"".join(storage.read_bytes(p.path) for p in live)


def heal(path: str, resume_step: int) -> None:
  """Makes metrics.jsonl fit a run resumed at `resume_step`, rewriting it only if needed.

  A kill in mid-write leaves a torn last line: it is cut off (else the next row is glued onto
  it and the file no longer parses as JSON lines). Rows past `resume_step` were logged after
  the checkpoint the run resumed from; the resumed run recomputes them, so they are dropped,
  with a note, and the file then holds each step once. The new content is written aside and
  renamed into place (a URL: written as one part numbered from 0, which covers the others,
  then they are removed): a kill during healing leaves the old file or the new one.
  """
  remote = storage.is_remote(path)
  if remote:
    url_parts(path).remove_covered()
  data = _read_all(path)
  lines = data.split(b"\n")
  torn = lines.pop()  # after the last newline: b"" when the file ends cleanly
  kept, dropped = [], []
  for line in lines:
    try:
      row = json.loads(line) if line.strip() else None
    except ValueError:
      row = None
    if row is None:
      torn = torn or line
      continue
    (kept if int(row.get("step", 0)) <= resume_step else dropped).append(line)
  if not torn and not dropped:
    return
  if torn:
    logging.warning("%s: cut off a torn line (%d bytes), left by a run killed mid-write",
                    path, len(torn))
  if dropped:
    logging.info("%s: dropped %d rows past step %d, the step this run resumes from; they "
                 "are recomputed", path, len(dropped), resume_step)
  content = b"".join(line + b"\n" for line in kept)
  if not remote:
    storage.write_bytes(path, content)
    return
  parts = url_parts(path)
  healed = parts.path(0, parts.last_number())
  old = [p.path for p in parts.all() if p.path != healed]
  storage.write_bytes(healed, content)
  for name in [path, *old]:
    storage.remove(name, missing_ok=True)


class Writers(metric_writers.MultiWriter):
  """clu's MultiWriter, plus `sync`: returns once every row written so far is stored."""

  def __init__(self, writers: list[metric_writers.MetricWriter]):
    super().__init__(writers)
    self._each = list(writers)

  def sync(self) -> None:
    for w in self._each:
      getattr(w, "sync", w.flush)()


def create_writer(workdir: str, resume_step: int | None = None) -> Writers:
  """TensorBoard event files + metrics.jsonl in `workdir` on process 0; logging elsewhere.

  Only process 0 writes files, so a multi-host run produces one set of logs. `resume_step`:
  see `JsonlWriter`.
  """
  if jax.process_index() != 0:
    return Writers([metric_writers.create_default_writer(workdir, just_logging=True)])
  if storage.is_remote(workdir):
    events = tb_events.EventPartsWriter(workdir)
  else:  # clu's writer, its writes off the training thread
    events = metric_writers.create_default_writer(workdir, asynchronous=True)
  return Writers([
      events, JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)])


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The rows of metrics file `path` (local, or a URL with its parts), in order."""
  return [json.loads(line) for line in _read_all(path).decode("utf-8").splitlines()
          if line.strip()]
