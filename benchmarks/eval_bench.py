"""Evaluation benchmark: today's replicated / single-device path against the sharded bank.

  python -m benchmarks.eval_bench [--n=65536] [--dim=2048] [--queries=2048] [--classes=100]
                                  [--old_n=0] [--probe_epochs=2]

On 8 simulated CPU devices, with a synthetic bank (N x F float32, random clusters) and M
queries, prints side by side, for the old path (bank replicated on every device, as the old
extraction kept it; kNN / probe / few-shot on one device with `evaluation.array_eval`) and the new
(row-sharded `Bank`, simlap/evaluation/): bank bytes per device, kNN time, linear-probe time,
few-shot time, and the ratio new / old. --old_n measures the old path at a smaller N when the
replicated bank does not fit (0 = the same N). Also prints the kNN FLOP count for ImageNet-1k
(50,000 queries x 1,281,167 x 2048) per chip and a time at peak for v5e-64 and v4-32.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from simlap.evaluation import array_eval as evaluators  # noqa: E402
from simlap.runtime import sharding  # noqa: E402
from simlap.evaluation import bank as bank_lib, knn as knn_lib, probes  # noqa: E402

_N = flags.DEFINE_integer("n", 65536, "Bank rows N.")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension F.")
_Q = flags.DEFINE_integer("queries", 2048, "Query rows M.")
_C = flags.DEFINE_integer("classes", 100, "Classes.")
_OLD_N = flags.DEFINE_integer("old_n", 0, "Bank rows for the old path (0: --n).")
_EPOCHS = flags.DEFINE_integer("probe_epochs", 2, "Linear-probe epochs (batch 4096).")
KS = (20,)
# Peak bf16 matmul rate per chip (public figures); HIGHEST f32 takes ~6 bf16 passes on a TPU.
CHIPS = {"v5e-64": (64, 197e12), "v4-32": (16, 275e12)}


def synthetic(n, dim, classes, seed):
  """Features around class centres (host numpy, float32) and labels, generated in slices."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(0).normal(size=(classes, dim)).astype(np.float32)
  labels = rng.integers(0, classes, n).astype(np.int32)
  feats = np.empty((n, dim), np.float32)
  for s in range(0, n, 8192):
    e = min(n, s + 8192)
    feats[s:e] = centres[labels[s:e]] + 2.0 * rng.standard_normal((e - s, dim), np.float32)
  return feats, labels


def as_bank(mesh, feats, labels):
  n = len(labels)
  rows = bank_lib.row_sharding(mesh)
  cols = {"features": feats, "labels": labels, "mask": np.ones(n, bool),
          "index": np.arange(n, dtype=np.int32)}
  return bank_lib.Bank({k: jax.device_put(v, rows) for k, v in cols.items()}, n, mesh)


def timed(fn, repeat=1):
  fn()  # compile
  t = time.perf_counter()
  for _ in range(repeat):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t) / repeat


def per_device_bytes(a: jax.Array) -> int:
  return max(s.data.nbytes for s in a.addressable_shards)


def main(argv):
  del argv
  mesh = sharding.make_mesh()
  n, dim, m, c = _N.value, _DIM.value, _Q.value, _C.value
  old_n = _OLD_N.value or n
  feats, labels = synthetic(n, dim, c, 1)
  qf, ql = synthetic(m, dim, c, 2)
  rows = {}

  # ---- new: row-sharded bank ----
  bank, queries = as_bank(mesh, feats, labels), as_bank(mesh, qf, ql)
  rows["bank bytes / device"] = [None, per_device_bytes(bank["features"])]
  rows["kNN s"] = [None, timed(lambda: knn_lib.knn_predict(bank, queries, num_classes=c,
                                                           ks=KS)["accuracy"])]
  probe_kw = dict(num_classes=c, epochs=_EPOCHS.value, batch_size=4096)
  rows["linear probe s"] = [None, timed(lambda: probes.linear_probe(bank, queries, **probe_kw))]
  few_kw = dict(num_classes=c, shots=(1, 5), seeds=(0,))
  rows["few-shot s"] = [None, timed(lambda: probes.few_shot_ridge(bank, queries, **few_kw))]
  bank = None  # free the sharded bank before the replicated one

  # ---- old: replicated bank, evaluators on one device ----
  feats, labels = feats[:old_n], labels[:old_n]
  replicated = jax.device_put(feats, sharding.replicated(mesh))
  rows["bank bytes / device"][0] = per_device_bytes(replicated)
  del replicated
  host = jnp.asarray(feats)
  rows["kNN s"][0] = timed(lambda: evaluators.knn_accuracy(host, labels, qf, ql, num_classes=c,
                                                           ks=KS))
  rows["linear probe s"][0] = timed(lambda: evaluators.linear_probe(host, labels, qf, ql,
                                                                    **probe_kw))
  rows["few-shot s"][0] = timed(lambda: evaluators.few_shot_ridge(host, labels, qf, ql, **few_kw))

  print(f"{jax.device_count()} CPU devices; bank N={n} (old path N={old_n}), F={dim}, "
        f"{m} queries, {c} classes; probe {_EPOCHS.value} epochs x batch 4096")
  print(f"{'':<22}{'old':>14}{'new':>14}{'new/old':>10}")
  for name, (old, new) in rows.items():
    scale = n / old_n if name != "few-shot s" else 1.0  # old measured at old_n: scale to N
    ratio = new / (old * scale)
    fmt = (lambda v: f"{v / 2**20:12.1f} MiB") if "bytes" in name else (lambda v: f"{v:14.2f}")
    print(f"{name:<22}{fmt(old)}{fmt(new)}{ratio:10.3f}")
  flop = 2 * 50_000 * 1_281_167 * 2048
  print(f"\nImageNet-1k kNN (50,000 x 1,281,167 x 2048): {flop:.3g} FLOP")
  for name, (chips, peak) in CHIPS.items():
    per_chip = flop / chips
    print(f"  {name}: {per_chip:.3g} FLOP/chip; at peak, HIGHEST (~6 bf16 passes) "
          f"{per_chip * 6 / peak * 1e3:.0f} ms, DEFAULT (1 pass) {per_chip / peak * 1e3:.0f} ms")


if __name__ == "__main__":
  app.run(main)
