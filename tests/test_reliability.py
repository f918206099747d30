"""Fault suite: crashes, preemption, damaged checkpoints, NaNs, bad configs and bad data.

  * SIGKILL at 5 seeded random steps, resuming each time, ends bitwise equal to a straight run.
  * SIGTERM saves the current step and exits 0 within seconds; the next start resumes from it.
  * Damaged newest checkpoints are skipped with a warning naming their steps; training goes on
    from the newest good one and ends bitwise equal to the straight run.
  * A non-finite loss stops the run naming the step and the metric; no checkpoint after the last
    good step exists and every checkpoint on disk is finite.
  * Bad configs and data files fail within 10 s with one message naming the value, before any
    training, with no network access and no checkpoint.

Crash, preemption and corruption tests run the real entry point (`python -m simlap.main`) in
subprocesses on one CPU device with one shared compilation cache and one config (so one compiled
train step serves them all); the NaN and bad-input tests run in-process on the 8 test devices.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import pytest

from simlap.runtime import checkpointing
from simlap.runtime import metrics_io
from simlap import config_schema
from simlap.runtime import workdir as workdir_lib
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.training import state as state_lib
from simlap.training import step as train_step
from simlap.data import fashion_mnist
from simlap.data import datasets
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
_STEPS = 14  # every subprocess run: long enough for 3 kills, short enough for seconds

# Every subprocess run uses this config (test_train's tiny config) plus --config.* flags.
_CONFIG_FILE = '''"""test_train.tiny_config for test_reliability's subprocesses."""
from test_train import tiny_config  # tests/ is on the children's PYTHONPATH (Launcher)


def get_config():
  return tiny_config({data_dir!r}, log_every=1, checkpoint_every=2, keep_checkpoints=3)
