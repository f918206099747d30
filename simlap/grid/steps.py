"""Scoring every run of a `simlap.compare` grid at several points of its training.

    python -m simlap.compare ... --eval_fractions=1/3,2/3,1

A fraction f of a run of N steps is step round(f * N) (halves up). Each run is scored at those
steps from its own checkpoints, so nothing is retrained: the final step is the run's usual
W/<method>/seed<k>/eval/results.json, an earlier step S goes to eval/step_<S>/ (results.json,
report.md), which is where `python -m simlap.evaluate --workdir=... --step=S` writes too. Runs
that compare trains keep those checkpoints (`config.keep_checkpoint_steps`); a run trained
without them must have them anyway (e.g. checkpoint_every = N/3 with keep_checkpoints = 3), else
compare stops before training or evaluating anything, naming the steps that run has. A step
already evaluated is read back, not evaluated again.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from simlap.runtime import workdir as workdir_lib


def parse_fractions(values: Sequence[str]) -> list[Fraction]:
  """Sorted distinct fractions in (0, 1] from strings such as "1/3", "0.5" or "1"."""
  out = set()
  for value in values:
    try:
      f = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"--eval_fractions: {value!r} is not a fraction such as 1/3 or 0.5"
                       ) from None
    if not 0 < f <= 1:
      raise ValueError(f"--eval_fractions: {value!r} is not in (0, 1]")
    out.add(f)
  return sorted(out)


def fraction_steps(fractions: Sequence[Fraction], num_steps: int) -> dict[int, Fraction]:
  """{step: fraction}, steps ascending: step = round(f * num_steps), halves up, at least 1.
  Fractions that round to the same step keep the smallest of them."""
  steps: dict[int, Fraction] = {}
  for f in sorted(fractions):
    steps.setdefault(max(1, math.floor(f * num_steps + Fraction(1, 2))), f)
  return dict(sorted(steps.items()))


def grid_steps(config: Any, fractions: Sequence[str]) -> dict[int, Fraction]:
  """{step: fraction} at which a grid on `config` is scored: `fractions` of its total steps,
  plus the final step; {} without fractions (only the final step, as always)."""
  if not fractions:
    return {}
  # Training code (TF, the data) only when steps are asked for: `--help` stays light.
  from simlap.training import optim  # noqa: PLC0415
  from simlap.data import datasets  # noqa: PLC0415
  num_steps = optim.total_steps(config, datasets.get_dataset_info(config).num_train)
  steps = fraction_steps(parse_fractions(fractions), num_steps)
  steps.setdefault(num_steps, Fraction(1))
  return steps


def epochs(step: int, batch_size: int, num_train: int) -> float:
  """Epochs after `step` steps, as the trainer counts them (`optim.steps_per_epoch`), so a
  3-epoch run's last step is 3.0; rounded to 4 decimals for the tables."""
  from simlap.training import optim  # noqa: PLC0415 - optax: not for --help
  return round(step / optim.steps_per_epoch(batch_size, num_train), 4)


def step_dir(rdir: str, step: int) -> str:
  """Where step `step` of run `rdir` is evaluated to: rdir/eval/step_<step>."""
  return os.path.join(rdir, "eval", f"step_{step}")


def step_results(rdir: str, step: int) -> dict[str, Any] | None:
  """The results dict of `step` of run `rdir`: eval/step_<step>/results.json, or
  eval/results.json when that one is for `step`; None when neither is."""
  for path in (os.path.join(step_dir(rdir, step), "results.json"),
               os.path.join(rdir, "eval", "results.json")):
    res = workdir_lib.read_json(path)
    if res and res.get("step") == step:
      return res
  return None


def check_available(rdir: str, steps: dict[int, Fraction]) -> None:
  """Raises ValueError if training of `rdir` has passed a step of `steps` that has neither
  results nor a checkpoint (it could only be had by retraining), naming the steps it has."""
  have = workdir_lib.checkpoint_steps(os.path.join(rdir, "checkpoints"))
  missing = [s for s in steps if s <= max(have, default=0) and s not in have
             and step_results(rdir, s) is None]
  if missing:
    wanted = ", ".join(f"{s} ({steps[s]} of training)" for s in missing)
    raise ValueError(
        f"{rdir} has no checkpoint and no results at step {wanted}; its checkpoints are at "
        f"steps {have}. Choose --eval_fractions that land on those, or delete the run to "
        "retrain it (runs that compare trains keep the checkpoints of --eval_fractions).")


def evaluate_steps(rdir: str, steps: dict[int, Fraction], *, evaluate: Callable[..., dict],
                   eval_kwargs: dict[str, Any] | None = None,
                   log: Callable[[str], None] = print, tag: str = ""
                   ) -> tuple[dict[int, dict[str, Any]], int]:
  """({step: results dict}, how many were evaluated now) for every step of `steps`.

  Reuses results already written (`step_results`); evaluates the others with
  `evaluate(rdir, step, out_dir=step_dir(rdir, step), **eval_kwargs)`
  (`eval_workdir.evaluate_workdir`).
  """
  check_available(rdir, steps)
  out, evaluated = {}, 0
  for step, fraction in steps.items():
    res = step_results(rdir, step)
    if res is None:
      have = workdir_lib.checkpoint_steps(os.path.join(rdir, "checkpoints"))
      if step not in have:
        raise ValueError(f"{rdir}: no checkpoint at step {step} ({fraction} of training); its "
                         f"checkpoints are at steps {have}")
      res = evaluate(rdir, step, out_dir=step_dir(rdir, step), **(eval_kwargs or {}))
      evaluated += 1
      log(f"{tag}: evaluated step {step} ({fraction} of training)")
    out[step] = res
  return out, evaluated
