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
import tensorflow as tf

from simlap import workdir as workdir_lib


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per `write_scalars` call to `path`: {"step": s, name: value}.

  Plain JSONL, so notebooks and scripts read a run with `pandas.read_json(path, lines=True)`.
  Non-finite values are written as null (JSON has no NaN). Object stores (gs://) cannot append,
  so there the whole file is rewritten from memory on every flush (log steps only; a run's
  metrics are a few hundred KB at most).
  """

  def __init__(self, path: str, resume_step: int | None = None):
    """`resume_step`: the step a resumed run restored; the file is first healed to it
    (see `heal`), so that it holds each step once when the run goes on."""
    self._path = path
    self._remote = workdir_lib.is_remote(path)
    if resume_step is not None:
      heal(path, resume_step)
    if self._remote:
      tf.io.gfile.makedirs(os.path.dirname(path))
      self._lines = []
      if tf.io.gfile.exists(path):  # a resumed run continues the same file
        with tf.io.gfile.GFile(path, "r") as f:
          self._lines = [f.read()]
    else:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def _write(self, line: str) -> None:
    if self._remote:
      self._lines.append(line)
    else:
      self._file.write(line)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    for name, value in scalars.items():
      value = float(np.asarray(value))
      row[name] = value if math.isfinite(value) else None
    self._write(json.dumps(row) + "\n")

  # Only scalars go to JSONL; everything else is TensorBoard's job.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self) -> None:
    if self._remote:
      # Write aside, then replace: readers never see a half-written file, and no file system's
      # notion of "w" on an existing object matters (TF's ram:// appends).
      tmp = self._path + ".tmp"
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(self._lines))
      tf.io.gfile.rename(tmp, self._path, overwrite=True)
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self._remote:
      self._file.close()


def heal(path: str, resume_step: int) -> None:
  """Makes metrics.jsonl fit a run resumed at `resume_step`, rewriting it only if needed.

  A kill in mid-write leaves a torn last line: it is cut off (else the next row is glued onto
  it and the file no longer parses as JSON lines). Rows past `resume_step` were logged after
  the checkpoint the run resumed from; the resumed run recomputes them, so they are dropped,
  with a note, and the file then holds each step once. The new content is written aside and
  renamed into place: a kill during healing leaves the old file or the new one.
  """
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
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
  tmp = path + ".heal.tmp"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(b"".join(line + b"\n" for line in kept))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def create_writer(workdir: str, resume_step: int | None = None) -> metric_writers.MetricWriter:
  """TensorBoard event files + metrics.jsonl in `workdir` on process 0; logging elsewhere.

  Only process 0 writes files, so a multi-host run produces one set of logs. `resume_step`:
  see `JsonlWriter`.
  """
  if jax.process_index() != 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step),
  ])


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]
