"""`platforms.skip_absent_tpu`: with libtpu installed on a host without a TPU chip, entry points
start JAX on CPU without libtpu's C++ host-discovery errors; a JAX_PLATFORMS the user set wins."""
from __future__ import annotations
import os
import subprocess
import sys

import pytest

from test_aot import REPO, _require_libtpu

PROBE = ("import sys; from simlap.runtime import platforms; "
         "chosen = platforms.skip_absent_tpu() if sys.argv[1] == 'skip' else None; "
         "import jax; print(chosen, jax.devices()[0].platform)")
NOISE = "TPU_WORKER_HOSTNAMES"  # in libtpu's error when it starts on a host without a TPU


def probe(mode: str, **env) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                        cwd=REPO, env={**clean, **env}, timeout=120, check=True)


@pytest.fixture(scope="module", autouse=True)
def no_tpu_here():
  _require_libtpu()
  if os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"):
    pytest.skip("this host has a TPU: the check is for hosts without one")


def test_without_a_chip_jax_starts_on_cpu_quietly():
  proc = probe("skip")
  assert proc.stdout.split() == ["cpu", "cpu"]
  assert NOISE not in proc.stderr, proc.stderr


def test_the_noise_it_prevents_is_real():
  """Negative control: the same start without the call loads libtpu and prints its errors."""
  proc = probe("plain")
  assert proc.stdout.split() == ["None", "cpu"]
  assert NOISE in proc.stderr


def test_user_choice_wins():
  assert probe("skip", JAX_PLATFORMS="cpu").stdout.split() == ["None", "cpu"]
