"""TensorBoard event files for URL workdirs, written through `simlap.runtime.storage`.

clu's SummaryWriter writes through TensorFlow's gfile, which reaches Google's GCS and no other
server (no emulator tests) and would be a second GCS client beside gcsfs. On URL workdirs the
event files are TFRecord part objects (`simlap.runtime.parts`) named
`W/events.out.tfevents.<first>-<last>.simlap`, each starting with the `file_version` record:
TensorBoard reads a run folder's `*tfevents*` files in name order, so they read as one event
file. Only scalars and hparams are written; other summaries are dropped.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import record_writer

from simlap.runtime import parts as parts_lib

PREFIX, SUFFIX = "events.out.tfevents.", ".simlap"


class _Buffer:
  def __init__(self):
    self.data = bytearray()

  def write(self, b: bytes) -> None:
    self.data += b

  def flush(self) -> None:
    pass


class ScalarWriter(metric_writers.MetricWriter):
  """A writer of scalars (and hparams) only: the other kinds of summary are dropped."""

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


class EventPartsWriter(ScalarWriter):
  """Scalars and hparams as TensorBoard events in `logdir` (a URL), one part per flush."""

  def __init__(self, logdir: str):
    self._parts = parts_lib.PartWriter(parts_lib.Parts(logdir, PREFIX, SUFFIX))
    self._buffer = _Buffer()
    self._records = record_writer.RecordWriter(self._buffer)

  def _event(self, step: int, summary: summary_pb2.Summary) -> None:
    if not self._buffer.data:
      self._records.write(event_pb2.Event(wall_time=time.time(),
                                          file_version="brain.Event:2").SerializeToString())
    self._records.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=summary).SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(np.asarray(v)))
              for name, v in scalars.items()]
    self._event(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._event(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    data, self._buffer.data = bytes(self._buffer.data), bytearray()
    self._parts.append(data)

  def sync(self) -> None:
    self.flush()
    self._parts.sync()

  def close(self) -> None:
    self.flush()
    self._parts.close()
