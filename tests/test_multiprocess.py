"""Two real processes on localhost (4 simulated CPU devices each, Gloo collectives) train as one
8-device job through `python -m simlap.main`, and match one process with 8 devices.

What is compared. The input pipeline gives each process its own TFDS slice
(`tfds.split_for_jax_process`), so a job's global batch depends on its process count: the
single-process reference here is the same trainer (`train.make_trainer`, same config and seed,
8 devices, one process) fed the same global batches, built in this process with the pipeline's
simulated-process mode (`process_index=p, process_count=2`, rows of process p at [p*b, (p+1)*b)).
The two runs execute the same program on the same mesh; only the cross-device collectives
differ (Gloo between processes vs. XLA's in-process ones), so sums are added in another order.
Step 1 starts from identical parameters and data, so its loss and gradient norm are compared
tightly; later steps inherit earlier round-off, which training amplifies in a CPU-dependent way,
so the trajectory is compared loosely (see the tolerances below). A negative control shows that
the tight check rejects a job that reads a wrong data slice.

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

from simlap.runtime import checkpointing
from simlap.runtime import metrics_io
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import train_stream
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
CONFIG_FILE = os.path.join(TESTS, "multiprocess_config.py")
PROCESSES, LOCAL_DEVICES = 2, 4
HEARTBEAT_S = 15  # a killed peer is declared dead after this (or sooner, by a failed collective)
JOB_TIMEOUT_S = 300  # generous: two processes compile on a shared 2-core machine
# test_train's tiny config with plain SGD, as in its 8-vs-1-device test: parameters then move by
# lr x gradient, so equal parameters mean equal gradients. Under AdamW, a bias that feeds a
# BatchNorm (the projector's) has a gradient that is zero up to round-off, and Adam's m/sqrt(v)
# turns that round-off into full-size steps of random sign (measured: up to 0.005 apart after 8
# steps, on a bias whose entries are below 0.004, while the losses agreed to 2e-7). Every step is
# logged: step 1's metrics are the tight check, and every loss of the trajectory is compared.
OVERRIDES = {"optimizer.name": "sgd", "optimizer.lr": 0.1, "log_every": 1}
FLAGS = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]

# Tight check: step 1. Both runs start from the same parameters and batch, and each device runs
# the same program on the same CPU, so they differ only where the 8 devices' partial results are
# combined (BatchNorm statistics, the loss's mean, the gradient's all-reduce). Adding 8 float32
# partials in another order moves a sum by a few ulp (~1e-7 relative when the terms share a
# sign), and BatchNorm renormalises after every layer, so the forward values (loss, probe loss)
# agree to ~1e-6 at worst (measured here: 9e-8). The gradient norm gets 10x more: a gradient is
# a sum of per-example terms that largely cancel, so its round-off relative to the sum is larger
# by that cancellation, and an input within round-off of a kink (ReLU at 0, a max-pool tie)
# takes the other branch of the derivative. A wrong data slice moves these values by 2e-2 or
# more; losing process 1's share of the gradient, or scaling it by 0.99, moves the gradient norm
# by 4e-1 or 8e-3 and leaves the step-1 loss as it is (planted bugs, measured).
STEP1_RTOL = {"loss": 1e-5, "probe_loss": 1e-5, "grad_norm": 1e-4}
# Loose check: the trajectory. From step 2 on, the runs start from parameters that differ by that
# round-off, and training at lr 0.1 amplifies it unevenly: where one run crosses a kink that the
# other does not, they follow distinct, nearby paths from then on (measured: scaling process 1's
# share of the gradient by 1 - 1e-6 at every step leaves the final parameters 2e-6 of their
# distance from the init apart; by 1 - 1e-5, 1.9e-3 apart and the losses 1.9e-4). Whether that
# happens depends on the CPU's round-off: on this machine the losses agree to 4e-7, on another
# they were 1.8e-4 apart from step 6 on. The cosine schedule takes lr to ~0 by step 8, which
# bounds later growth. The tolerances leave 50x (loss) and 25x (parameters) over such a split,
# and catch gross bugs: a wrong data slice or a lost share of the gradient leaves the final
# parameters about as far from the reference as the reference is from its init (measured: 1.06x
# and 0.95x). Subtler gradient errors are the tight check's job (a 1 % one passes this check).
TRAJECTORY_LOSS_RTOL = 1e-2
TRAJECTORY_PARAMS_RTOL = 5e-2  # x the distance the reference's parameters moved from their init


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


def _child_env(cache_dir: str, local_devices: int = LOCAL_DEVICES) -> dict[str, str]:
  env = dict(os.environ)
  # conftest gave this process 8 devices; each child gets its own 4, other XLA flags kept.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={local_devices}"])
  # The children import simlap from this checkout (ahead of any installed copy) and, in
  # multiprocess_config.py, test_train from tests/, which is not a package.
  path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, *path])
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return env


def start_job(data_dir: str, workdir: str, log_dir: str, cache_dir: str, *overrides: str,
              local_devices: int = LOCAL_DEVICES) -> Job:
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
          cwd=REPO, env=_child_env(cache_dir, local_devices), stdin=subprocess.DEVNULL,
          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
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
  metrics: dict[int, dict[str, float]]  # step -> all logged metrics (log_every is 1)
  params: dict[int, Any]  # 0 (the init) and every checkpointed step -> params


@pytest.fixture(scope="module")
def two_process_run(fmnist_data_dir, tmp_path_factory, cache_dir, num_devices):
  """The tiny config trained for its 8 steps by 2 processes x 4 devices, and the one-process
  reference computed here while they run: (workdir, job, reference)."""
  del num_devices  # asserts this process's 8 simulated devices
  root = tmp_path_factory.mktemp("two_process")
  workdir = str(root / "workdir")
  job = start_job(fmnist_data_dir, workdir, str(root), cache_dir)
  try:
    config = tiny_config(fmnist_data_dir, **OVERRIDES)
    trainer = train.make_trainer(config, sharding.make_mesh(config.mesh),
                                 datasets.get_dataset_info(config))
    reference = reference_run(config, trainer)
    codes = job.wait(JOB_TIMEOUT_S)
  finally:
    job.kill()
  assert codes == [0] * PROCESSES, f"a process failed\n{job.tails()}"
  return workdir, job, reference


def reference_run(config, trainer: train.Trainer,
                  slices: tuple[int, ...] = tuple(range(PROCESSES))) -> Reference:
  """One process, 8 devices, fed the global batches of the 2-process job: rows p*b..(p+1)*b-1
  are those that process `slices[p]` reads (the negative control passes wrong ones)."""
  mesh = sharding.make_mesh(config.mesh)
  streams = [train_stream.local_train_dataset(
      config, seed=config.seed, process_index=p, process_count=PROCESSES).as_numpy_iterator()
             for p in slices]
  state = trainer.init_fn()
  ref = Reference(config, trainer, {}, {0: jax.device_get(state.params)})
  for step in range(1, trainer.num_steps + 1):
    rows = [next(stream) for stream in streams]  # process p's rows come p-th
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    state, metrics = trainer.step_fn(state, jax.device_put(batch,
                                                           sharding.batch_sharding(mesh)))
    ref.metrics[step] = {k: float(v) for k, v in jax.device_get(metrics).items()}
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


@pytest.fixture(scope="module")
def job_results(two_process_run):
  """What the 2-process job produced: (step -> metrics from process 0's metrics.jsonl, step ->
  params from its checkpoints, restored by one process the way train_and_evaluate resumes)."""
  workdir, _, ref = two_process_run
  rows = [r for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  metrics = {r["step"]: r for r in rows}
  assert sorted(metrics) == sorted(ref.metrics) == list(range(1, 9)), sorted(metrics)
  params = {}
  for step in sorted(ref.params)[1:]:
    state, meta, restored_step = _restore(ref.config, ref.trainer, workdir, step)
    assert restored_step == step and meta["step"] == step and int(state.step) == step
    params[step] = jax.device_get(state.params)
    assert jax.tree.structure(params[step]) == jax.tree.structure(ref.params[step])
  return metrics, params


def _flat(params) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(params)])


def check_step_one(metrics: dict[int, dict[str, float]], ref: Reference) -> dict[str, float]:
  """Asserts step 1's metrics match the reference within STEP1_RTOL; returns the rel diffs."""
  diffs = {}
  for name, rtol in STEP1_RTOL.items():
    got, want = metrics[1][name], ref.metrics[1][name]
    diffs[name] = abs(got - want) / abs(want)
    assert diffs[name] <= rtol, (f"step 1 {name}: {got!r} (2 processes) vs {want!r} (1), "
                                 f"rel diff {diffs[name]:.2e} > {rtol:g}")
  return diffs


