"""A process's first checkpoint save: Orbax's default jax.Array handler against simlap's
(replica-parallel only from 1 MiB per replica; docs/reliability.md, "First save").

Each row is a fresh process on 8 simulated CPU devices that builds the TrainState of the test
suite's tiny model (tests/test_train.py) on the embedded Fashion-MNIST, then saves it twice,
awaiting each write, and counts the XLA compilations during each save.

  python -m benchmarks.first_save_bench
"""
from __future__ import annotations
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_CHILD = flags.DEFINE_string("child", None, "Internal: 'handler,data_dir' to measure.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure(handler: str, data_dir: str) -> dict:
  import jax  # noqa: PLC0415
  from jax import monitoring  # noqa: PLC0415
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from test_train import tiny_config  # noqa: PLC0415
  from simlap.data import datasets  # noqa: PLC0415
  from simlap.runtime import checkpointing  # noqa: PLC0415
  from simlap.runtime import sharding  # noqa: PLC0415
  from simlap.training import loop as train  # noqa: PLC0415
  if handler == "orbax_default":
    checkpointing._register_array_handler = lambda: None  # noqa: SLF001
  config = tiny_config(data_dir)
  trainer = train.make_trainer(config, sharding.make_mesh(config.mesh),
                               datasets.get_dataset_info(config))
  state = trainer.init_fn()
  compiles = [0]
  monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.__setitem__(0, compiles[0] + (
          event == "/jax/core/compile/backend_compile_duration")))
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpointing.Checkpointer(tmp, every_steps=1, keep=3)
    out = {"handler": handler, "arrays": len(jax.tree.leaves(state))}
    for step in (1, 2):
      before, t = compiles[0], time.perf_counter()
      ckpt.save(step, state, {"step": step}, force=True)
      ckpt.check_saves(wait=True)
      out[f"save{step}_s"], out[f"save{step}_compiles"] = (time.perf_counter() - t,
                                                           compiles[0] - before)
    ckpt.close()
  return out


def main(argv):
  del argv
  if _CHILD.value:
    handler, data_dir = _CHILD.value.split(",")
    print("RESULT " + json.dumps(_measure(handler, data_dir)))
    return
  from simlap.data import fashion_mnist  # noqa: PLC0415
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", TFDS_DISABLE_GCS="1")
  with tempfile.TemporaryDirectory() as data_dir:
    fashion_mnist.prepare(data_dir)
    rows = []
    for handler in ("orbax_default", "simlap"):
      out = subprocess.run([sys.executable, "-m", "benchmarks.first_save_bench",
                            f"--child={handler},{data_dir}"], capture_output=True, text=True,
                           check=True, cwd=REPO, env=env)
      rows.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
  base = rows[0]["save1_s"]
  print(f"\n{rows[0]['arrays']} arrays, 8 CPU devices; load average {os.getloadavg()}")
  print(f"{'handler':<14} {'first save s':>12} {'compiles':>8} {'second save s':>13} "
        f"{'first / default':>15}")
  for r in rows:
    print(f"{r['handler']:<14} {r['save1_s']:>12.2f} {r['save1_compiles']:>8} "
          f"{r['save2_s']:>13.2f} {r['save1_s'] / base:>15.2f}")


if __name__ == "__main__":
  app.run(main)
