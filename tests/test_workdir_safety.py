"""A workdir nothing can damage: one owner, refused non-workdirs, healing metrics, failed saves,
Ctrl-C, one-line errors.

  * A second run on a workdir is refused at once, naming the owner; a stale lease is taken over.
  * An empty workdir and an unreadable config.json are refused, and nothing is written.
  * A torn metrics line is cut and rows past the restored step are dropped on resume.
  * A save that fails (a full tmpfs) stops the run at once: one line, exit 1.
  * Ctrl-C saves like SIGTERM; a second Ctrl-C exits at once.
  * Bad flags and config files give one line `simlap.main: error: ...` and exit 2.

Subprocess tests reuse tests/test_reliability.py's launcher (one CPU device, one shared
compilation cache, the same tiny config), so their train step compiles once.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from simlap.runtime import checkpointing
from simlap.runtime import lease as lease_lib
from simlap.runtime import metrics_io
from simlap.training import loop as train
from simlap.runtime import workdir as workdir_lib
from test_reliability import REPO, _STEPS, launcher, log_tail, loss_rows, wait_for_step  # noqa: F401
from test_train import tiny_config


def _error_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith("simlap.main: error:")]


def _no_traceback(text: str) -> bool:
  return "Traceback (most recent call last)" not in text


# ------------------------------------------------------------------------------------------------
# One owner per workdir.
# ------------------------------------------------------------------------------------------------
def test_a_second_lease_is_refused_naming_the_owner(tmp_path):
  first = lease_lib.Lease(str(tmp_path), heartbeat_s=0.05)
  first.acquire()
  try:
    time.sleep(0.2)  # a few heartbeats: the file is rewritten, still ours
    held = json.loads((tmp_path / "lease.json").read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert held["heartbeat"] > held["start"]
    with pytest.raises(lease_lib.WorkdirBusyError) as err:
      lease_lib.Lease(str(tmp_path)).acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()!r}" in str(err.value)
  finally:
    first.release()
  assert not (tmp_path / "lease.json").exists()
  assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left either
  second = lease_lib.Lease(str(tmp_path))
  second.acquire()  # released: free again
  second.release()


@pytest.mark.parametrize("kind", ["old_heartbeat", "dead_pid", "damaged"])
def test_a_stale_lease_is_taken_over_and_logged(tmp_path, caplog, kind):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lease = {"host": "elsewhere", "pid": 1, "start": 0.0, "heartbeat": time.time() - 3600,
           "token": "x"}
  if kind == "dead_pid":  # this host, a process that is gone: no need to wait for staleness
    lease.update(host=socket.gethostname(), pid=dead.pid, heartbeat=time.time())
  (tmp_path / "lease.json").write_text("{half" if kind == "damaged" else json.dumps(lease))
  taker = lease_lib.Lease(str(tmp_path))
  taker.acquire()
  try:
    assert json.loads((tmp_path / "lease.json").read_text())["pid"] == os.getpid()
    assert "taking over the lease" in caplog.text
  finally:
    taker.release()


def test_a_live_lease_elsewhere_is_not_taken_over(tmp_path):
  lease = {"host": "elsewhere", "pid": 1, "start": 0.0, "heartbeat": time.time() - 10,
           "token": "x"}
  (tmp_path / "lease.json").write_text(json.dumps(lease))
  with pytest.raises(lease_lib.WorkdirBusyError, match="pid 1 on host 'elsewhere'"):
    lease_lib.Lease(str(tmp_path), stale_after_s=300).acquire()
  assert json.loads((tmp_path / "lease.json").read_text()) == lease  # untouched


def test_two_runs_on_one_workdir_the_second_is_refused(launcher, tmp_path):  # noqa: F811
  workdir = str(tmp_path / "shared")
  first = launcher.start(workdir, num_steps=_STEPS, checkpoint_every=1000)
  try:
    wait_for_step(first, workdir, 2, 0)
    # Paused, so that it is still the owner (alive, fresh heartbeat) however slow the second
    # run is to start: a tiny run would otherwise finish first.
    first.send_signal(signal.SIGSTOP)
    logs_before = sorted(os.listdir(os.path.join(workdir, "logs")))
    second = launcher.start(workdir, num_steps=_STEPS, checkpoint_every=1000)
    rc = second.wait(timeout=120)
    out = log_tail(second)
    assert rc == 2, out
    lines = _error_lines(out)
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use" in lines[0], out
    assert _no_traceback(out), out
    assert sorted(os.listdir(os.path.join(workdir, "logs"))) == logs_before
    with open(os.path.join(workdir, "logs", "simlap.0.log"), encoding="utf-8") as f:
      assert f.read().count("full log:") == 1  # the refused run wrote nothing there
  finally:
    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, log_tail(first)
  assert [row["step"] for row in loss_rows(workdir)] == list(range(1, _STEPS + 1))
  assert not os.path.exists(os.path.join(workdir, "lease.json"))  # released at the end


# ------------------------------------------------------------------------------------------------
# Not a workdir: empty, or with an unreadable config.json.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workdir", ["", "  ", None])
def test_an_empty_workdir_is_refused(workdir):
  with pytest.raises(ValueError, match="--workdir is empty"):
    workdir_lib.prepare(workdir)


def test_an_empty_workdir_flag_writes_nothing_and_exits_2(launcher, tmp_path):  # noqa: F811
  argv = [sys.executable, "-m", "simlap.main", f"--config={launcher.config_file}",
          "--workdir="]
  proc = subprocess.run(argv, cwd=tmp_path, env=launcher.env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert _error_lines(proc.stderr) == [
      "simlap.main: error: --workdir is empty (''); give the directory (or gs:// URL) the run "
      "writes to"], proc.stderr
  assert list(tmp_path.iterdir()) == []  # no checkpoints, logs or events in the cwd


def test_an_unreadable_config_json_is_refused_with_path_and_error(fmnist_data_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{broken")
  config = tiny_config(fmnist_data_dir)
  with pytest.raises(ValueError) as err:
    train.train_and_evaluate(config, str(workdir))
  message = str(err.value)
  assert str(workdir / "config.json") in message and "JSONDecodeError" in message, message
  assert "line 1 column 2" in message, message  # the parser's own position
  assert (workdir / "config.json").read_text() == "{broken"  # not rewritten
  assert not (workdir / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# Metrics heal on resume.
# ------------------------------------------------------------------------------------------------
def _write_rows(path, steps, torn: bytes = b"") -> None:
  with open(path, "wb") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "loss": float(s)}).encode() + b"\n")
    f.write(torn)


def test_a_torn_line_is_cut_and_rows_past_the_restored_step_dropped(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  path = str(tmp_path / "metrics.jsonl")
  _write_rows(path, [1, 2, 3, 4, 5, 6], torn=b'{"step": 7, "lo')
  writer = metrics_io.JsonlWriter(path, resume_step=4)  # resumed from the checkpoint of step 4
  writer.write_scalars(5, {"loss": 50.0})
  writer.close()
  rows = metrics_io.read_jsonl(path)  # parses: no fragment glued onto a row
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == 50.0
  assert "torn line" in caplog.text and "dropped 2 rows past step 4" in caplog.text


def test_a_clean_file_is_not_rewritten(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_rows(path, [1, 2])
  before = os.stat(path).st_ino
  metrics_io.heal(str(path), resume_step=2)
  assert os.stat(path).st_ino == before  # untouched (a rewrite replaces the inode)


# ------------------------------------------------------------------------------------------------
# A failed save stops the run at once.
# ------------------------------------------------------------------------------------------------
def test_failed_save_names_the_cause():
  cause = OSError(28, "No space left on device")
  wrapped = ValueError("RESOURCE_EXHAUSTED: Failed writing [os_error_code='28']")
  error = checkpointing.SaveFailedError(6, "/w/checkpoints/6", 4, wrapped)
  assert checkpointing.describe_cause(cause) == "no space left on device"
  assert str(error) == ("saving the checkpoint of step 6 failed: no space left on device; path "
                        "/w/checkpoints/6; last good checkpoint: step 4")


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 48 MiB tmpfs (root, or a user namespace, can mount one); skipped where none can be."""
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_fill_helper_fills(small_tmpfs):
  _fill(small_tmpfs)
  assert os.statvfs(small_tmpfs).f_bavail == 0