def check_trajectory(metrics: dict[int, dict[str, float]], params: dict[int, Any],
                     ref: Reference) -> dict[str, float]:
  """Asserts every step's loss, and the checkpointed parameters measured against the distance
  they moved from their init, match the reference loosely; returns the largest differences."""
  steps = sorted(ref.metrics)
  got = np.array([metrics[s]["loss"] for s in steps])
  want = np.array([ref.metrics[s]["loss"] for s in steps])
  rel = np.abs(got - want) / np.abs(want)
  assert np.all(rel <= TRAJECTORY_LOSS_RTOL), (
      f"losses of steps {steps}: {got.tolist()} (2 processes) vs {want.tolist()} (1), "
      f"rel diff up to {rel.max():.2e} > {TRAJECTORY_LOSS_RTOL:g}")
  diffs = {"loss": float(rel.max())}
  init = _flat(ref.params[0])
  for step, expected in sorted(ref.params.items())[1:]:
    expected = _flat(expected)
    diffs[f"params@{step}"] = d = (np.linalg.norm(_flat(params[step]) - expected)
                                   / np.linalg.norm(expected - init))
    assert d <= TRAJECTORY_PARAMS_RTOL, (
        f"parameters at step {step} are {d:.2e} x their distance from the init apart "
        f"(> {TRAJECTORY_PARAMS_RTOL:g})")
  return diffs


