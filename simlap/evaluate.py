"""CLI: evaluate a training workdir with the fixed frozen-feature protocols.

    python -m simlap.evaluate --workdir=runs/default [--step=S] [--out_dir=D] [--noplots]
        [--robustness [--corruptions=a,b] [--corruption_seed=0]] [--transfer=digits,...]

Flags only; `simlap.evaluation.run.evaluate_workdir` restores the checkpoint and writes
W/eval/{results.json, report.md, *.png}; this prints the summary line and those paths. With
--step=S the files go to W/eval/step_<S>/, so W/eval/ always holds the latest checkpoint's.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from simlap.runtime import distributed

_FLAGS = (
    ("workdir", flags.DEFINE_string, None, "Training workdir (config.json + checkpoints/)."),
    ("step", flags.DEFINE_integer, None, "Checkpoint step; default the latest."),
    ("out_dir", flags.DEFINE_string, None,
     "Output folder; default W/eval, or W/eval/step_<S> with --step."),
    ("plots", flags.DEFINE_bool, True, "Write the analysis PNGs."),
    ("linear_epochs", flags.DEFINE_integer, 30, "Linear-probe epochs (the fixed protocol)."),
    ("robustness", flags.DEFINE_bool, False,
     "Also score the ridge probe (fitted on clean train features) on the eval split under "
     "common corruptions at severities 1-5."),
    ("corruptions", flags.DEFINE_list, None,
     "With --robustness: the corruptions (default: ImageNet-C's 15; those unavailable are "
     "listed as missing)."),
    ("corruption_seed", flags.DEFINE_integer, 0, "Seed of the NumPy corruptions."),
    ("transfer", flags.DEFINE_list, [],
     "Transfer targets for kNN and few-shot ridge on their own splits, e.g. animal_mnist,digits."),
    ("transfer_data_dir", flags.DEFINE_string, None,
     "TFDS data dir of the transfer targets; default the run's config.dataset.data_dir."),
)


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
  """Defines the CLI flags on `flag_values` (default absl's global FLAGS); idempotent, so tests
  can pass a fresh `flags.FlagValues()`."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for name, define, default, help_text in _FLAGS:
    if name not in fv:
      define(name, default, help_text, flag_values=fv)
  distributed.define_flags(fv)


def summary_lines(res: dict[str, Any], out_dir: str | None = None) -> list[str]:
  """What the console shows: the headline numbers and where the full results are (`out_dir`,
  default W/eval)."""
  s = res["summary"]
  out_dir = out_dir or os.path.join(res["workdir"], "eval")
  lines = [f"step {res['step']} ({res['method']}): kNN@20 {100 * s['knn_20']:.2f}  linear "
           f"{100 * s['linear']:.2f}  5-shot {100 * s['few_shot_5']:.2f}  online probe "
           f"{100 * s['online_probe']:.2f}  eff. rank (proj) "
           f"{s['effective_rank_projector']:.1f}",
           f"results: {os.path.join(out_dir, 'results.json')}",
           f"report:  {os.path.join(out_dir, 'report.md')}"]
  rob = res.get("robustness")
  if rob:
    rel = rob["relative_corruption_error"]
    lines.append(f"robustness ({len(rob['accuracy'])} corruptions, {rob['source']}): clean "
                 f"{100 * rob['clean_accuracy']:.2f}  mCA {100 * rob['mca']:.2f}  relative "
                 f"error {'-' if rel is None else f'{rel:.3f}'}")
  for name, t in (res.get("transfer") or {}).items():
    five = (t["few_shot"].get("5shot") or {}).get("mean")
    lines.append(f"transfer {name}: kNN@20 {100 * t['knn_accuracy']:.2f}  5-shot "
                 f"{'-' if five is None else f'{100 * five:.2f}'}")
  plots = res["analysis"].get("plots") or []
  if plots:
    lines.append(f"plots:   {out_dir}/ ({len(plots)} PNGs: {', '.join(plots[:3])}, ...)")
  return lines


def main(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> dict[str, Any]:
  """Evaluates --workdir, prints the summary and the paths; returns the results dict."""
  import jax  # noqa: PLC0415 - after the environment below is set

  from simlap.runtime import console  # noqa: PLC0415
  from simlap.runtime import platforms  # noqa: PLC0415
  console.filter_console()
  platforms.skip_absent_tpu()
  fv = flags.FLAGS if flag_values is None else flag_values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not fv.workdir:
    raise app.UsageError("--workdir is required")
  # The same start-up as simlap.main: on one worker of a slice (or one SLURM task) this joins
  # the other processes; each then reads its slice of every split, and process 0 writes.
  multi_process = distributed.initialize(fv)
  try:
    with console.quiet_native_stderr():  # TensorFlow's import-time C++ notices
      from simlap.grid import steps as compare_steps  # noqa: PLC0415
      from simlap.evaluation import run as eval_workdir  # noqa: PLC0415
      from simlap.evaluation import robustness, transfer_eval  # noqa: PLC0415
    # Names are checked before the checkpoint is read: a typo costs no restore.
    targets = transfer_eval.check_names(fv.transfer)
    rob = None
    if fv.robustness:
      rob = {"corruptions": robustness.check_names(fv.corruptions), "seed": fv.corruption_seed}
    elif fv.corruptions:
      raise ValueError("--corruptions needs --robustness")
    out_dir = fv.out_dir
    if out_dir is None and fv.step is not None:
      out_dir = compare_steps.step_dir(fv.workdir, fv.step)
    res = eval_workdir.evaluate_workdir(fv.workdir, fv.step, plots=fv.plots,
                                        linear={"epochs": fv.linear_epochs}, out_dir=out_dir,
                                        robustness=rob, transfer=targets,
                                        transfer_data_dir=fv.transfer_data_dir)
  except BaseException as e:  # pylint: disable=broad-except
    if not multi_process:
      raise
    from simlap.runtime import errors  # noqa: PLC0415
    logging.error("process %d of %d failed; exiting now so the other processes stop too",
                  jax.process_index(), jax.process_count())
    distributed.exit_now(errors.report("evaluate", e))
  if jax.process_index() == 0:
    print("\n".join(summary_lines(res, out_dir)))
  return res


def _cli(argv: Sequence[str]) -> None:
  """`main` without its return value (app.run would print the results dict and exit 1), with
  errors as one line `simlap.evaluate: error: ...` (simlap/runtime/errors.py)."""
  from simlap.runtime import errors  # noqa: PLC0415
  try:
    main(argv)
  except (app.UsageError, SystemExit):
    raise
  except BaseException as e:  # pylint: disable=broad-except
    sys.exit(errors.report("evaluate", e))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TFDS_DISABLE_GCS", "1")
  define_flags()
  app.run(_cli)
