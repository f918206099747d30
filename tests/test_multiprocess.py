"""Two real processes on localhost (4 simulated CPU devices each, Gloo collectives) train as one
8-device job through `python -m simlap.main`, and match one process with 8 devices.

What is compared. The input pipeline gives each process its own TFDS slice
(`tfds.split_for_jax_process`), so a job's global batch depends on its process count: the
single-process reference here is the same trainer (`train.make_trainer`, same config and seed,
8 devices, one process) fed the same global batches, built in this process with the pipeline's
simulated-process mode (`process_index=p, process_count=2`, rows of process p at [p*b, (p+1)*b)).

Nothing may hang: every child runs in its own process group under a deadline and is killed
with its group when a test ends. A child that dies stops the job: after an error simlap.main
exits at once and its peers' next collective fails (measured: both gone 1.3 s after a SIGINT
mid-training); a child killed outright is declared dead by the coordinator within
--heartbeat_timeout_seconds, which aborts the others (measured: 11-15 s at 15).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import pytest

from simlap import checkpointing
from simlap import metrics_io
from simlap import sharding
from simlap import train
from simlap.data import datasets
from simlap.data import train_stream
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "tests", "multiprocess_config.py")
PROCESSES, LOCAL_DEVICES = 2, 4
HEARTBEAT_S = 15  # a killed peer is declared dead after this (or sooner, by a failed collective)
JOB_TIMEOUT_S = 300  # generous: two processes compile on a shared 2-core machine
# test_train's tiny config with plain SGD, as in its 8-vs-1-device test: parameters then move by
# lr x gradient, so equal parameters mean equal gradients. Under AdamW, a bias that feeds a
# BatchNorm (the projector's) has a gradient that is zero up to round-off, and Adam's m/sqrt(v)
# turns that round-off into full-size steps of random sign (measured: up to 0.005 apart after 8
# steps, on a bias whose entries are below 0.004, while the losses agreed to 2e-7).
OVERRIDES = {"optimizer.name": "sgd", "optimizer.lr": 0.1}
FLAGS = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


@dataclasses.dataclass
class Job:
  """P `simlap.main` processes of one job; `logs[i]` holds process i's stdout and stderr."""
  procs: list[subprocess.Popen]
  logs: list[str]

  def log(self, i: int) -> str:
    with open(self.logs[i], encoding="utf-8", errors="replace") as f:
      return f.read()

  def tails(self, chars: int = 3000) -> str:
    return "\n".join(f"---- process {i} (exit {p.poll()}) log tail ----\n{self.log(i)[-chars:]}"
                     for i, p in enumerate(self.procs))

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)  # the child and anything it started
        except ProcessLookupError:
          pass
      p.wait()

  def wait(self, timeout: float) -> list[int]:
    """Exit codes once all processes ended; fails the test, killing them, on a timeout or when
    one fails and the others have not stopped 2 heartbeats later."""
    deadline = time.monotonic() + timeout
    failed = False
    while True:
      codes = [p.poll() for p in self.procs]
      if all(c is not None for c in codes):
        return codes
      if not failed and any(c not in (None, 0) for c in codes):
        failed = True
        deadline = min(deadline, time.monotonic() + 2 * HEARTBEAT_S)
      if time.monotonic() > deadline:
        self.kill()
        pytest.fail(f"job did not finish within its deadline (exit codes so far {codes}); "
                    f"killed it\n{self.tails()}")
      time.sleep(0.2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _child_env(cache_dir: str) -> dict[str, str]:
  env = dict(os.environ)
  # conftest gave this process 8 devices; each child gets its own 4, other XLA flags kept.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"])
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return env


def start_job(data_dir: str, workdir: str, log_dir: str, cache_dir: str, *overrides: str) -> Job:
  """Starts process 0..P-1 of `python -m simlap.main` on the tiny config, as a cluster would."""
  port = _free_port()
  procs, logs = [], []
  for i in range(PROCESSES):
    logs.append(os.path.join(log_dir, f"process{i}.log"))
    with open(logs[-1], "w", encoding="utf-8") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "simlap.main", f"--config={CONFIG_FILE}:{data_dir}",
           f"--workdir={workdir}", f"--coordinator_address=localhost:{port}",
           f"--num_processes={PROCESSES}", f"--process_id={i}",
           f"--heartbeat_timeout_seconds={HEARTBEAT_S}", *FLAGS, *overrides],
          cwd=REPO, env=_child_env(cache_dir), stdin=subprocess.DEVNULL, stdout=log,
          stderr=subprocess.STDOUT, start_new_session=True))
  return Job(procs, logs)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
  """The children's compilation cache, fresh per session: the second job's process 0 loads
  from it while process 1 compiles, so its processes reach the first step far apart."""
  return str(tmp_path_factory.mktemp("mp_jax_cache"))


@dataclasses.dataclass
class Reference:
  config: Any
  trainer: train.Trainer
  losses: dict[int, float]  # logged step -> loss
  params: dict[int, Any]  # checkpointed step -> params


@pytest.fixture(scope="module")
def two_process_run(fmnist_data_dir, tmp_path_factory, cache_dir, num_devices):
  """The tiny config trained for its 8 steps by 2 processes x 4 devices, and the one-process
  reference computed here while they run: (workdir, job, reference)."""
  del num_devices  # asserts this process's 8 simulated devices
  root = tmp_path_factory.mktemp("two_process")
  workdir = str(root / "workdir")
  job = start_job(fmnist_data_dir, workdir, str(root), cache_dir)
  try:
    reference = reference_run(fmnist_data_dir)
    codes = job.wait(JOB_TIMEOUT_S)
  finally:
    job.kill()
  assert codes == [0] * PROCESSES, f"a process failed\n{job.tails()}"
  return workdir, job, reference


