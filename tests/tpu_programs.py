"""The TPU programs CI guards, and the one command that refreshes their committed baseline.

Each case is the real train step of a config (the same `simlap.tpu.compile.compile_step` that
`python -m simlap.aot` runs), compiled for a v5e slice with libtpu's compile-only devices. Its
per-chip temporaries, bytes accessed and FLOPs are kept in `tests/golden/tpu_programs.json`;
tests/test_tpu_program.py fails when any of them grows by more than `TOLERANCE`.

Refresh the baseline only on purpose, and say why in the commit that does it:

    .venv/bin/python tests/tpu_programs.py --refresh

`--measure --set KEY=VALUE` prints what a config change does to each case against the
baseline. `--plant` shows that the guard fails on a real regression: it compiles each case with
the CPU max pool planted in the TPU program (what the custom-VJP pool once did) and prints what
the guard reports against the baseline; it exits 1 if the guard would let the plant through.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(REPO, "tests", "golden", "tpu_programs.json")
TOLERANCE = 0.03  # growth allowed in any metric before the guard fails
METRICS = ("temp_bytes", "bytes_accessed", "flops")

# name -> (config file argument, overrides, slice, global batch). The smallest ResNet-50 step
# that still has what a CPU workaround can break on a TPU: the 7x7 stem and its 3x3 max pool,
# strided and 1x1 convs, bf16 compute, the gate and the SimLAP loss over the global batch, LARS.
CASES: dict[str, tuple[str, dict, str, int]] = {
    "in1k_resnet50_v5e2x2_b16": (
        "configs/in1k.py", {"dataset.image_size": 128}, "v5e:2x2", 16),
}


def _load_config(arg: str, overrides: dict):
  """`configs/NAME.py[:VARIANT]` with dotted overrides, as `--config` and `--config.x=y` give."""
  import importlib  # noqa: PLC0415
  path, _, variant = arg.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config(variant or None)
  config.update_from_flattened_dict(overrides)
  return config


def measure(name: str) -> dict[str, float]:
  """Compiles case `name`; its per-chip metrics (bytes, FLOPs) and compile seconds."""
  from simlap.tpu import compile as tpu_compile  # noqa: PLC0415  (compile-only env before JAX)
  from simlap.tpu import topology as tpu_topology  # noqa: PLC0415
  arg, overrides, topology, batch = CASES[name]
  tpu = tpu_topology.parse_slice(topology)
  row = tpu_compile.compile_step(_load_config(arg, overrides), tpu,
                                 tpu_topology.compile_devices(tpu), batch)
  if not row.fits:
    raise AssertionError(f"{name}: {row.note}")
  gib = 2.0 ** 30
  return {"temp_bytes": row.temp_gib * gib, "bytes_accessed": row.hbm_gib_accessed * gib,
          "flops": row.tflop_per_chip * 1e12, "compile_s": row.compile_s}


def regressions(measured: dict[str, float], baseline: dict[str, float],
                tolerance: float = TOLERANCE) -> list[str]:
  """One line per metric that grew by more than `tolerance` over its baseline."""
  out = []
  for key in METRICS:
    if measured[key] > baseline[key] * (1 + tolerance):
      out.append(f"{key} grew {measured[key] / baseline[key] - 1:+.1%}: "
                 f"{measured[key]:,.0f} against the baseline's {baseline[key]:,.0f}")
  return out


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True,
                        check=True).stdout.strip()


def _versions() -> dict[str, str]:
  import importlib.metadata as md  # noqa: PLC0415
  return {"jax": md.version("jax"), "libtpu": md.version("libtpu"),
          "measured_at": _git("rev-parse", "--short", "HEAD")}


def plant() -> int:
  """The guard against a planted regression: `pooling.max_pool` (the CPU form) in the TPU
  program, whatever conv_impl says. 0 if the guard flags every case, else 1."""
  from simlap.models import pooling  # noqa: PLC0415
  from simlap.models import resnet  # noqa: PLC0415
  with open(BASELINE, encoding="utf-8") as f:
    baseline = json.load(f)["cases"]
  resnet._xla_max_pool = pooling.max_pool  # noqa: SLF001
  missed = []
  for name in CASES:
    problems = regressions(measure(name), baseline[name])
    print(f"{name} with the CPU max pool: " + ("; ".join(problems) or "nothing flagged"))
    if not any(p.startswith(("temp_bytes", "bytes_accessed")) for p in problems):
      missed.append(name)
  print("the guard lets the plant through in " + ", ".join(missed) if missed
        else "the guard fails on the plant in every case")
  return 1 if missed else 0


def measure_against_baseline(overrides: dict[str, str]) -> int:
  """Prints each case's metrics, compiled with `overrides` added, as ratios to the baseline."""
  with open(BASELINE, encoding="utf-8") as f:
    baseline = json.load(f)["cases"]
  for name, (arg, own, topology, batch) in list(CASES.items()):
    CASES[name] = (arg, {**own, **overrides}, topology, batch)
    m = measure(name)
    print(f"{name} with {overrides}: " + ", ".join(
        f"{k} {m[k]:,.0f} ({m[k] / baseline[name][k] - 1:+.2%})" for k in METRICS), flush=True)
  return 0


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--refresh", action="store_true",
                      help="recompile every case and rewrite the committed baseline")
  parser.add_argument("--plant", action="store_true",
                      help="compile every case with the CPU max pool planted; print the guard's "
                           "verdict against the baseline")
  parser.add_argument("--measure", action="store_true",
                      help="compile every case (with the --set overrides) and print its metrics "
                           "against the baseline; writes nothing")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="with --measure: a config override, e.g. augment.colour_stage=host")
  args = parser.parse_args(argv)
  if args.plant:
    return plant()
  if args.measure:
    return measure_against_baseline(dict(kv.split("=", 1) for kv in args.set))
  if not args.refresh:
    parser.error("nothing to do: --refresh rewrites tests/golden/tpu_programs.json, --plant "
                 "checks that the guard fails on the planted CPU max pool")
  # The baseline names the commit it was measured at: that commit must be the code measured.
  changed = [line for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
             if not line.endswith(os.path.relpath(BASELINE, REPO))]
  if changed:
    parser.error("commit the change first (the baseline records the commit it measured): "
                 + ", ".join(line[3:] for line in changed))
  cases = {}
  for name, (arg, overrides, topology, batch) in CASES.items():
    m = measure(name)
    cases[name] = {"config": arg, "overrides": overrides, "topology": topology,
                   "global_batch": batch, **{k: m[k] for k in METRICS}}
    print(f"{name}: " + ", ".join(f"{k} {m[k]:,.0f}" for k in METRICS)
          + f" ({m['compile_s']:.0f} s to compile)", flush=True)
  with open(BASELINE, "w", encoding="utf-8") as f:
    json.dump({**_versions(), "tolerance": TOLERANCE, "cases": cases}, f, indent=1)
    f.write("\n")
  print(f"wrote {os.path.relpath(BASELINE, REPO)}: commit it with the reason for the change")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  sys.exit(main(sys.argv[1:]))
