"""Compile-only TPU programs of the real train step, and what their compiler reports say.

`compile_step` lowers `simlap.training.loop.make_trainer`'s step with abstract shapes and
compiles it with libtpu for compile-only devices (`simlap.tpu.topology`): no dataset is read and
nothing runs. A `Row` holds per-chip HBM from the compiler's memory analysis, FLOPs and bytes,
collective bytes from the HLO and a roofline estimate of the step time (from peak figures: a
lower bound, not a measurement). An out-of-memory compile is a row too.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
from typing import Any

# Compile-only: JAX must not try to open a TPU, and libtpu must not query GCE metadata.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# libtpu takes a machine-wide lock against two processes driving one TPU; compile-only use
# drives none, so concurrent compiles (and tests) may load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from simlap.data import split_sizes  # noqa: E402
from simlap.tpu import hlo_collectives  # noqa: E402
from simlap.tpu import topology as tpu_topology  # noqa: E402

_GIB = 2.0 ** 30
# XLA's out-of-memory messages: "Used 20.1G of 15.5G hbm" or "... temporaries (388.16G)
# exceeds available HBM (15.75G)". Sizes are binary (G = GiB).
_OOM_USED = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")
_OOM_TEMP = re.compile(r"temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
                       r"\(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2.0 ** -20, "M": 2.0 ** -10, "G": 1.0, "T": 2.0 ** 10}


@dataclasses.dataclass
class Row:
  """One compile: a config at one global batch on one slice. Sizes per chip, in GiB."""
  topology: str
  chip: str
  chips: int
  params: str  # config.sharding.params
  global_batch: int
  batch_per_chip: float
  compile_s: float
  fits: bool
  total_gib: float  # needed, for a compile that ran out of memory
  capacity_gib: float
  state_gib: float | None = None
  argument_gib: float | None = None  # the compiler's: state + this chip's batch
  temp_gib: float | None = None
  tflop_per_chip: float | None = None
  hbm_gib_accessed: float | None = None  # the compiler's "bytes accessed" per step, per chip
  collective_mib: dict[str, float] | None = None
  est_step_ms: float | None = None
  est_views_per_s_chip: float | None = None
  bound: str | None = None
  note: str = ""


def dataset_info(config: ml_collections.ConfigDict, num_train: int | None):
  from simlap.data import datasets  # noqa: PLC0415  (imports TensorFlow: simlap.aot, quietly)
  d = config.dataset
  num_train = num_train or _known_train_size(d.name)
  if not num_train:
    raise ValueError(f"the size of dataset {d.name!r} is not in simlap/data/split_sizes.py; "
                     "pass --num_train (it sets the LR schedule's length, not the shapes)")
  return datasets.info_from_config(config, num_train)


def _known_train_size(name: str) -> int | None:
  sizes = split_sizes.SIZES.get(name)
  return sizes.train if sizes else None


def _per_chip_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""
  return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def _needs_gib(message: str, known_gib: float) -> tuple[float, float] | None:
  """(needed, available) GiB from an out-of-memory compile error, else None."""
  if m := _OOM_USED.search(message):
    return float(m[1]) * _UNIT[m[2]], float(m[3]) * _UNIT[m[4]]
  if m := _OOM_TEMP.search(message):  # temporaries only: add what the arguments hold
    return float(m[1]) * _UNIT[m[2]] + known_gib, float(m[3]) * _UNIT[m[4]]
  return None


def view_dtype(config: ml_collections.ConfigDict, num_train: int | None = None) -> str:
  """The dtype of the views a run of `config` sends to its devices, without the dataset.

  `config.dataset.view_dtype` if set; else uint8 for a streamed train split and float32 for an
  in-memory one (`train_stream.view_dtype`), where a split counts as streamed when
  `dataset.in_memory` says so or, unset, when its decoded images exceed the in-memory limit
  (ImageNet: 193 GB; the prepared JPEGs, which the run measures, are far above it too).
  """
  from simlap.data import datasets  # noqa: PLC0415
  d = config.dataset
  if d.view_dtype is not None:
    return d.view_dtype
  if d.in_memory is not None:
    return "float32" if d.in_memory else "uint8"
  images = (num_train or _known_train_size(d.name) or 0) * d.image_size ** 2 * d.channels
  return "float32" if images <= datasets.IN_MEMORY_MAX_BYTES else "uint8"


def compile_step(config: ml_collections.ConfigDict, tpu: tpu_topology.Slice, devices: list,
                 global_batch: int, num_train: int | None = None) -> Row:
  """Lowers and compiles the train step of `config` at `global_batch` for `tpu`.

  Args:
    config: the run's config (copied; its batch size and conv_impl are replaced).
    tpu: the slice (`topology.parse_slice`); devices: its compile-only devices.
    global_batch: the global batch to compile for.
    num_train: the train split's size when simlap/data/split_sizes.py lacks it.

  Returns:
    The `Row`; a compile that runs out of memory is a row with `fits` False, not an error.
  """
  from simlap import config_schema  # noqa: PLC0415
  from simlap.data import device_colour  # noqa: PLC0415
  from simlap.data import train_stream  # noqa: PLC0415
  from simlap.runtime import sharding  # noqa: PLC0415
  from simlap.training import loop as train  # noqa: PLC0415
  config = copy.deepcopy(config)
  config.batch_size = global_batch
  config.model.conv_impl = "xla"  # never the CPU forms on a TPU, whatever the config asks for
  config_schema.validate(config)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  sharding.check_batch_divisible(global_batch, mesh)
  trainer = train.make_trainer(config, mesh, dataset_info(config, num_train))
  d, in_batch = config.dataset, sharding.batch_sharding(mesh)
  dtype = view_dtype(config, num_train)
  view = jax.ShapeDtypeStruct((global_batch, d.image_size, d.image_size, d.channels), dtype,
                              sharding=in_batch)
  batch = {"view1": view, "view2": view,
           "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=in_batch)}
  if train_stream.colour_stage(config, dtype) == "device":  # as the run's stream sends them
    batch["view1_colour"] = batch["view2_colour"] = jax.ShapeDtypeStruct(
        (global_batch, device_colour.packed_size(d.channels)), jnp.float32, sharding=in_batch)
  chips, chip = len(devices), tpu.chip
  row = dict(topology=tpu.name, chip=chip.generation, chips=chips,
             params=config.sharding.params, global_batch=global_batch,
             batch_per_chip=global_batch / chips, capacity_gib=chip.hbm_gib)
  state_gib = _per_chip_bytes(trainer.abstract_state) / _GIB
  start = time.perf_counter()
  try:
    compiled = trainer.step_fn.lower(trainer.abstract_state, batch).compile()
  except Exception as e:  # pylint: disable=broad-except
    needs = _needs_gib(str(e), state_gib + _per_chip_bytes(batch) / _GIB)
    if needs is None:
      raise
    return Row(**row, compile_s=time.perf_counter() - start, fits=False, total_gib=needs[0],
               state_gib=state_gib,
               note=f"does not fit: needs {needs[0]:.1f} GiB of {needs[1]:.2f} GiB")
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes) / _GIB
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = compiled.as_text()
  payload = hlo_collectives.payload_bytes(hlo, chips)
  times = {"compute": cost["flops"] / chip.peak_bf16_flops,
           "hbm": cost.get("bytes accessed", 0.0) / chip.hbm_bytes_per_s,
           "ici": hlo_collectives.ici_bytes(hlo, chips) / chip.ici_bytes_per_s}
  bound = max(times, key=times.get)
  fits = total <= chip.hbm_gib
  return Row(**row, compile_s=compile_s, fits=fits, total_gib=total, state_gib=state_gib,
             argument_gib=mem.argument_size_in_bytes / _GIB,
             temp_gib=mem.temp_size_in_bytes / _GIB, tflop_per_chip=cost["flops"] / 1e12,
             hbm_gib_accessed=cost.get("bytes accessed", 0.0) / _GIB,
             collective_mib={k: v / 2 ** 20 for k, v in payload.items()},
             est_step_ms=1e3 * times[bound],
             est_views_per_s_chip=2 * global_batch / chips / times[bound], bound=bound,
             note="" if fits else f"does not fit: needs {total:.1f} GiB of {chip.hbm_gib} GiB")


def max_batch(config: ml_collections.ConfigDict, tpu: tpu_topology.Slice, devices: list, *,
              multiple: int = 8, num_train: int | None = None, on_row=lambda row: None,
              compile_fn=compile_step) -> Row | None:
  """The row of the largest global batch (a multiple of `multiple` per chip) that fits.

  Doubles from the config's batch until a compile does not fit, then bisects: about
  2 log2(batch) compiles. None if even `multiple` per chip does not fit.
  """
  step = multiple * len(devices)
  rows: dict[int, Row] = {}

  def fits(k: int) -> bool:
    if k not in rows:
      rows[k] = compile_fn(config, tpu, devices, k * step, num_train)
      on_row(rows[k])
    return rows[k].fits

  k = max(1, config.batch_size // step)
  if fits(k):  # double until a batch does not fit (activations grow, so one will not)
    lo, hi = k, 2 * k
    while fits(hi):
      lo, hi = hi, 2 * hi
  else:  # halve until one fits
    lo, hi = k // 2, k
    while lo and not fits(lo):
      lo, hi = lo // 2, lo
    if not lo:
      return None
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return rows[lo]


HEADER = ("| slice | chips | params | batch (per chip) | compile s | state GiB | temp GiB | "
          "total GiB / HBM | fits | TFLOP/step/chip | all-reduce MiB | all-gather MiB | "
          "reduce-scatter MiB | est. step ms | est. views/s/chip (bound) |")


def format_row(r: Row) -> str:
  """One Markdown table row (HEADER's columns); '-' where a failed compile has no value."""
  f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
  mib = r.collective_mib or {}
  fits = "fits" if r.fits else "**no**"
  return (f"| {r.topology} ({r.chip}) | {r.chips} | {r.params} | {r.global_batch} "
          f"({r.batch_per_chip:g}) | {r.compile_s:.0f} | {f(r.state_gib, '.2f')} | "
          f"{f(r.temp_gib, '.2f')} | {r.total_gib:.2f} / {r.capacity_gib:g} | {fits} | "
          f"{f(r.tflop_per_chip, '.2f')} | {f(mib.get('all-reduce'), '.1f')} | "
          f"{f(mib.get('all-gather'), '.1f')} | {f(mib.get('reduce-scatter'), '.1f')} | "
          f"{f(r.est_step_ms, '.1f')} | {f(r.est_views_per_s_chip, ',.0f')}"
          f"{'' if r.bound is None else f' ({r.bound})'} |")
