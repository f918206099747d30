"""TPU slices as compile targets: names, chip figures, and compile-only devices.

`compile_devices(parse_slice("v5e:2x4"))` returns the devices of a TPU slice that does not exist
here: with `libtpu` installed (the `tpu` extra), `jax.experimental.topologies` describes any
slice to the TPU compiler, so the real train step compiles for it on a CPU-only host
(`simlap.aot`). Nothing here runs on a TPU. Names: libtpu's "GENERATION:SHAPE" ("v5e:2x4",
"v4:2x2x4") or Cloud's slice names ("v5e-8", "v4-32"; for v4 and v5p they count TensorCores).
"""
from __future__ import annotations

import dataclasses
import math
import re

from simlap.runtime import console


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures for the roofline estimate (peak numbers, not measurements)."""
  generation: str
  hbm_gib: float  # capacity used for "fits"
  peak_bf16_flops: float  # FLOP/s
  hbm_bytes_per_s: float
  ici_bytes_per_s: float  # bidirectional inter-chip interconnect bandwidth per chip
  libtpu_name: str  # the generation as libtpu spells it
  chip_config: str  # "megacore": one device per chip for the two-TensorCore chips
  dims: int  # 2-D torus (v5e, v6e) or 3-D (v4, v5p)
  source: str


# Figures from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/<gen>),
# except v4's ICI, which that page does not give: 6 links per chip at 4.5e10 B/s each way
# (jax-ml.github.io/scaling-book/tpus), i.e. 5.4e11 B/s bidirectional.
CHIPS = {
    "v4": Chip("v4", 32.0, 275e12, 1200e9, 540e9, "v4", "megacore", 3,
               "cloud.google.com/tpu/docs/v4 (275 TFLOP/s, 32 GiB, 1200 GB/s); ICI: "
               "scaling-book"),
    "v5e": Chip("v5e", 16.0, 197e12, 819e9, 400e9, "v5e", "default", 2,
                "cloud.google.com/tpu/docs/v5e (197 TFLOP/s, 16 GiB, 819 GB/s, ICI 400 GB/s)"),
    "v5p": Chip("v5p", 95.0, 459e12, 2765e9, 1200e9, "v5", "megacore", 3,
                "cloud.google.com/tpu/docs/v5p (459 TFLOP/s, 95 GiB, 2765 GB/s, ICI 1200 GB/s)"),
    "v6e": Chip("v6e", 32.0, 918e12, 1638e9, 800e9, "v6e", "default", 2,
                "cloud.google.com/tpu/docs/v6e (918 TFLOP/s, 32 GiB, 1638 GB/s, ICI 800 GB/s)"),
}
_ALIASES = {"v5litepod": "v5e", "v5": "v5p", "v6": "v6e"}
# Slice name -> chip grid, for the common single-slice shapes.
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str  # as the user wrote it
  chip: Chip
  shape: tuple[int, ...]  # chips along each torus axis

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def libtpu_topology(self) -> str:
    return f"{self.chip.libtpu_name}:" + "x".join(map(str, self.shape))


def parse_slice(name: str) -> Slice:
  """"v5e:2x4" or "v5e-8" -> Slice; a ValueError that lists the choices otherwise."""
  choices = (f"expected GENERATION:SHAPE (e.g. v5e:2x4, v4:2x2x4) or a slice name (e.g. "
             f"v5e-8, v4-32, v5p-8); generations: {sorted(CHIPS)}")
  m = re.fullmatch(r"(v\d[a-z]*)(?:(:)([\dx]+)|-(\d+))", name.strip().lower())
  if not m:
    raise ValueError(f"topology {name!r} is not a TPU slice name: {choices}")
  gen = _ALIASES.get(m.group(1), m.group(1))
  if gen not in CHIPS:
    raise ValueError(f"topology {name!r}: unknown TPU generation {m.group(1)!r}; {choices}")
  chip = CHIPS[gen]
  if m.group(2):
    shape = tuple(int(s) for s in m.group(3).split("x") if s)
  else:
    count = int(m.group(4)) // (2 if chip.dims == 3 else 1)  # v4-8 / v5p-8 count TensorCores
    shape = (_GRID_3D if chip.dims == 3 else _GRID_2D).get(count)
    if shape is None:
      raise ValueError(f"topology {name!r}: no standard {gen} slice of {count} chips; give "
                       f"the shape instead, e.g. {gen}:{'2x2x4' if chip.dims == 3 else '4x4'}")
  if len(shape) != chip.dims or min(shape) < 1:
    raise ValueError(f"topology {name!r}: a {gen} shape has {chip.dims} dimensions "
                     f"(e.g. {gen}:{'2x2x1' if chip.dims == 3 else '2x4'})")
  return Slice(name, chip, shape)


def compile_devices(tpu: Slice) -> list:
  """Compile-only devices of `tpu`; needs libtpu. Raises ValueError with one clear line."""
  try:
    from jax.experimental import topologies  # noqa: PLC0415
    import libtpu  # noqa: F401, PLC0415  (the `tpu` extra)
  except ImportError as e:
    raise ValueError("compiling for a TPU needs libtpu: install the `tpu` extra "
                     "(pip install -e '.[tpu]'; scripts/setup.sh does)") from e
  shape3 = tuple(tpu.shape) + (1,) * (3 - len(tpu.shape))
  # Four chips per host as on v4/v5p/v5e/v6e slices; the host layout does not change the program.
  per_host = tuple(min(s, b) for s, b in zip(shape3, (2, 2, 1)))
  # Wraparound links exist on full 3-D cubes and on 16-chip torus rings (2-D pods).
  wrap = tuple((tpu.chip.dims == 3 and tpu.num_chips >= 64) or s == 16 for s in shape3)
  try:
    # libtpu prints host-discovery warnings on stderr when loaded off a TPU VM; irrelevant here.
    with console.quiet_native_stderr():
      desc = topologies.get_topology_desc(
          topology_name=tpu.libtpu_topology, platform="tpu",
          chip_config_name=tpu.chip.chip_config, chips_per_host_bounds=per_host, wrap=wrap)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"topology {tpu.name!r} ({tpu.libtpu_topology}) is not a slice libtpu "
                     f"can build: {first}") from e
  return list(desc.devices)
