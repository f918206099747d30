"""Workdirs given as URLs (gs://bucket/run on TPU pods) keep their scheme end to end.

These use fsspec's in-process "memory://" store, which goes through the same simlap.runtime.storage
calls as gs:// (and, like an object store, is not a local path); tests/test_gcs_emulator.py
runs a whole train, resume, evaluate and compare against a storage server.
"""
from __future__ import annotations
import json
import os
import uuid

import pytest

from configs import default as default_config
from simlap.runtime import lease as lease_lib
from simlap.runtime import metrics_io
from simlap.runtime import parts as parts_lib
from simlap.runtime import storage
from simlap.runtime import workdir as workdir_lib


@pytest.fixture
def url() -> str:
  return f"memory://simlap_{uuid.uuid4().hex}/run"


def test_url_workdir_is_not_made_local(url):
  """os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": checkpoints on a VM's disk, lost with
  the VM. The URL must come back unchanged, created and writable."""
  assert workdir_lib.prepare(url) == url
  assert storage.isdir(url) and not os.path.exists("memory:")
  assert storage.listdir(url) == []  # the write probe is removed again


def test_jsonl_on_a_url_is_written_in_parts_and_continues_on_resume(url):
  path = f"{url}/metrics.jsonl"
  writer = metrics_io.JsonlWriter(path)
  writer.write_scalars(1, {"loss": 2.0})
  writer.write_scalars(2, {"loss": float("nan")})
  writer.sync()
  assert metrics_io.read_jsonl(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}]
  writer.close()
  resumed = metrics_io.JsonlWriter(path)  # a resumed run appends to the same file
  resumed.write_scalars(3, {"loss": 1.5})
  resumed.close()
  assert [row["step"] for row in metrics_io.read_jsonl(path)] == [1, 2, 3]
  assert storage.listdir(f"{path}.parts") == ["00000001-00000001.jsonl",
                                               "00000002-00000002.jsonl"]


def test_url_metrics_are_never_rewritten_whole(url, monkeypatch):
  # A whole-file rewrite per log step writes O(steps²) bytes: here every byte of the file may
  # be written at most twice (once in its part, once when parts are merged).
  written = []
  real = storage.write_bytes
  monkeypatch.setattr(storage, "write_bytes", lambda p, d: (written.append((p, len(d))),
                                                            real(p, d))[1])
  path = f"{url}/metrics.jsonl"
  writer = metrics_io.JsonlWriter(path)
  for step in range(1, 201):
    writer.write_scalars(step, {"loss": 1.0 / step})
    writer.flush()  # what the trainer does at every log step
  writer.close()
  size = sum(len(json.dumps(r)) + 1 for r in metrics_io.read_jsonl(path))
  assert [r["step"] for r in metrics_io.read_jsonl(path)] == list(range(1, 201))
  assert sum(n for _, n in written) <= 2 * size, (len(written), size)
  assert path not in [p for p, _ in written]
  assert len(storage.listdir(f"{path}.parts")) < 20  # merged: not one object per log step


def test_parts_left_by_a_killed_merge_are_read_once_and_removed(url):
  parts = parts_lib.Parts(url, suffix=".txt")
  for n in (1, 2, 3):
    storage.write_bytes(parts.path(n, n), f"{n}\n".encode())
  storage.write_bytes(parts.path(1, 2), b"1\n2\n")  # merged, then killed before the removals
  assert parts.read() == b"1\n2\n3\n"
  writer = parts_lib.PartWriter(parts)  # a new writer first removes the covered parts
  writer.append(b"4\n")
  writer.close()
  assert [(p.first, p.last) for p in parts.all()] == [(1, 2), (3, 3), (4, 4)]
  assert parts.read() == b"1\n2\n3\n4\n"


def test_url_metrics_heal_to_the_resumed_step(url):
  path = f"{url}/metrics.jsonl"
  writer = metrics_io.JsonlWriter(path)
  for step in (1, 2, 3, 4, 5):
    writer.write_scalars(step, {"loss": float(step)})
    writer.flush()
  writer.close()
  resumed = metrics_io.JsonlWriter(path, resume_step=3)
  resumed.write_scalars(4, {"loss": 40.0})
  resumed.close()
  rows = metrics_io.read_jsonl(path)
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_a_second_lease_on_a_url_is_refused(url):
  storage.makedirs(url)
  first = lease_lib.Lease(url, heartbeat_s=0.05)
  first.acquire()
  try:
    with pytest.raises(lease_lib.WorkdirBusyError, match="in use by another run"):
      lease_lib.Lease(url).acquire()
  finally:
    first.release()
  assert not storage.exists(f"{url}/lease.json")


def test_resume_check_reads_a_url_workdir(url):
  config = default_config.get_config()
  storage.write_bytes(f"{url}/checkpoints/40/x", b"")
  storage.write_text(f"{url}/config.json", config.to_json_best_effort(indent=2))
  workdir_lib.check_resumable(config, url)
  other = default_config.get_config()
  other.model.projector_dim = 64
  with pytest.raises(ValueError, match=r"model\.projector_dim: 128 -> 64"):
    workdir_lib.check_resumable(other, url)


def test_evaluation_reads_the_config_of_a_url_workdir(url):
  # One config.json reader for training and evaluation, through simlap.runtime.storage.
  config = default_config.get_config()
  workdir_lib.write_config(config, url)
  loaded = workdir_lib.load_config(url)
  assert loaded.to_dict() == config.to_dict()
  assert workdir_lib.resolve(url) == url
  with pytest.raises(FileNotFoundError, match="is 'memory://.*' a training workdir"):
    workdir_lib.load_config(url + "/nothing_here")
  assert not os.path.exists("memory:")


@pytest.mark.parametrize("local", [True, False])
def test_storage_calls_agree_on_local_paths_and_urls(url, tmp_path, local):
  root = str(tmp_path / "w") if local else url
  storage.write_text(f"{root}/a/x.json", "{}")
  storage.write_bytes(f"{root}/a/y.bin", b"\x00")
  assert storage.exists(f"{root}/a/x.json") and storage.isdir(f"{root}/a")
  assert sorted(storage.listdir(f"{root}/a")) == ["x.json", "y.bin"]
  assert storage.glob(f"{root}/a/*.json") == [f"{root}/a/x.json"]
  assert storage.info(f"{root}/a/y.bin")["size"] == 1
  assert storage.create_exclusive(f"{root}/a/z", b"1") and not storage.create_exclusive(
      f"{root}/a/z", b"2")
  storage.remove(f"{root}/a/z")
  storage.remove(f"{root}/a/z", missing_ok=True)
  with pytest.raises(FileNotFoundError):
    storage.read_bytes(f"{root}/a/z")
  assert storage.listdir(f"{root}/nothing") == []
