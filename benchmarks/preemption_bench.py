"""What the agreed preemption stop costs: per train step, and from SIGTERM to the agreed stop.

  python -m benchmarks.preemption_bench [--calls=100000] [--step_ms=10] [--repeats=3]

(a) One process: `StopRule.stop_now` per step (reads the Python SIGTERM flag).
(b) Two processes on localhost (`jax.distributed`, 1 CPU device each): `stop_now` per step, which
    asks JAX's preemption sync manager (`reached_preemption_sync_point`).
(c) The same two processes then run "steps" of --step_ms sleep; process 1 sends itself SIGTERM
    and both report how long after it `stop_now` returned "preempted", and at which step. JAX's
    notifier polls its SIGTERM flag once a second, so this lies between ~0 and ~1 s plus the
    coordination service's round trips. One job gets one notice, so each repeat is a new job.

Prints one line per measurement. No accelerator is used; the numbers are host-side costs.
"""
from __future__ import annotations
import json
import os
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

_CALLS = flags.DEFINE_integer("calls", 100_000, "Timed stop_now calls per measurement.")
_STEP_MS = flags.DEFINE_float("step_ms", 10.0, "Simulated step time for the latency run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Latency runs (a new 2-process job each).")
_PROCESS = flags.DEFINE_integer("process_id", None, "Internal: run as this child process.")
_PORT = flags.DEFINE_integer("port", None, "Internal: the coordinator's port.")


def _per_call_us(rule, calls: int) -> float:
  start = time.perf_counter()
  for step in range(1, calls + 1):
    rule.stop_now(step)
  return (time.perf_counter() - start) / calls * 1e6


def _child(process_id: int, port: int) -> None:
  import jax  # noqa: PLC0415 (after the parent set the environment)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  from simlap.runtime import preemption  # noqa: PLC0415
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  with preemption.StopRule() as rule:
    cost = _per_call_us(rule, _CALLS.value)
    multihost_utils.sync_global_devices("preemption_bench_latency")
    step, sent = _CALLS.value, None
    while True:
      step += 1
      time.sleep(_STEP_MS.value / 1e3)
      if process_id == 1 and sent is None and step == _CALLS.value + 10:
        sent = time.time()
        os.kill(os.getpid(), signal.SIGTERM)
      if rule.stop_now(step) == "preempted":
        break
  print(json.dumps({"process": process_id, "us_per_call": cost, "stopped_at": time.time(),
                    "step": step - _CALLS.value, "signal_at": sent}), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes() -> list[dict]:
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
  argv = [sys.executable, "-m", "benchmarks.preemption_bench", f"--calls={_CALLS.value}",
          f"--step_ms={_STEP_MS.value}", f"--port={port}"]
  procs = [subprocess.Popen([*argv, f"--process_id={i}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True) for i in range(2)]
  out = [p.communicate(timeout=300)[0] for p in procs]
  if any(p.returncode for p in procs):
    raise RuntimeError(f"a child failed: exit codes {[p.returncode for p in procs]}")
  return [json.loads(o.strip().splitlines()[-1]) for o in out]


def main(argv):
  del argv
  if _PROCESS.value is not None:
    _child(_PROCESS.value, _PORT.value)
    return
  from simlap.runtime import preemption  # noqa: PLC0415
  with preemption.StopRule() as rule:
    print(f"(a) 1 process, stop_now per step: {_per_call_us(rule, _CALLS.value):.2f} us")
  for repeat in range(_REPEATS.value):
    rows = _two_processes()
    sent = rows[1]["signal_at"]
    costs = ", ".join(f"{r['us_per_call']:.2f}" for r in rows)
    if repeat == 0:
      print(f"(b) 2 processes, stop_now per step: {costs} us (process 0, 1)")
    after = ", ".join(f"{r['stopped_at'] - sent:.2f} s at step +{r['step'] - 10}" for r in rows)
    print(f"(c) run {repeat + 1}: SIGTERM to process 1 -> agreed stop on process 0, 1: {after} "
          f"(steps of {_STEP_MS.value:g} ms)")


if __name__ == "__main__":
  app.run(main)
