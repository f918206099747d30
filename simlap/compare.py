"""A fair multi-seed comparison in one command: train a method x seed grid, evaluate, tabulate.

    python -m simlap.compare --config=configs/default.py --methods=ce,simclr,supcon,simlap \\
        --seeds=0,1,2 --workdir=runs/compare [--config.model.backbone=resnet_tiny ...]

The flags go to one library call, `simlap.grid.run.run_grid` (what is trained, skipped and
resumed, and why methods differ only in the objective and gate, is described there). Runs go
into W/<method>/seed<k>; W/comparison.md has the table (mean ± std over seeds, with the budget
and the exact command in its header), W/comparison.json every run's headline numbers and the
aggregates (`simlap.grid.aggregate`).

`--robustness` and `--transfer=a,b` also score every run's final step under the common
corruptions and on those transfer targets (as `simlap.evaluate`); the table gains a robustness
and a transfer table. `--baselines=ce,supcon` judges every other method against each of those
(wins / ties / losses per dataset, by more than the larger std over seeds).

`--eval_fractions=1/3,2/3,1` also scores every run at those points of its training from its own
checkpoints (`simlap.grid.steps`): comparison.json gains "per_step" (the same aggregates at
each step), comparison.md a table per step, and W/comparison_curves.png plots kNN, linear probe,
5-shot and the projector's effective rank against epochs (mean ± std band over seeds).
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from simlap import config_schema
from simlap.grid import run as grid_run


def define_flags(flag_values=None, sys_argv: list[str] | None = None) -> None:
  """Defines compare's flags (--config, --methods, --seeds, --workdir, ...) on `flag_values`
  (default: absl FLAGS).

  Not done at import (simlap.main defines --config / --workdir too). `sys_argv` is where
  config_flags reads the --config.* overrides from (default sys.argv).
  """
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  fv = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file("config", None, "Base experiment config file.",
                                  flag_values=fv, lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_list("methods", "ce,simclr,supcon,simlap_identical_open,simlap_open,simlap",
                    f"Methods, from {sorted(config_schema.METHODS)}.", flag_values=fv)
  flags.DEFINE_list("seeds", "0,1,2", "Training seeds.", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Grid root: runs in W/<method>/seed<k>.", flag_values=fv)
  flags.DEFINE_integer("linear_epochs", 30, "Linear-probe epochs.", flag_values=fv)
  flags.DEFINE_bool("plots", True, "Write each run's analysis PNGs.", flag_values=fv)
  flags.DEFINE_list("eval_fractions", [], "Also score every run at these fractions of its "
                    "training (e.g. 1/3,2/3,1), from its checkpoints.", flag_values=fv)
  flags.DEFINE_bool("robustness", False, "Also score every run's final step under the common "
                    "corruptions (as simlap.evaluate --robustness).", flag_values=fv)
  flags.DEFINE_list("transfer", [], "Also score every run's final step on these transfer "
                    "targets (as simlap.evaluate --transfer).", flag_values=fv)
  flags.DEFINE_list("baselines", "ce,supcon", "Judge every other method against these (wins / "
                    "ties / losses per dataset); those not in --methods are skipped.",
                    flag_values=fv)


def main(argv: Sequence[str], flag_values=None, sys_argv: list[str] | None = None
         ) -> dict[str, Any]:
  """Runs the grid from the flags; returns `grid.run.run_grid`'s dict."""
  import jax  # noqa: PLC0415
  from absl import app, flags  # noqa: PLC0415

  from simlap.runtime import console  # noqa: PLC0415
  from simlap.runtime import platforms  # noqa: PLC0415
  console.filter_console()
  platforms.skip_absent_tpu()
  with console.quiet_native_stderr():  # TensorFlow's import-time C++ notices
    from simlap.evaluation import run as eval_workdir  # noqa: F401, PLC0415 - loaded once, quietly
    from simlap.training import loop as train  # noqa: F401, PLC0415 - loaded once, quietly
  fv = flags.FLAGS if flag_values is None else flag_values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if fv.config is None or not fv.workdir:
    raise app.UsageError("--config and --workdir are required")
  command = "python -m simlap.compare " + shlex.join((sys_argv or sys.argv)[1:])
  if not jax.config.jax_compilation_cache_dir:
    # Seeds and methods share programs (feature extraction, probes): compile each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(fv.workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from simlap.evaluation import transfer_eval  # noqa: PLC0415
  eval_kwargs = {"plots": fv.plots, "linear": {"epochs": fv.linear_epochs}}
  final_kwargs = {"transfer": transfer_eval.check_names(fv.transfer),
                  "robustness": {} if fv.robustness else None}
  return grid_run.run_grid(
      fv.config, fv.methods, [int(s) for s in fv.seeds], fv.workdir, command=command,
      eval_kwargs=eval_kwargs, final_eval_kwargs=final_kwargs, eval_fractions=fv.eval_fractions,
      baselines=fv.baselines, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TFDS_DISABLE_GCS", "1")
  from absl import app  # noqa: PLC0415
  define_flags()
  app.run(lambda argv: main(argv) and None)  # exit 0, not the comparison dict (see evaluate)
