"""CLI: a PyTorch checkpoint -> a simlap workdir that `simlap.evaluate` scores and
`--config.init_from` starts from.

    python -m simlap.convert --source=resnet18.safetensors --workdir=runs/from_timm \
        --config=configs/cifar10.py [--config.model.output_stride=8 ...] [--skip=fc.]

Flags only; the work happens in `simlap.interop.convert.convert_to_workdir` (sources, formats,
what the workdir holds). A MoCo-v3 ViT checkpoint needs `--skip=head.,predictor.,momentum_encoder.`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

# Before TensorFlow starts (simlap.training.loop imports it): quiet its C++ logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from simlap.interop import convert as convert_lib  # noqa: E402
from simlap.interop import torch_names  # noqa: E402
from simlap.runtime import platforms  # noqa: E402

_FLAGS = (
    ("source", flags.DEFINE_string, None, ".safetensors / .npz / .pth checkpoint."),
    ("workdir", flags.DEFINE_string, None, "Output workdir (config.json + checkpoints/0)."),
    ("skip", flags.DEFINE_list, [], "Source name prefixes to drop on purpose, e.g. fc."),
)


def define_flags(flag_values: flags.FlagValues | None = None,
                 sys_argv: list[str] | None = None) -> None:
  """Defines the CLI flags on `flag_values` (default absl's FLAGS); idempotent, so tests can
  pass a fresh `flags.FlagValues()` and other CLIs' flags never collide. `sys_argv` is where
  config_flags reads the --config.* overrides from (default sys.argv)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  if "config" not in fv:
    config_flags.DEFINE_config_file("config", None, "Config of the simlap model to fill.",
                                    flag_values=fv, sys_argv=sys_argv)
  if "format" not in fv:
    flags.DEFINE_enum("format", "auto", ["auto", *torch_names.FORMATS],
                      "Source naming; auto: 'simlap' if names start with 'backbone.'.",
                      flag_values=fv)
  for name, define, default, help_text in _FLAGS:
    if name not in fv:
      define(name, default, help_text, flag_values=fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> dict[str, Any]:
  """Converts --source into --workdir for --config; returns the checkpoint meta."""
  fv = flags.FLAGS if flag_values is None else flag_values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (fv.source and fv.workdir and fv.config):
    raise app.UsageError("--source, --workdir and --config are required")
  platforms.skip_absent_tpu()
  meta = convert_lib.convert_to_workdir(fv.source, fv.workdir, fv.config, fmt=fv.format,
                                        skip=fv.skip)
  print(f"wrote {fv.workdir}: {', '.join(meta['converted'])} from {fv.source}; score it with "
        f"`python -m simlap.evaluate --workdir={fv.workdir}`, or train from it with "
        f"`--config.init_from={fv.workdir}`")
  return meta


def _cli(argv: Sequence[str]) -> None:
  from simlap.runtime import errors  # noqa: PLC0415
  try:
    main(argv)
  except (app.UsageError, SystemExit):
    raise
  except BaseException as e:  # pylint: disable=broad-except - one line (runtime/errors.py)
    sys.exit(errors.report("convert", e))


if __name__ == "__main__":
  define_flags()
  app.run(_cli)
