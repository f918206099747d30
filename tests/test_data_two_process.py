"""The training stream is a pure function of (seed, step, process count), across real processes.

Two real processes (`jax.distributed`, 4 CPU devices each) read mocked imagenet2012 with both
streamed readers, from step 0 and resumed at step 3 (tests/stream_worker.py). Each process's
rows must equal the in-process simulation of that process (`process_index`/`process_count`
given), so every determinism test on simulated processes holds for real ones too.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

import test_data_random_access

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
KEYS = ("view1", "view2", "view1_colour", "view2_colour", "label")  # colour: on the device


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """{process: {reader: {"full": [5 batches], "resumed": [2 batches]}}} of digests."""
  root = tmp_path_factory.mktemp("two_process_stream")
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=4"]),
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([REPO, TESTS]))
  port, procs = _free_port(), []
  for i in range(2):
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "stream_worker.py"), str(port), str(i), "2",
         str(root / f"p{i}.json")], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return {i: json.loads((root / f"p{i}.json").read_text()) for i in range(2)}


def _simulated(random_access: bool, process_index: int) -> list[dict[str, str]]:
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    config = test_data_random_access.mocked_config(random_access=random_access)
    batches = test_data_random_access._batches(config, 5, pi=process_index, pc=2)  # noqa: SLF001
  return [{k: hashlib.sha256(b[k].tobytes()).hexdigest() for k in KEYS} for b in batches]


@pytest.mark.slow
@pytest.mark.parametrize("reader, random_access", [("random_access", True), ("stream", False)])
def test_real_processes_resume_and_match_the_simulation(recorded, reader, random_access):
  for pi in range(2):
    got = recorded[pi][reader]
    # A resumed stream yields the uninterrupted one's batches from its step on.
    assert got["resumed"] == got["full"][3:], (reader, pi)
    # The real process reads exactly what the simulated process index reads.
    want = _simulated(random_access, pi)
    assert [{k: b[k] for k in KEYS} for b in got["full"]] == want, (reader, pi)
  # The two processes hold different rows (their views fold in the global row).
  assert recorded[0][reader]["full"][0]["view1"] != recorded[1][reader]["full"][0]["view1"]
