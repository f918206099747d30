"""gs:// workdirs against a storage server: PyPI's gcp-storage-emulator, started by the test.

Every byte of these runs goes over the GCS JSON API to 127.0.0.1: simlap's own files (through
simlap.runtime.storage and gcsfs), Orbax's directory operations (etils epath on the same gcsfs),
tensorstore's arrays, and the TensorBoard event parts. The children get
STORAGE_EMULATOR_HOST, which simlap.runtime.storage turns into all three clients' endpoints.

  * train on gs://bucket/cmp/simlap/seed0, SIGTERM, resume: every logged row and the final
    state equal an uninterrupted local run's, bit for bit; metrics.jsonl holds each step once;
    the TensorBoard event parts load in TensorBoard with each step once; the lease is gone;
  * `python -m simlap.evaluate` writes eval/results.json and report.md there;
  * `python -m simlap.compare` on the gs:// root finds that run trained and evaluated and
    writes comparison.{md,json} there (no local "gs:" tree);
  * the lease is created with ifGenerationMatch=0: a second create is refused by the server;
  * an object's bytes come back as written, whatever they end with.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from simlap.runtime import storage  # before gcsfs: it sets gcsfs's options (see storage)

pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed "
                    "(setup.py's test extra installs it)")
pytest.importorskip("gcsfs", reason="gcsfs is not installed (setup.py's train extra has it)")

from simlap.runtime import metrics_io  # noqa: E402
from test_reliability import (Launcher, assert_same_as_straight_run, loss_rows,  # noqa: E402
                              resumed_from, wait_for_step)

TESTS = os.path.dirname(os.path.abspath(__file__))
BUCKET = "simlap-test"
_STEPS = 14  # test_reliability's: its compiled programs serve these runs too

_CONFIG_FILE = '''"""test_train.tiny_config for test_gcs_emulator's subprocesses."""
from test_train import tiny_config


def get_config():
  return tiny_config({data_dir!r}, log_every=1, checkpoint_every=1000, num_steps={steps})
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """http://127.0.0.1:PORT of a fresh in-memory emulator holding bucket BUCKET; this process
  and the ones it starts use it for gs:// (restored afterwards)."""
  port = _free_port()
  proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "gcs_emulator.py"), str(port),
                           BUCKET], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  saved = dict(os.environ)
  try:
    assert proc.stdout.readline().strip() == "ready", "the emulator did not start"
    url = f"http://127.0.0.1:{port}"
    storage.use_endpoint(url)
    yield url
  finally:
    os.environ.clear()
    os.environ.update(saved)
    proc.kill()
    proc.wait()


