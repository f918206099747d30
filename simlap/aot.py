"""Will this config fit a TPU slice? Compile the real train step for it, on this CPU host.

    python -m simlap.aot --config=configs/in1k.py --topology=v5e:2x4 [--config.x=y ...]
    python -m simlap.aot --config=configs/in1k.py --topology=v4-8,v5e-16 --batch_sizes=1024,4096
    python -m simlap.aot --config=configs/in1k.py --topology=v5e-8 --max_batch

The same config, overrides, `make_trainer` and step as `simlap.main`, compiled by libtpu for
compile-only devices (`simlap.tpu.compile`). One Markdown table row per compile (docs/tpu.md,
"The columns"); an out-of-memory compile is a row too: "does not fit: needs X GiB of Y GiB".
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from simlap.runtime import console  # noqa: E402
from simlap.tpu import compile as tpu_compile  # noqa: E402  (sets the compile-only environment)
from simlap.tpu import topology as tpu_topology  # noqa: E402

_FLAGS = (
    ("topology", flags.DEFINE_list, None, "TPU slices, e.g. v5e:2x4 or v5e-8,v4-32."),
    ("batch_sizes", flags.DEFINE_list, None, "Global batches to compile (default: config's)."),
    ("max_batch", flags.DEFINE_bool, False, "Search the largest global batch that fits."),
    ("batch_multiple", flags.DEFINE_integer, 8, "--max_batch: per-chip batch granularity."),
    ("num_train", flags.DEFINE_integer, None, "Train-split size if not in "
     "simlap/data/split_sizes.py."),
    ("json", flags.DEFINE_string, None, "Also write the rows to this JSON file."),
    ("eval", flags.DEFINE_bool, False, "Also compile the evaluation programs (extraction "
     "batch, kNN block against the sharded bank) and print their per-chip HBM."),
    ("train", flags.DEFINE_bool, True, "Compile the train step (--notrain --eval: the "
     "evaluation programs only)."),
)


def define_flags(flag_values: flags.FlagValues | None = None,
                 sys_argv: list[str] | None = None) -> None:
  """Defines --config and the flags above on `flag_values` (default absl's global FLAGS).

  `sys_argv` (default sys.argv) is the command line the `--config.x=y` overrides are read
  from: ml_collections defines them from the config file named there.
  """
  fv = flags.FLAGS if flag_values is None else flag_values
  if "config" not in fv:
    config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                    flag_values=fv, lock_config=True, sys_argv=sys_argv)
  for name, define, default, help_text in _FLAGS:
    if name not in fv:
      define(name, default, help_text, flag_values=fv)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues | None = None) -> list[tpu_compile.Row]:
  """Compiles every (slice, batch) asked for, prints the table; returns the rows."""
  fv = flags.FLAGS if flag_values is None else flag_values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not fv.config or not fv.topology:
    raise app.UsageError("--config and --topology are required")
  if not (fv.train or fv.eval):
    raise app.UsageError("--notrain leaves nothing to compile: add --eval")
  console.filter_console()
  with console.quiet_native_stderr():  # TensorFlow's import-time C++ notices
    from simlap.training import loop as train  # noqa: F401, PLC0415
  config, rows = fv.config, []

  def show(row: tpu_compile.Row) -> None:
    rows.append(row)
    print(tpu_compile.format_row(row), flush=True)

  if fv.train:
    print(tpu_compile.HEADER + "\n|" + "---|" * tpu_compile.HEADER.count(" |"), flush=True)
  for name in fv.topology:
    tpu = tpu_topology.parse_slice(name)
    devices = tpu_topology.compile_devices(tpu)
    if fv.train and fv.max_batch:
      best = tpu_compile.max_batch(config, tpu, devices, multiple=fv.batch_multiple,
                       num_train=fv.num_train, on_row=show)
      print(f"{name}: largest global batch that fits: " + (
          f"{best.global_batch} ({best.batch_per_chip:g} per chip, {best.total_gib:.2f} of "
          f"{best.capacity_gib:g} GiB)" if best else
          f"none (not even {fv.batch_multiple} per chip)"), flush=True)
    batches = fv.batch_sizes or ([] if fv.max_batch else [config.batch_size])
    for batch in batches if fv.train else []:
      show(tpu_compile.compile_step(config, tpu, devices, int(batch), fv.num_train))
    if fv.eval:  # simlap/tpu/compile_eval.py
      from simlap.training import loop as train  # noqa: PLC0415
      from simlap.tpu import compile_eval as aot_eval  # noqa: PLC0415
      info = tpu_compile.dataset_info(config, fv.num_train)
      for r in aot_eval.fit_check(config, tpu, devices, info, train.make_trainer):
        print(aot_eval.format_row(r), flush=True)
  for row in rows:
    if not row.fits:
      print(f"{row.topology} at batch {row.global_batch}: {row.note}")
  if fv.json:
    with open(fv.json, "w", encoding="utf-8") as f:
      json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
  return rows


def _run(argv: Sequence[str]) -> None:
  try:
    main(argv)
  except ValueError as e:  # a bad slice, config or batch: one line, no traceback
    sys.exit(f"simlap.aot: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(_run)
