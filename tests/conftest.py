"""Test-session setup: 8 simulated CPU devices, offline TFDS, TensorFlow kept off accelerators.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at import time of the
conftest, before any test module imports jax.
"""
from __future__ import annotations
import os

# XLA:CPU's MLIR fusion emitters take twice as long to compile the tiny models' steps as its
# classic elemental emitters (4.0 s against 2.0 s for test_train's step on 8 devices). SPMD
# partitioning is unchanged, so shardings and collectives are the same; only CPU fusion and code
# generation differ. The suite, and every child it starts, uses the classic ones
# (docs/testing.md).
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_force_host_platform_device_count=8 --xla_cpu_use_fusion_emitters=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Never let a test wait on the network: TFDS reads GCS metadata unless told not to.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")
# libtpu (the `tpu` extra, for simlap.aot) must not query GCE metadata for a TPU host.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to guard
# The suite is compile-bound on XLA:CPU (tiny models, many programs, fresh child processes), and
# most of a compile is LLVM's optimisation of the generated code. The session, and every child
# process it starts (they inherit this environment), skip those passes: the HLO passes (fusion,
# SPMD partitioning) still run, so programs, shardings and collectives are the product's; only
# the machine code is less optimised. Modules that judge a compiled program itself (its HBM, its
# cost) opt back in with the `optimized_compiles` fixture. docs/testing.md has the measurement.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests build the same tiny model: identical init/step programs compile once per session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="simlap-jax-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def num_devices() -> int:
  n = jax.device_count()
  assert n == 8, f"expected 8 simulated CPU devices, got {n}; XLA_FLAGS was set too late"
  return n


@pytest.fixture(scope="session")
def fmnist_data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the real Fashion-MNIST (`fashion_mnist_local`), prepared once.

  Reads Debian's IDX files (or $SIMLAP_FASHION_MNIST_DIR); about 2 s on 2 cores.
  """
  from simlap.data import fashion_mnist  # noqa: PLC0415 (imports TF: only when needed)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fashion_mnist.prepare(data_dir)
  return data_dir


@pytest.fixture(scope="module")
def optimized_compiles():
  """XLA's full optimisation for a module that opts in (`pytest.mark.usefixtures`): those that
  compile for a TPU target and read its memory and cost, which the backend passes change."""
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def pytest_collection_modifyitems(config, items):
  """Files with slow tests first (stable within a file): `--dist loadfile` hands files out in
  this order, so the long ones start early and the short ones fill the end of both workers."""
  del config
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)