class _Runs(Launcher):
  """test_reliability's launcher, its console logs kept locally for a gs:// workdir."""

  def __init__(self, config_file: str, cache_dir: str, log_dir: str):
    super().__init__(config_file, cache_dir)
    self.log_dir = log_dir
    self.env["STORAGE_EMULATOR_HOST"] = os.environ["STORAGE_EMULATOR_HOST"]

  def start_module(self, module: str, *args: str) -> subprocess.Popen:
    self._count += 1
    log = open(os.path.join(self.log_dir, f"{self._count}.log"), "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=self.log_dir,
                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = self.last_log = log.name  # type: ignore[attr-defined]
    log.close()
    return proc

  def start(self, workdir: str, **overrides) -> subprocess.Popen:
    return self.start_module("simlap.main", f"--config={self.config_file}",
                             f"--workdir={workdir}")


def _json(url: str):
  return json.loads(storage.read_bytes(url))


def _event_steps(workdir: str, tmp_path) -> list[int]:
  """The steps of the "loss" scalar, as TensorBoard loads the run's event files."""
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  local = tmp_path / "events"
  local.mkdir()
  for name in storage.listdir(workdir):
    if "tfevents" in name:
      (local / name).write_bytes(storage.read_bytes(f"{workdir}/{name}"))
  acc = event_accumulator.EventAccumulator(str(local))
  acc.Reload()
  return [e.step for e in acc.Scalars("loss")]


def test_lease_create_is_refused_by_the_server_when_the_object_exists(emulator):
  path = f"gs://{BUCKET}/lease_test/lease.json"
  assert storage.create_exclusive(path, b"first")
  assert not storage.create_exclusive(path, b"second")
  assert storage.read_bytes(path) == b"first"


def test_objects_keep_every_byte_whatever_they_end_with(emulator):
  # The emulator parsed a multipart upload with Python's email parser, which ate a trailing
  # b"\r" (a TensorBoard record whose CRC ends in 0x0d lost a byte). gcs_emulator.py parses
  # the body at its boundary.
  endings = [b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r\n", b"--", b"\r\n--x", b""]
  blobs = [b"record" + e for e in endings] + [bytes(range(256)) * 3, b"\r", b"\n\n"]
  for i, data in enumerate(blobs):
    path = f"gs://{BUCKET}/bytes_test/{i}"
    storage.write_bytes(path, data)
    assert storage.read_bytes(path) == data, data[-8:]


@pytest.mark.slow
def test_train_sigterm_resume_evaluate_compare_on_gs(emulator, fmnist_data_dir, tmp_path):
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text(_CONFIG_FILE.format(data_dir=fmnist_data_dir, steps=_STEPS))
  runs = _Runs(str(config_file), str(tmp_path / "jax_cache"), str(tmp_path))
  straight = str(tmp_path / "straight")
  runs.finish(runs.start(straight))  # the uninterrupted reference, on local disk

  # compare's layout (W/<method>/seed<k>), so the grid below finds this run done.
  root = f"gs://{BUCKET}/cmp"
  workdir = f"{root}/simlap/seed0"
  proc = runs.start(workdir)
  wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGTERM)
  runs.finish(proc, timeout=60)
  summary = _json(f"{workdir}/summary.json")
  stopped = summary["step"]
  assert summary["preempted"] and 3 <= stopped < _STEPS
  assert storage.listdir(f"{workdir}/checkpoints") == [str(stopped)]

  proc = runs.start(workdir)
  runs.finish(proc)
  assert resumed_from(proc) == stopped
  assert _json(f"{workdir}/summary.json")["step"] == _STEPS
  rows = [r for r in metrics_io.read_jsonl(f"{workdir}/metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, _STEPS + 1))
  reference = {r["step"]: r for r in loss_rows(straight)}
  assert all(r == reference[r["step"]] for r in rows)
  assert_same_as_straight_run(straight, workdir, fmnist_data_dir)  # restores from gs://
  assert _event_steps(workdir, tmp_path) == list(range(1, _STEPS + 1))
  assert not storage.exists(f"{workdir}/lease.json")
  assert _json(f"{workdir}/config.json")["num_steps"] == _STEPS

  runs.finish(runs.start_module("simlap.evaluate", f"--workdir={workdir}", "--plots=false",
                                "--linear_epochs=2"))
  assert _json(f"{workdir}/eval/results.json")["step"] == _STEPS
  assert storage.exists(f"{workdir}/eval/report.md")

  runs.finish(runs.start_module("simlap.compare", f"--config={config_file}",
                                f"--workdir={root}", "--methods=simlap", "--seeds=0",
                                "--plots=false", "--linear_epochs=2"))
  with open(runs.last_log, encoding="utf-8") as f:
    assert "done earlier, skipped" in f.read()
  assert list(_json(f"{root}/comparison.json")["methods"]) == ["simlap"]
  assert "| simlap | 1 |" in storage.read_text(f"{root}/comparison.md")
  assert not os.path.exists(tmp_path / "gs:")  # the children ran in tmp_path


def test_checkpoint_steps_on_gs_are_the_ones_orbax_committed(emulator):
  # On gs:// Orbax commits a step by writing commit_success.txt into it (no rename):
  # workdir.checkpoint_steps, which reads folder names, must skip a half-written step as
  # Orbax's own manager does.
  import numpy as np  # noqa: PLC0415
  from simlap.runtime import checkpointing  # noqa: PLC0415
  from simlap.runtime import workdir as workdir_lib  # noqa: PLC0415
  ckpts = f"gs://{BUCKET}/steps/checkpoints"
  ckpt = checkpointing.Checkpointer(ckpts, every_steps=1, keep=10)
  for step in (1, 2):
    ckpt.save(step, {"w": np.ones(2, np.float32)}, {"step": step})
  ckpt.close()
  assert storage.exists(f"{ckpts}/2/{workdir_lib.COMMIT_FILE}")
  storage.write_bytes(f"{ckpts}/5/state/x", b"")  # a write cut off before its commit
  again = checkpointing.Checkpointer(ckpts, every_steps=1, keep=10)
  orbax_steps = sorted(again._manager.all_steps())  # noqa: SLF001 - Orbax's own view
  assert again.all_steps() == orbax_steps == [1, 2]
  assert workdir_lib.checkpoint_steps(ckpts) == [1, 2]
  again.close()
