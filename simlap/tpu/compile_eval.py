"""The evaluation programs in the fit check (`simlap.aot --eval`): will an evaluation fit?

Compiles, for compile-only devices of a slice, exactly the programs an online evaluation runs:
one feature-extraction batch at `eval_batch_size` (`bank.features_fn`) against the train state
laid out as in training, and one kNN query block (`knn._block_fn`) against row-sharded train and
query banks of the config's split sizes. Reports per-chip HBM (arguments + outputs - aliases +
temporaries, from the compiler's memory analysis) and FLOPs, beside the train step's row.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from simlap.runtime import sharding
from simlap.data import split_sizes
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import knn as knn_lib

_GIB = 2.0 ** 30
# The query bank of a dataset split_sizes does not know: a CIFAR-sized test split.
_UNKNOWN_EVAL_SIZE = 10_000


@dataclasses.dataclass
class EvalRow:
  """One evaluation program on one slice; sizes per chip, in GiB."""
  program: str  # "extract" or "knn"
  topology: str
  chips: int
  shape: str  # what was compiled, in words
  bank_gib: float  # the train bank's features per chip (knn), 0 for extract
  argument_gib: float  # the compiler's: what the program's inputs hold on one chip
  total_gib: float
  temp_gib: float
  tflop_per_chip: float
  compile_s: float
  fits: bool
  capacity_gib: float


def _memory(compiled) -> tuple[float, float, float]:
  """(total, arguments, temporaries) GiB per chip."""
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  return total / _GIB, mem.argument_size_in_bytes / _GIB, mem.temp_size_in_bytes / _GIB


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def _padded(n: int, batch: int) -> int:
  return math.ceil(n / batch) * batch


def compile_eval(config, trainer, mesh, *, topology: str, capacity_gib: float, num_train: int,
                 num_eval: int, query_block: int = 1024) -> list[EvalRow]:
  """Compiles the extraction batch and one kNN block of `config` for `mesh`'s devices.

  Args:
    config, trainer, mesh: the run's config, its `Trainer` on `mesh` (compile-only devices).
    topology, capacity_gib: the slice's name and per-chip HBM, for the rows.
    num_train, num_eval: split sizes of the train and query banks.
    query_block: queries per kNN block, as `knn.knn_predict` takes them.

  Returns:
    One `EvalRow` per program ("extract", "knn").
  """
  rows_sharding = bank_lib.row_sharding(mesh)
  chips = mesh.devices.size
  d, e = config.dataset, config.eval_batch_size
  state = trainer.abstract_state
  images = jax.ShapeDtypeStruct((e, d.image_size, d.image_size, d.channels), jnp.float32,
                                sharding=sharding.batch_sharding(mesh))
  out = []
  fn = bank_lib.features_fn(trainer.model, mesh, False)
  start = time.perf_counter()
  compiled = fn.lower(state.params, state.batch_stats, images).compile()
  total, args, temp = _memory(compiled)
  out.append(EvalRow("extract", topology, chips, f"batch {e}", 0.0, args, total, temp,
                     _flops(compiled) / 1e12, time.perf_counter() - start,
                     total <= capacity_gib, capacity_gib))

  feat_dim = jax.eval_shape(fn, state.params, state.batch_stats, images)["features"].shape[-1]
  n_pad, m_pad = _padded(num_train, e), _padded(num_eval, e)

  def col(n, shape, dtype):
    return jax.ShapeDtypeStruct((n, *shape), dtype, sharding=rows_sharding)

  def bank(n):
    return [col(n, (feat_dim,), jnp.float32), col(n, (), jnp.int32), col(n, (), jnp.bool_),
            col(n, (), jnp.int32)]

  q_local = max(1, min(query_block // chips, m_pad // chips))
  knn = knn_lib._block_fn(mesh, q_local, config.dataset.num_classes,  # noqa: SLF001
                          (int(config.knn_k),), float(config.knn_temperature),
                          knn_lib.default_precision())
  block = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
  start = time.perf_counter()
  compiled = knn.lower(*bank(n_pad), *bank(m_pad), block).compile()
  total, args, temp = _memory(compiled)
  out.append(EvalRow("knn", topology, chips,
                     f"{q_local * chips} queries vs {n_pad} x {feat_dim}",
                     n_pad * feat_dim * 4 / chips / _GIB, args, total, temp,
                     _flops(compiled) / 1e12, time.perf_counter() - start,
                     total <= capacity_gib, capacity_gib))
  return out


def fit_check(config, tpu, devices, info, make_trainer) -> list[EvalRow]:
  """`compile_eval` for slice `tpu` (simlap.tpu.topology.Slice) with its compile-only
  `devices`; `make_trainer` is `simlap.training.loop.make_trainer`, passed in by `simlap.aot`
  so that this module imports no training module."""
  config = copy.deepcopy(config)
  config.model.conv_impl = "xla"  # the TPU's program, not the CPU host's
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  trainer = make_trainer(config, mesh, info)
  return compile_eval(config, trainer, mesh, topology=tpu.name, capacity_gib=tpu.chip.hbm_gib,
                      num_train=info.num_train,
                      num_eval=eval_size(config.dataset.name))


def eval_size(name: str) -> int:
  """The eval split's size from simlap/data/split_sizes.py (10,000 for an unknown dataset)."""
  sizes = split_sizes.SIZES.get(name)
  return sizes.eval if sizes else _UNKNOWN_EVAL_SIZE


def format_row(r: EvalRow) -> str:
  verdict = "fits" if r.fits else f"does not fit ({r.capacity_gib:g} GiB)"
  bank = f", bank {r.bank_gib * 1024:.0f} MiB/chip" if r.program == "knn" else ""
  return (f"eval {r.program:<7} {r.topology}: {r.shape}: {r.total_gib:.2f} GiB/chip "
          f"(temp {r.temp_gib:.2f}{bank}), {r.tflop_per_chip:.3g} TFLOP/chip, "
          f"compiled in {r.compile_s:.0f} s: {verdict}")
