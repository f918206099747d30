"""Which JAX backends an entry point may start: never a TPU backend on a host without a TPU.

With libtpu installed (the `tpu` extra, which `simlap.aot` needs to compile for TPU slices),
JAX tries a TPU backend at startup on every host. Where no TPU chip is attached that attempt
fails, after libtpu has printed several C++ errors about TPU host discovery, and JAX falls back
to the GPU or CPU. JAX already skips CUDA when no NVIDIA GPU is visible; `skip_absent_tpu` does
the same for TPU, using JAX's own PCI check. A JAX_PLATFORMS the user set always wins.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os

import jax


def skip_absent_tpu() -> str | None:
  """Restricts JAX to GPU/CPU when libtpu is installed but no TPU chip is attached.

  Call before anything initialises JAX's backends. Returns the platforms it set, or None when
  it left the choice to JAX (a TPU is present, libtpu is absent, or JAX_PLATFORMS is set).
  """
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return None
  try:
    from jax._src import hardware_utils  # noqa: PLC0415  (private; absent -> JAX decides)
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    gpu = hardware_utils.has_visible_nvidia_gpu()
  except Exception:  # pylint: disable=broad-except
    return None
  if chips:
    return None
  plugins = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
  if any("rocm" in name for name in plugins):
    return None  # an AMD GPU stack: leave the choice to JAX
  cuda = gpu and (any("cuda" in name for name in plugins) or any(
      importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)))
  platforms = "cuda,cpu" if cuda else "cpu"
  jax.config.update("jax_platforms", platforms)
  logging.info("no TPU chip on this host: JAX platforms %s (libtpu is installed for "
               "compile-only TPU targets)", platforms)
  return platforms