def _fill(directory) -> None:
  with open(os.path.join(directory, "filler"), "wb") as f:
    try:
      while True:
        f.write(b"\0" * (1 << 20))
        f.flush()
    except OSError:
      pass


def test_a_full_disk_stops_the_run_at_once_with_one_line(launcher, small_tmpfs,  # noqa: F811
                                                         tmp_path):
  # Only the checkpoints on the small disk: the save is what fails, not the log or metrics.
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  os.makedirs(small_tmpfs / "ckpts")
  os.symlink(small_tmpfs / "ckpts", os.path.join(workdir, "checkpoints"))
  proc = launcher.start(workdir, num_steps=_STEPS, checkpoint_every=4, log_every=1)
  wait_for_step(proc, workdir, 5, 0)  # the checkpoint of step 4 is written
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.monotonic() + 30
  while "4" not in os.listdir(ckpts) and time.monotonic() < deadline:
    time.sleep(0.05)
  _fill(small_tmpfs)
  filled = time.monotonic()
  rc = proc.wait(timeout=120)
  elapsed = time.monotonic() - filled
  out = log_tail(proc, 20000)
  assert rc == 1, out
  lines = _error_lines(out)
  assert len(lines) == 1, out
  assert "no space left on device" in lines[0] and "last good checkpoint: step 4" in lines[0]
  assert os.path.join(ckpts, "8") in lines[0], lines[0]
  assert "sys.meta_path is None" not in out
  # Step 8's failed save surfaces when its background write ends, at the latest when the next
  # save (step 12) waits for it: never a checkpoint interval later (timing decides the step).
  assert max(row["step"] for row in loss_rows(workdir)) <= 12, out
  print(f"full disk: exit {elapsed:.1f} s after the disk filled")
  assert sorted(n for n in os.listdir(ckpts) if n.isdigit()) == ["4"]


