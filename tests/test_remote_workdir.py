"""Workdirs given as URLs (gs://bucket/run on TPU pods) keep their scheme end to end.

Object stores cannot be reached from CI, so these use TensorFlow's in-memory "ram://" file
system, which goes through the same tf.io.gfile calls as gs:// (and, like an object store, is
not a local path). Orbax and the TensorBoard writers have their own remote file layers.
"""
import os
import uuid

import pytest
import tensorflow as tf

from configs import default as default_config
from simlap import checkpoint_eval
from simlap import metrics_io
from simlap import run_config
from simlap import train


@pytest.fixture
def url() -> str:
  return f"ram://simlap_{uuid.uuid4().hex}/run"


def test_url_workdir_is_not_made_local(url):
  """os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": checkpoints on a VM's disk, lost with
  the VM. The URL must come back unchanged, created and writable."""
  assert train._check_workdir(url) == url  # noqa: SLF001
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
  run_config.check_resumable(config, url)
  other = default_config.get_config()
  other.model.projector_dim = 64
  with pytest.raises(ValueError, match=r"model\.projector_dim: 128 -> 64"):
    run_config.check_resumable(other, url)


def test_evaluation_refuses_a_url_workdir_instead_of_writing_locally(url):
  with pytest.raises(ValueError, match="copy or mount 'ram://"):
    checkpoint_eval.evaluate_workdir(url)
  assert not os.path.exists("ram:")
