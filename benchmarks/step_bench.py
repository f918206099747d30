"""Train-step benchmark: compile time, median step time, views/s and MFU on the current backend.

  python -m benchmarks.step_bench --config=configs/default.py [--batch=256] [--dtype=bf16|f32]
      [--steps=20] [--warmup=3] [--profile_ops=30] [--config.model.backbone=resnet50 ...]

The step is the real jitted, donated train step of training/loop.py on a device-resident batch of
random images (the input pipeline has its own benchmark, input_bench.py), so the number is the
model + loss + optimizer cost alone. Views/s counts both augmented views of every image.
MFU = XLA's FLOP count of the compiled step / step time / the device's peak (bf16 dense peak
for bf16, fp32 otherwise; listed below for common accelerators, none for CPU).
`--profile_ops=N` then profiles 3 more steps and prints the N costliest JAX operations and the
time per XLA op kind (benchmarks/op_profile.py).
"""
from __future__ import annotations
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import jax  # noqa: E402

from benchmarks import op_profile  # noqa: E402
from simlap.runtime import platforms  # noqa: E402
from simlap.runtime import sharding  # noqa: E402
from simlap.training import loop as train  # noqa: E402
from simlap.data import datasets  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (images); 0 = the config's.")
_DTYPE = flags.DEFINE_enum("dtype", "", ["", "bf16", "f32"], "Compute dtype override.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PROFILE_OPS = flags.DEFINE_integer("profile_ops", 0, "Also print the N costliest ops (0: no).")

# Dense peak TFLOP/s per chip: (bf16, fp32). From the vendors' data sheets.
PEAK_TFLOPS = {
    "H100": (989.0, 67.0), "H200": (989.0, 67.0), "A100": (312.0, 19.5),
    "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0), "TPU v5p": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),
}


def peak_flops(device, bf16: bool) -> float | None:
  for name, (p16, p32) in PEAK_TFLOPS.items():
    if name.lower() in device.device_kind.lower():
      return (p16 if bf16 else p32) * 1e12
  return None


def main(argv):
  del argv
  platforms.skip_absent_tpu()
  config = _CONFIG.value
  if _BATCH.value:
    config.batch_size = _BATCH.value
  if _DTYPE.value:
    config.model.dtype = {"bf16": "bfloat16", "f32": "float32"}[_DTYPE.value]
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh)
  d = config.dataset
  # Shapes only: the benchmark needs no dataset on disk.
  info = datasets.info_from_config(config, num_train=max(config.batch_size * 1000, 1))
  trainer = train.make_trainer(config, mesh, info)
  state = trainer.init_fn()
  shape = (config.batch_size, d.image_size, d.image_size, d.channels)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  batch = jax.device_put({
      "view1": jax.random.uniform(k1, shape), "view2": jax.random.uniform(k2, shape),
      "label": jax.random.randint(k3, (config.batch_size,), 0, d.num_classes)},
      sharding.batch_sharding(mesh))

  t0 = time.perf_counter()
  compiled = trainer.step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  memory = compiled.memory_analysis()

  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  images = config.batch_size / step_s
  dev = jax.devices()[0]
  bf16 = config.model.dtype == "bfloat16"
  peak = peak_flops(dev, bf16)
  # cost_analysis counts the whole SPMD program once per device: flops are per device.
  mfu = (flops / step_s / peak) if (peak and flops) else None

  print(f"# step_bench {time.strftime('%Y-%m-%d')} {platform.node()} | {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}), {os.cpu_count()} host cores | "
        f"`{' '.join(sys.argv)}`")
  print("| backbone | image | batch | dtype | compile s | step ms (median) | images/s | "
        "views/s | views/s/device | GFLOP/step/device | temp MiB | MFU |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  print(f"| {config.model.backbone} | {d.image_size}x{d.image_size}x{d.channels} | "
        f"{config.batch_size} | {config.model.dtype} | {compile_s:.1f} | {step_s * 1e3:.1f} | "
        f"{images:.0f} | {2 * images:.0f} | {2 * images / jax.device_count():.0f} | "
        f"{flops / 1e9:.1f} | {memory.temp_size_in_bytes / 2**20:.0f} | "
        f"{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a (no peak for this device)'} |")
  if _PROFILE_OPS.value:
    op_profile.print_op_tables(lambda s: compiled(s, batch)[0], state, compiled.as_text(),
                               _PROFILE_OPS.value)


if __name__ == "__main__":
  app.run(main)