# ------------------------------------------------------------------------------------------------
# Ctrl-C.
# ------------------------------------------------------------------------------------------------
def test_ctrl_c_saves_like_sigterm(launcher, tmp_path):  # noqa: F811
  workdir = str(tmp_path / "ctrl_c")
  proc = launcher.start(workdir, num_steps=_STEPS, checkpoint_every=1000)
  wait_for_step(proc, workdir, 3, 0)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=60) == 0, log_tail(proc)
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    stopped = json.load(f)["step"]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
  assert "KeyboardInterrupt" not in log_tail(proc)



_TWO_CTRL_C = """
import os, signal, time
from simlap.runtime import preemption
with preemption.StopRule() as rule:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.5)  # the first: a stop request, as SIGTERM
  assert rule.stop_now(1) == "preempted"
  os.kill(os.getpid(), signal.SIGINT)  # the second: gone at once
  time.sleep(30)
"""


def test_a_second_ctrl_c_exits_at_once(launcher):  # noqa: F811
  proc = subprocess.run([sys.executable, "-c", _TWO_CTRL_C], env=launcher.env, cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 130, proc.stderr
  assert "second Ctrl-C: exiting now" in proc.stderr and _no_traceback(proc.stderr)


# ------------------------------------------------------------------------------------------------
# One-line errors.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["--config=no/such/config.py"], "No such file or directory: 'no/such/config.py'"),
    (["--config.bakbone=resnet18"],
     "unknown config field 'bakbone' (--config.bakbone); closest valid: model.backbone"),
    (["--config.batch_size=abc"], "--config.batch_size=abc: invalid literal for int()"),
])
def test_bad_flags_give_one_line_and_exit_2(launcher, tmp_path, args, expected):  # noqa: F811
  argv = [sys.executable, "-m", "simlap.main", f"--config={launcher.config_file}",
          f"--workdir={tmp_path / 'run'}", *args]
  proc = subprocess.run(argv, cwd=REPO, env=launcher.env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = _error_lines(proc.stderr)
  assert len(lines) == 1 and expected in lines[0], proc.stderr
  assert _no_traceback(proc.stderr), proc.stderr
  assert not (tmp_path / "run").exists()


def test_a_missing_step_lists_the_steps_that_exist(tmp_path):
  """`simlap.evaluate --step=99999` restores through this: it names the steps there are."""
  import numpy as np  # noqa: PLC0415
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  for step in (2, 4):
    ckpt.save(step, {"w": np.zeros(3, np.float32)}, {"step": step})
  ckpt.close()
  with pytest.raises(ValueError, match=r"no checkpoint of step 99999 in .*; steps that exist: "
                                       r"2, 4$"):
    checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=3).restore({}, step=99999)


def test_a_damaged_convert_source_names_the_file(tmp_path):
  from simlap.interop import convert  # noqa: PLC0415
  path = tmp_path / "resnet18.safetensors"
  path.write_bytes(b"\xff" * 64)  # a header length far past the end: "header too large"
  with pytest.raises(ValueError) as err:
    convert.read_state_dict(str(path))
  assert str(path) in str(err.value) and "damaged or not a .safetensors" in str(err.value)
  with pytest.raises(FileNotFoundError, match="no such file"):
    convert.read_state_dict(str(tmp_path / "missing.safetensors"))
