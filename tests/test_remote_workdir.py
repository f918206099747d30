"""Workdirs given as URLs (gs://bucket/run on TPU pods) keep their scheme end to end.

Object stores cannot be reached from CI, so these use TensorFlow's in-memory "ram://" file
system, which goes through the same tf.io.gfile calls as gs:// (and, like an object store, is
not a local path). Orbax and the TensorBoard writers have their own remote file layers.
"""
from __future__ import annotations
import os
import uuid

import pytest
import tensorflow as tf

from configs import default as default_config
from simlap import metrics_io
from simlap import workdir as workdir_lib


@pytest.fixture
def url() -> str:
  return f"ram://simlap_{uuid.uuid4().hex}/run"


def test_url_workdir_is_not_made_local(url):
  """os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": checkpoints on a VM's disk, lost with
  the VM. The URL must come back unchanged, created and writable."""
  assert workdir_lib.prepare(url) == url
  assert tf.io.gfile.isdir(url) and not os.path.exists("ram:")
  assert tf.io.gfile.listdir(url) == []  # the write probe is removed again


def test_jsonl_on_a_url_is_rewritten_whole_and_continues_on_resume(url):
  path = f"{url}/metrics.jsonl"
  writer = metrics_io.JsonlWriter(path)
  writer.write_scalars(1, {"loss": 2.0})
  writer.write_scalars(2, {"loss": float("nan")})
  writer.flush()
  assert metrics_io.read_jsonl(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}]
  writer.close()
  resumed = metrics_io.JsonlWriter(path)  # a resumed run appends to the same file
  resumed.write_scalars(3, {"loss": 1.5})
  resumed.close()
  assert [row["step"] for row in metrics_io.read_jsonl(path)] == [1, 2, 3]


def test_resume_check_reads_a_url_workdir(url):
  config = default_config.get_config()
  tf.io.gfile.makedirs(f"{url}/checkpoints/40")
  with tf.io.gfile.GFile(f"{url}/config.json", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  workdir_lib.check_resumable(config, url)
  other = default_config.get_config()
  other.model.projector_dim = 64
  with pytest.raises(ValueError, match=r"model\.projector_dim: 128 -> 64"):
    workdir_lib.check_resumable(other, url)


def test_evaluation_reads_the_config_of_a_url_workdir(url):
  # One config.json reader for training and evaluation, through tf.io.gfile.
  config = default_config.get_config()
  workdir_lib.write_config(config, url)
  loaded = workdir_lib.load_config(url)
  assert loaded.to_dict() == config.to_dict()
  assert workdir_lib.resolve(url) == url
  with pytest.raises(FileNotFoundError, match="is 'ram://.*' a training workdir"):
    workdir_lib.load_config(url + "/nothing_here")
  assert not os.path.exists("ram:")