'''


# ------------------------------------------------------------------------------------------------
# Subprocess runs of the entry point, and progress read from metrics.jsonl.
# ------------------------------------------------------------------------------------------------
class Launcher:
  """Starts `python -m simlap.main` on the tiny config with one CPU device."""

  def __init__(self, config_file: str, cache_dir: str):
    self.config_file = config_file
    self.env = dict(os.environ)
    # One device: bitwise comparisons need the same device count in every run, and one device
    # keeps Orbax's per-replica slicing (seconds per process for 8 simulated devices) away.
    self.env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                   self.env.get("XLA_FLAGS", "")).strip()
    self.env.update(JAX_PLATFORMS="cpu", TFDS_DISABLE_GCS="1", NO_GCE_CHECK="true",
                    TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # The children import the checkout's simlap and test_train (tests/ is not a package).
    path = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
    self.env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, *path])
    self._count = 0
    self.last_log = ""

  def start(self, workdir: str, **overrides: Any) -> subprocess.Popen:
    self._count += 1
    log = open(f"{workdir}.{self._count}.log", "w", encoding="utf-8")  # noqa: SIM115
    argv = [sys.executable, "-m", "simlap.main", f"--config={self.config_file}",
            f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]
    proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = self.last_log = log.name  # type: ignore[attr-defined]
    log.close()
    return proc

  def finish(self, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Waits for `proc` (killed after `timeout` s); asserts it exited 0."""
    try:
      rc = proc.wait(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert rc == 0, f"exit {rc}:\n{log_tail(proc)}"

  def run(self, workdir: str, timeout: float = 180, **overrides: Any) -> dict[str, Any]:
    """Runs to completion; returns summary.json."""
    self.finish(self.start(workdir, **overrides), timeout)
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
      return json.load(f)


def log_tail(proc: subprocess.Popen, n: int = 4000) -> str:
  with open(proc.log_path, encoding="utf-8", errors="replace") as f:  # type: ignore[attr-defined]
    return f.read()[-n:]


def loss_rows(workdir: str, offset: int = 0) -> list[dict[str, Any]]:
  """metrics.jsonl train rows from byte `offset` on; a torn last line is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    f.seek(offset)
    rows = []
    for line in f.read().decode().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "loss" in row:
        rows.append(row)
  return rows


def metrics_size(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.getsize(path) if os.path.exists(path) else 0


def logged_steps(proc: subprocess.Popen) -> list[int]:
  """The steps this run logged on its console (its metrics are in metrics.jsonl too, but a
  resumed run first heals that file, so byte offsets into it do not mark where it began)."""
  with open(proc.log_path, encoding="utf-8", errors="replace") as f:  # type: ignore[attr-defined]
    return [int(s) for s in re.findall(r"loop\.py:\d+\] step (\d+)/", f.read())]


def resumed_from(proc: subprocess.Popen) -> int:
  """The step this run restored (0 for a fresh start), from its console."""
  with open(proc.log_path, encoding="utf-8", errors="replace") as f:  # type: ignore[attr-defined]
    found = re.findall(r"resumed from the checkpoint at step (\d+) of", f.read())
  return int(found[-1]) if found else 0


def wait_for_step(proc: subprocess.Popen, workdir: str, step: int, offset: int = 0,
                  timeout: float = 120) -> int:
  """Polls the run's console until it logged `step` (metrics.jsonl is flushed at the same
  moment); returns the newest step seen. `workdir`, `offset`: unused, kept for callers."""
  del workdir, offset
  deadline = time.monotonic() + timeout
  while True:
    steps = logged_steps(proc)
    if steps and steps[-1] >= step:
      return steps[-1]
    if proc.poll() is not None:
      pytest.fail(f"run exited ({proc.returncode}) before step {step}:\n{log_tail(proc)}")
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f"no step {step} after {timeout} s:\n{log_tail(proc)}")
    time.sleep(0.02)


@pytest.fixture(scope="module")
def launcher(fmnist_data_dir, tmp_path_factory) -> Launcher:
  root = tmp_path_factory.mktemp("launcher")
  config_file = root / "tiny_config.py"
  config_file.write_text(_CONFIG_FILE.format(data_dir=fmnist_data_dir))
  return Launcher(str(config_file), str(root / "jax_cache"))


@pytest.fixture(scope="module")
def straight_run(launcher, tmp_path_factory) -> str:
  """Workdir of an uninterrupted subprocess run of _STEPS steps: the bitwise reference."""
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  assert launcher.run(workdir, num_steps=_STEPS)["step"] == _STEPS
  return workdir


def restore_state(config, workdir: str, step: int, devices=None):
  """The TrainState saved at `step` in `workdir`, on host (restore also checks it is finite)."""
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=9)
  try:
    state, meta, restored = ckpt.restore(trainer.abstract_state, step=step)
  finally:
    ckpt.close()
  assert restored == step and meta["step"] == step
  return jax.device_get(state)


def assert_trees_equal(a, b) -> None:
  paths_a, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a))
  leaves_b = jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for path, x, y in zip(paths_a, leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------------
# Crash: SIGKILL at random steps, resume each time, bitwise equal to a straight run.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_random_steps_resumes_bitwise(launcher, straight_run, fmnist_data_dir,
                                                 tmp_path):
  steps = _STEPS
  # Checkpoints every 2 steps: kills land mid-save, right after one, and between saves.
  targets = sorted(random.Random(8).sample(range(3, steps - 3), 3))
  workdir = str(tmp_path / "killed")
  killed_at, resumed = [], []
  for target in targets:
    proc = launcher.start(workdir, num_steps=steps)
    killed_at.append(wait_for_step(proc, workdir, target))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not os.path.exists(os.path.join(workdir, "summary.json")), "run finished before kill"
    resumed.append(resumed_from(proc))
  proc = launcher.start(workdir, num_steps=steps)
  assert proc.wait(timeout=180) == 0, log_tail(proc)
  resumed.append(resumed_from(proc))

  # Each start resumed from a saved (even) step no later than where the last run died, and the
  # last ones really resumed: the comparison below is not between two fresh starts.
  info = f"killed at {killed_at}, resumed from {resumed}"
  print(info)
  assert resumed[0] == 0, info
  for before, after in zip(killed_at, resumed[1:]):
    assert after % 2 == 0 and after <= before, info
  assert resumed[-1] >= 4, info
  # Healed on every resume: each step once, in order, the file parses as JSON lines.
  assert [row["step"] for row in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in row] == list(range(1, steps + 1))

  assert_same_as_straight_run(straight_run, workdir, fmnist_data_dir)


def assert_same_as_straight_run(straight: str, workdir: str, data_dir: str) -> None:
  """Every step `workdir` logged (redone ones included) and its final state (params, BatchNorm
  statistics, optimizer state) equal the straight run's, bit for bit."""
  reference = {row["step"]: row for row in loss_rows(straight)}
  for row in loss_rows(workdir):
    assert row == reference[row["step"]], row["step"]
  config = tiny_config(data_dir, num_steps=_STEPS)
  one_device = jax.devices()[:1]
  assert_trees_equal(restore_state(config, straight, _STEPS, one_device),
                     restore_state(config, workdir, _STEPS, one_device))


# ------------------------------------------------------------------------------------------------
# Preemption: SIGTERM saves the current step and exits 0; the next start resumes from it.
# ------------------------------------------------------------------------------------------------
def test_sigterm_saves_current_step_exits_zero_and_resumes(launcher, straight_run,
                                                           fmnist_data_dir, tmp_path):
  workdir = str(tmp_path / "preempted")
  # No periodic checkpoints: the only checkpoint before the end must be SIGTERM's. The same
  # num_steps as the crash test: one compiled program (the LR schedule is part of it) for all.
  flags = dict(num_steps=_STEPS, checkpoint_every=1000)
  proc = launcher.start(workdir, **flags)
  wait_for_step(proc, workdir, 3, 0)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=60)
  elapsed = time.monotonic() - sent
  print(f"SIGTERM to exit: {elapsed:.1f} s")
  assert rc == 0, log_tail(proc)
  assert elapsed < 10, f"took {elapsed:.1f} s to stop after SIGTERM"
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  stopped = summary["step"]
  assert summary["preempted"] and 3 <= stopped < _STEPS
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
  assert loss_rows(workdir)[-1]["step"] == stopped  # saved the step it was at, not an older one

  offset = metrics_size(workdir)
  summary = launcher.run(workdir, **flags)
  assert summary["step"] == _STEPS and not summary["preempted"]
  steps = [row["step"] for row in loss_rows(workdir, offset)]
  assert steps == list(range(stopped + 1, _STEPS + 1))
  assert_same_as_straight_run(straight_run, workdir, fmnist_data_dir)


# ------------------------------------------------------------------------------------------------
# Corruption: a damaged newest checkpoint falls back to the newest good one.
# ------------------------------------------------------------------------------------------------
def _truncate_data_files(step_dir: str) -> None:
  """Cuts every array data file (OCDBT `d/` directories) of a checkpoint to half its size.

  All of them: OCDBT keeps some superseded files, and a cut that only removes bytes no read
  needs leaves the checkpoint intact (restores identical values), which is no test.
  """
  for d, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files if os.path.basename(d) == "d" else ():
      path = os.path.join(d, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_checkpoints_fall_back_with_warning(launcher, straight_run, fmnist_data_dir,
                                                    tmp_path):
  workdir = str(tmp_path / "damaged")
  shutil.copytree(straight_run, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpts), key=int) == ["10", "12", "14"]
  # Newest: its data files cut in half. Next: its tree manifest removed. Only step 10 is good.
  _truncate_data_files(os.path.join(ckpts, "14"))
  os.remove(os.path.join(ckpts, "12", "state", "manifest.ocdbt"))
  os.remove(os.path.join(workdir, "summary.json"))
  proc_summary = launcher.run(workdir, num_steps=_STEPS)
  assert proc_summary["step"] == _STEPS

  with open(launcher.last_log, encoding="utf-8", errors="replace") as f:
    warnings = re.findall(r"checkpoint at step (\d+) in \S+ is unreadable .*; moved it to (\S+) "
                          r"and falling back to an older one", f.read())
  assert [(step, os.path.basename(moved)) for step, moved in warnings] == [
      ("14", "14.damaged"), ("12", "12.damaged")], warnings
  # Resumed from step 10 (rows 11-14 of the copied run dropped, then recomputed), and steps
  # 11-14 and the final state equal the straight run's: the fallback restored good data.
  assert "resumed from the checkpoint at step 10 of" in open(launcher.last_log).read()
  assert [row["step"] for row in loss_rows(workdir)] == list(range(1, _STEPS + 1))
  assert_same_as_straight_run(straight_run, workdir, fmnist_data_dir)
  # Set aside, so steps 12 and 14 could be saved again (else StepAlreadyExistsError).
  assert {"12.damaged", "14.damaged", "12", "14"} <= set(os.listdir(ckpts))


def test_resume_with_another_config_is_refused_and_keeps_checkpoints(straight_run,
                                                                    fmnist_data_dir, tmp_path,
                                                                    no_network):
  """Resuming with another model/schedule would mix two runs, or (a different parameter tree)
  fail inside Orbax and set every checkpoint aside as damaged: refuse first, touch nothing."""
  workdir = str(tmp_path / "other_config")
  shutil.copytree(straight_run, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  before = sorted(os.listdir(ckpts))
  same = tiny_config(fmnist_data_dir, log_every=1, checkpoint_every=2, keep_checkpoints=3,
                     num_steps=_STEPS)
  workdir_lib.check_resumable(same, workdir)  # the run's own config, through config.json
  watch_only = tiny_config(fmnist_data_dir, log_every=5, checkpoint_every=4, keep_checkpoints=1,
                           num_steps=_STEPS, eval_at_end=True, mesh=[("data", 2), ("x", -1)])
  workdir_lib.check_resumable(watch_only, workdir)  # cadence and device layout may change

  other = tiny_config(fmnist_data_dir, log_every=1, checkpoint_every=2, keep_checkpoints=3,
                      num_steps=_STEPS, batch_size=2 * same.batch_size)
  start = time.monotonic()
  with pytest.raises(ValueError) as err:
    train.train_and_evaluate(other, workdir)
  message = str(err.value)
  assert f"batch_size: {same.batch_size} -> {2 * same.batch_size}" in message, message
  assert "holds checkpoints of a run with a different config" in message and "\n" not in message
  assert "num_steps" not in message and "log_every" not in message  # only what differs
  assert time.monotonic() - start < 10 and not no_network
  assert sorted(os.listdir(ckpts)) == before  # nothing restored, renamed or written


def test_fields_added_since_a_run_was_saved_block_only_when_not_default():
  """A config.json written before a field existed (here: the sharding section and
  model.freeze_patch_embed) still resumes while the field holds its default; a non-default
  value, or a changed old field, still blocks."""
  config = config_schema.base_config()
  old = workdir_lib.as_json(config)
  del old["sharding"], old["model"]["freeze_patch_embed"]
  assert workdir_lib.resume_blockers(old, config) == []
  config.model.freeze_patch_embed = True
  assert workdir_lib.resume_blockers(old, config) == [
      "model.freeze_patch_embed: None -> True"]
  config.model.freeze_patch_embed = False
  config.sharding.params = "fsdp"  # a resumable key even where it is new
  config.init_from = "runs/converted"  # read only when a run starts
  # Another output stride is another network: it blocks.
  config.model.output_stride = 8
  assert workdir_lib.resume_blockers(old, config) == ["model.output_stride: 32 -> 8"]
  config.model.output_stride = 32
  config.batch_size = 2 * config.batch_size
  assert workdir_lib.resume_blockers(old, config) == [
      f"batch_size: {config.batch_size // 2} -> {config.batch_size}"]


def test_checkpoint_with_nan_is_skipped(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  good = {"w": np.ones(3, np.float32), "step": np.int32(1)}
  ckpt.save(1, good, {"step": 1})
  ckpt.save(2, {"w": np.array([1, np.nan, 1], np.float32), "step": np.int32(2)}, {"step": 2})
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), good)
  with caplog.at_level("WARNING"):
    state, _, step = ckpt.restore(abstract)
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(state["w"], good["w"])
  assert any("step 2" in r.getMessage() and "non-finite values in ['w']" in r.getMessage()
             for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# NaN / Inf: stop naming the step and metric; no checkpoint after the last good step.
# ------------------------------------------------------------------------------------------------
def test_nonfinite_loss_stops_run_and_keeps_last_good_checkpoint(fmnist_data_dir, tmp_path):
  # A real divergence: Adam moves every weight by ~lr per step, so lr=1e30 overflows float32
  # activations within a couple of steps.
  config = tiny_config(fmnist_data_dir, num_steps=8, log_every=4, checkpoint_every=1,
                       keep_checkpoints=8, **{"optimizer.lr": 1e30})
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=r"non-finite loss at step (\d+)") as err:
    train.train_and_evaluate(config, workdir)
  bad = int(re.search(r"at step (\d+)", str(err.value)).group(1))
  assert 2 <= bad <= 4, str(err.value)  # found at the first log step after the divergence
  assert f"no checkpoint after step {bad - 1}" in str(err.value)

  ckpts = os.path.join(workdir, "checkpoints")
  saved = sorted(int(s) for s in os.listdir(ckpts))
  assert saved == list(range(1, bad)), saved  # every good step kept, nothing after
  for step in saved:  # restore(step=...) raises on NaN/Inf in any leaf
    restore_state(config, workdir, step)


def test_nonfinite_gradient_is_named():
  # The gradient code path (finite loss, non-finite gradient) has no cheap real trigger, so
  # the state the train step produces in that case is built directly.
  state = state_lib.TrainState(step=np.int32(5), params={}, batch_stats={}, opt_state={},
                               nonfinite_step=np.int32(4), nonfinite=np.int32(2))
  with pytest.raises(FloatingPointError, match="non-finite gradient norm at step 5;"):
    train_step.raise_if_nonfinite(state)
  train_step.raise_if_nonfinite(state.replace(nonfinite=np.int32(0)))  # healthy: no error


# ------------------------------------------------------------------------------------------------
# Bad configuration and data: one clear, early error naming the value.
# ------------------------------------------------------------------------------------------------
def _write_idx(directory: str, images: np.ndarray, labels: np.ndarray) -> str:
  """Fashion-MNIST-format IDX .gz files (the same arrays for train and test)."""
  os.makedirs(directory, exist_ok=True)
  for prefix in ("train", "t10k"):
    n, rows, cols = images.shape
    with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
      f.write(np.array([2051, n, rows, cols], ">i4").tobytes() + images.tobytes())
    with gzip.open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
      f.write(np.array([2049, n], ">i4").tobytes() + labels.astype(np.uint8).tobytes())
  return directory


def _own_files(images: np.ndarray, labels: np.ndarray):
  """A case whose dataset is prepared from these IDX arrays into a fresh data dir."""
  def setup(tmp_path, monkeypatch):
    del monkeypatch
    source = _write_idx(str(tmp_path / "idx"), images, labels)
    return {"dataset.source_dir": source, "dataset.data_dir": str(tmp_path / "tfds"),
            "dataset.train_split": "train", "dataset.eval_split": "test"}, None
  return setup


def _empty_source_dir(tmp_path, monkeypatch):
  del monkeypatch
  os.makedirs(tmp_path / "empty")
  return {"dataset.source_dir": str(tmp_path / "empty"),
          "dataset.data_dir": str(tmp_path / "tfds")}, None


def _empty_env_source_dir(tmp_path, monkeypatch):
  os.makedirs(tmp_path / "empty_env")
  monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, str(tmp_path / "empty_env"))
  return {"dataset.data_dir": str(tmp_path / "tfds")}, None


def _workdir_under_a_file(tmp_path, monkeypatch):
  del monkeypatch
  (tmp_path / "a_file").write_text("")  # root ignores permissions; a file as parent does not
  return {}, str(tmp_path / "a_file" / "workdir")


_RNG = np.random.default_rng(0)
_IMAGES = _RNG.integers(0, 256, (64, 28, 28), dtype=np.uint8)

# (id, overrides or setup(tmp_path, monkeypatch) -> (overrides, workdir), text of the message)
BAD_INPUTS: list[tuple[str, dict[str, Any] | Callable, str]] = [
    ("objective", {"objective": "byol"}, "objective='byol'"),
    ("gate_kind", {"gate.kind": "relu"}, "gate.kind='relu'"),
    ("gate_fuse", {"gate.fuse": "sum"}, "gate.fuse='sum'"),
    ("backbone", {"model.backbone": "vgg11"}, "model.backbone='vgg11'"),
    ("optimizer", {"optimizer.name": "adagrad"}, "optimizer.name='adagrad'"),
    ("dataset", {"dataset.name": "no_such_dataset"}, "dataset.name='no_such_dataset'"),
    ("dataset_not_prepared", {"dataset.name": "mnist"}, "dataset 'mnist' is not prepared"),
    ("pair_kind", {"loss.pair_kind": "random"}, "loss.pair_kind='random'"),
    ("batch_not_divisible", {"batch_size": 12}, "batch_size=12 does not split evenly over 8"),
    ("num_classes", {"dataset.num_classes": 7}, "num_classes=7 but dataset"),
    ("channels", {"dataset.channels": 3}, "config.dataset.channels=3"),
    ("lr_negative", {"optimizer.lr": -0.1}, "optimizer.lr must be positive, got -0.1"),
    ("lr_zero", {"optimizer.lr": 0.0}, "optimizer.lr must be positive, got 0.0"),
    ("missing_files_source_dir", _empty_source_dir, "not found in '{tmp}/empty'"),
    ("missing_files_env", _empty_env_source_dir, "not found in '{tmp}/empty_env'"),
    ("workdir_not_writable", _workdir_under_a_file, "workdir '{tmp}/a_file/workdir' is not"),
    ("labels_out_of_range", _own_files(_IMAGES, np.arange(64) % 13),
     "train-labels-idx1-ubyte.gz: label 10 outside [0, 10)"),
    ("image_shape", _own_files(np.zeros((64, 32, 32), np.uint8), np.arange(64) % 10),
     "train-images-idx3-ubyte.gz: images are 32x32"),
]


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
  """Records (and refuses) every Python-level connection attempt."""
  attempts: list[Any] = []

  def refuse(*args, **kwargs):
    attempts.append(args[1:] or kwargs)
    raise OSError("network access in a test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  return attempts


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_config_or_data_fails_early_with_one_clear_message(case, fmnist_data_dir, tmp_path,
                                                                monkeypatch, no_network):
  _, spec, text = case
  overrides, workdir = spec(tmp_path, monkeypatch) if callable(spec) else (spec, None)
  workdir = workdir or str(tmp_path / "workdir")
  config = tiny_config(fmnist_data_dir, **overrides)
  start = time.monotonic()
  with pytest.raises((ValueError, FileNotFoundError)) as err:
    train.train_and_evaluate(config, workdir)
  elapsed = time.monotonic() - start
  message = str(err.value)
  assert text.format(tmp=tmp_path) in message
  assert "\n" not in message and len(message) < 600, message  # one message, not a dump
  assert elapsed < 10, f"{elapsed:.1f} s"
  assert not no_network
  # Failed before training: no metrics, no checkpoint.
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
