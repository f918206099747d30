"""Metric output on process 0: TensorBoard (clu), a JSONL file and console progress."""
from __future__ import annotations

import json
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

  def __init__(self, path: str):
    self._path = path
    self._remote = workdir_lib.is_remote(path)
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


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard event files + metrics.jsonl in `workdir` on process 0; logging elsewhere.

  Only process 0 writes files, so a multi-host run produces one set of logs.
  """
  if jax.process_index() != 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]