def reference_run(data_dir: str) -> Reference:
  """One process, 8 devices, fed the global batches of the 2-process job."""
  config = tiny_config(data_dir, **OVERRIDES)
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  streams = [train_stream.local_train_dataset(
      config, seed=config.seed, process_index=p, process_count=PROCESSES).as_numpy_iterator()
             for p in range(PROCESSES)]
  state = trainer.init_fn()
  ref = Reference(config, trainer, {}, {})
  for step in range(1, trainer.num_steps + 1):
    rows = [next(stream) for stream in streams]  # process p's rows come p-th
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    state, metrics = trainer.step_fn(state, jax.device_put(batch,
                                                           sharding.batch_sharding(mesh)))
    if step % config.log_every == 0:
      ref.losses[step] = float(metrics["loss"])
    if step % config.checkpoint_every == 0:
      ref.params[step] = jax.device_get(state.params)  # before the next step donates it
  return ref


def _restore(config, trainer, workdir: str, step: int):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every_steps=config.checkpoint_every,
                                    keep=config.keep_checkpoints)
  try:
    return ckpt.restore(trainer.abstract_state, step=step)
  finally:
    ckpt.close()


def test_two_processes_match_one(two_process_run):
  workdir, job, ref = two_process_run
  for i in range(PROCESSES):
    assert f"process {i} of 2; 4 local / 8 global devices (cpu)" in job.log(i)

  # Loss trajectory: metrics.jsonl from process 0 against the one-process run.
  rows = [r for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  losses = {r["step"]: r["loss"] for r in rows}
  assert sorted(losses) == sorted(ref.losses) == [2, 4, 6, 8]
  got_losses = np.array([losses[s] for s in sorted(losses)])
  ref_losses = np.array([ref.losses[s] for s in sorted(ref.losses)])
  # The same program on the same 8-device mesh; only the collectives differ (Gloo over TCP
  # between processes vs. XLA's in-process ones), so cross-device sums are added in another
  # order: float32 round-off (~1e-7 relative) that the training dynamics (BatchNorm on a
  # 32-image batch, lr 0.1) grow step after step. Measured: losses within 4e-7 relative,
  # parameters within 2e-6 after 4 steps and 9e-6 after 8 (of values up to 2.3). The
  # tolerances leave ~5x-25x margin; a wrong data slice or a missing process's gradient
  # moves the loss by 1e-2 or more.
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)

  # Final (and intermediate) parameters: the 2-process checkpoints, restored by one process
  # the way train_and_evaluate resumes (Checkpointer.restore into the trainer's shardings).
  worst = 0.0
  for step, expected in ref.params.items():
    state, meta, restored_step = _restore(ref.config, ref.trainer, workdir, step)
    assert restored_step == step and meta["step"] == step and int(state.step) == step
    got = jax.device_get(state.params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
      worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))))
  print(f"2 processes vs 1: loss max rel diff "
        f"{np.max(np.abs(got_losses - ref_losses) / np.abs(ref_losses)):.2e}, "
        f"params max abs diff {worst:.2e}")


def test_only_process_zero_writes_logs(two_process_run):
  workdir, job, _ = two_process_run
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  # TensorBoard puts the writer's pid in the file name: one file, from process 0.
  assert len(events) == 1, events
  assert f".{job.procs[0].pid}." in os.path.basename(events[0]), (events, job.procs[0].pid)
  # One row per logged step: a second writer appending to metrics.jsonl would repeat steps.
  steps = [r["step"] for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in r]
  assert steps == [2, 4, 6, 8]
  assert sorted(os.listdir(workdir)) == sorted([  # nothing else, e.g. from process 1
      "checkpoints", "config.json", os.path.basename(events[0]), "metrics.jsonl",
      "summary.json"])
  assert "simlap summary" in job.log(0) and "simlap summary" not in job.log(1)
  # Every process took part in the saves; both steps are complete Orbax checkpoints.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


@pytest.mark.slow
def test_killed_process_stops_the_job(fmnist_data_dir, tmp_path, cache_dir, two_process_run):
  del two_process_run  # runs after it: process 0 then loads the train step from the cache
  job = start_job(fmnist_data_dir, str(tmp_path / "workdir"), str(tmp_path), cache_dir)
  try:
    # Process 0, whose programs come from the cache, has built its state and enters the train
    # loop (its first step waits on process 1), while process 1 is still compiling.
    started = time.monotonic()
    while "starting from scratch" not in job.log(0):
      if any(p.poll() is not None for p in job.procs):
        pytest.fail(f"a process ended before training started\n{job.tails()}")
      if time.monotonic() - started > JOB_TIMEOUT_S:
        pytest.fail(f"training did not start within {JOB_TIMEOUT_S} s\n{job.tails()}")
      time.sleep(0.2)
    os.killpg(job.procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    bound = 2 * HEARTBEAT_S
    try:
      code = job.procs[0].wait(timeout=bound)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still running {bound} s after process 1 was killed\n"
                  f"{job.tails()}")
    elapsed = time.monotonic() - killed
  finally:
    job.kill()
  assert code != 0, f"process 0 exited with 0 after its peer died\n{job.tails()}"
  log = job.log(0)
  # Either its collective failed (simlap.main's fast exit) or the coordinator declared the
  # peer dead (JAX aborts the process): both name the cause.
  assert ("failed; exiting now" in log or "heartbeat" in log or "Gloo" in log), job.tails()
  print(f"process 0 exited with {code} {elapsed:.1f} s after process 1 was killed")