def test_two_processes_match_one(two_process_run, job_results):
  _, job, ref = two_process_run
  for i in range(PROCESSES):
    assert f"process {i} of 2; 4 local / 8 global devices (cpu)" in job.log(i)
  metrics, params = job_results
  tight = check_step_one(metrics, ref)
  loose = check_trajectory(metrics, params, ref)
  apart = ", ".join(f"{v:.1e} ({k})" for k, v in loose.items() if k != "loss")
  print("2 processes vs 1: step 1 rel diffs " + ", ".join(f"{k} {v:.1e}" for k, v in tight.items())
        + f"; loss rel diff up to {loose['loss']:.1e}; params apart by {apart} x their distance "
        "from the init")


def test_checks_reject_a_wrong_data_slice(two_process_run, job_results):
  """Negative control: both checks reject a run whose process 1 read process 0's rows.

  The comparison is symmetric, so the reference stands in for such a job: fed process 0's rows
  twice per global batch (with the step it has compiled already: ~2 s), it must fail the tight
  check against the real job at step 1, and the loose check on the trajectory."""
  _, _, ref = two_process_run
  metrics, params = job_results
  wrong = reference_run(ref.config, ref.trainer, slices=(0, 0))
  with pytest.raises(AssertionError, match="step 1 loss"):
    check_step_one(metrics, wrong)
  with pytest.raises(AssertionError, match="losses of steps|parameters at step"):
    check_trajectory(metrics, params, wrong)


def test_only_process_zero_writes_logs(two_process_run):
  workdir, job, _ = two_process_run
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  # TensorBoard puts the writer's pid in the file name: one file, from process 0.
  assert len(events) == 1, events
  assert f".{job.procs[0].pid}." in os.path.basename(events[0]), (events, job.procs[0].pid)
  # One row per logged step: a second writer appending to metrics.jsonl would repeat steps.
  steps = [r["step"] for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in r]
  assert steps == list(range(1, 9))
  assert sorted(os.listdir(workdir)) == sorted([  # nothing else, e.g. from process 1
      "checkpoints", "config.json", os.path.basename(events[0]), "logs", "metrics.jsonl",
      "summary.json"])
  # Each process keeps its full log in its own file (never two writers on one file).
  assert sorted(os.listdir(os.path.join(workdir, "logs"))) == ["simlap.0.log", "simlap.1.log"]
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
