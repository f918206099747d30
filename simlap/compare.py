"""A fair multi-seed comparison in one command: train a method x seed grid, evaluate, tabulate.

    python -m simlap.compare --config=configs/default.py --methods=ce,simclr,supcon,simlap \\
        --seeds=0,1,2 --workdir=runs/compare [--config.model.backbone=resnet_tiny ...]

Every run is `apply_method(config, method)` with `config.seed = k`, so methods differ only in
the objective and gate (same backbone, budget, augmentation, probe). Runs go sequentially,
seed-major, into W/<method>/seed<k>. Resumable: a run whose summary.json says step ==
num_steps and whose eval/results.json is for that step is skipped; an interrupted run resumes
from its checkpoint (the trainer does that); a finished but unevaluated run is only evaluated.
A run directory trained with a different config is an error, never silently mixed in.

Output: W/comparison.md (one table, mean ± std over seeds, with the budget and the exact
command in its header) and W/comparison.json (per-run headline numbers and the aggregates).

`--eval_fractions=1/3,2/3,1` also scores every run at those points of its training from its own
checkpoints (`simlap.grid.steps`): comparison.json gains "per_step" (the same aggregates at
each step), comparison.md a table per step, and W/comparison_curves.png plots kNN, linear probe,
5-shot and the projector's effective rank against epochs (mean ± std band over seeds).
"""
from __future__ import annotations

import copy
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from simlap.grid import steps as compare_steps
from simlap import config_schema
from simlap.runtime import workdir as workdir_lib

# (column title, summary key, kind): "pct" shows mean ± std in %, "numN" plain, N decimals.
COLUMNS = (
    ("kNN@20", "knn_20", "pct"),
    ("linear", "linear", "pct"),
    ("5-shot", "few_shot_5", "pct"),
    ("online probe", "online_probe", "pct"),
    ("eff. rank proj", "effective_rank_projector", "num1"),
    ("eff. rank backbone", "effective_rank_backbone", "num1"),
    ("group rec. gate", "group_recovery_gate", "num2"),
    ("group rec. class-mean", "group_recovery_class_mean_projector", "num2"),
)
CURVES_PNG = "comparison_curves.png"
CURVE_PANELS = (("kNN@20 (%)", "knn_20", 100.0), ("linear probe (%)", "linear", 100.0),
                ("5-shot (%)", "few_shot_5", 100.0),
                ("effective rank, projector", "effective_rank_projector", 1.0))


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed{seed}")


def method_config(config: ml_collections.ConfigDict, method: str, seed: int,
                  keep_steps: Sequence[int] = ()) -> ml_collections.ConfigDict:
  """A copy of `config` switched to `method` and `seed` (and keeping the checkpoints of
  `keep_steps`, which changes nothing trained); nothing else changes."""
  c = copy.deepcopy(config)
  with c.unlocked():
    config_schema.apply_method(c, method)
    c.seed = int(seed)
    if keep_steps:
      c.keep_checkpoint_steps = tuple(int(s) for s in keep_steps)
  return c


def _check_same_config(config: ml_collections.ConfigDict, rdir: str) -> None:
  """Raises if `rdir` was trained with another config (a grid must not mix budgets)."""
  saved = workdir_lib.saved_config(rdir)
  if saved is None:
    return
  diff = workdir_lib.resume_blockers(saved, config)  # same rule as resuming a run
  if diff:
    raise ValueError(f"{rdir} was trained with a different config ({', '.join(diff[:8])}); "
                     "use another --workdir, or delete that run to retrain it")


def run_status(rdir: str) -> tuple[bool, bool]:
  """(trained, evaluated): summary.json at its last step; eval/results.json for that step."""
  summary = workdir_lib.read_json(os.path.join(rdir, "summary.json"))
  trained = bool(summary) and summary.get("step") == summary.get("num_steps") and not summary.get(
      "preempted", False)
  results = workdir_lib.read_json(os.path.join(rdir, "eval", "results.json"))
  evaluated = trained and bool(results) and results.get("step") == summary.get("step")
  return trained, evaluated


def run_grid(config: ml_collections.ConfigDict, methods: Sequence[str], seeds: Sequence[int],
             workdir: str, *, command: str = "", eval_kwargs: dict[str, Any] | None = None,
             eval_fractions: Sequence[str] = (), final_eval_kwargs: dict[str, Any] | None = None,
             log=print) -> dict[str, Any]:
  """Trains, evaluates and tabulates the grid; returns the comparison dict (also written).

  Args:
    config: the base config (its method is overridden per run).
    methods: names from `config_schema.METHODS`.
    seeds: training seeds; each run gets `config.seed = k`.
    workdir: W; runs in W/<method>/seed<k>, the table in W/comparison.{md,json}.
    command: the command line to print in the table header.
    eval_kwargs: keyword arguments for `eval_workdir.evaluate_workdir`.
    final_eval_kwargs: more of them for the final step only (robustness, transfer).
    eval_fractions: points of training ("1/3", "0.5", ...) at which every run is also
      scored (`simlap.grid.steps`); the final step always is.
    log: progress printer (one line per event).

  Returns:
    {"command", "budget", "methods": {method: {"runs": [summary per seed], "mean_std":
     {key: [mean, std]}}}, "runs_trained", "runs_evaluated", "seconds"}; with eval_fractions
    also "per_step": [{"step", "fraction", "epochs", "methods": {method: {"runs",
    "mean_std"}}}], "step_evaluations" (evaluated by this call) and "curves" (the PNG's name).
  """
  from simlap.evaluation import run as eval_workdir  # noqa: PLC0415 - heavy (TF, trainer): not for --help
  from simlap.training import loop as train  # noqa: PLC0415
  for m in methods:
    if m not in config_schema.METHODS:
      raise ValueError(f"unknown method {m!r}; choose from {sorted(config_schema.METHODS)}")
  workdir = workdir_lib.prepare(workdir)  # URLs (gs://) stay URLs: no os.path.abspath
  t_start = time.time()
  # Seed-major: an interrupted grid has every method at the first seeds, not half the methods.
  grid = [(m, int(s)) for s in seeds for m in methods]
  steps = compare_steps.grid_steps(config, eval_fractions)
  keep = [s for s in steps if s != max(steps, default=0)]
  for m, s in grid:  # fail before hours of training, not after
    _check_same_config(method_config(config, m, s, keep), run_dir(workdir, m, s))
    compare_steps.check_available(run_dir(workdir, m, s), steps)
  per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
  per_step: dict[int, dict[str, list[dict[str, Any]]]] = {
      step: {m: [] for m in methods} for step in steps}
  budget, trained_now, evaluated_now, step_evals = None, 0, 0, 0
  for i, (method, seed) in enumerate(grid, 1):
    rdir, cfg = run_dir(workdir, method, seed), method_config(config, method, seed, keep)
    tag = f"[{i}/{len(grid)}] {method} seed {seed}"
    trained, evaluated = run_status(rdir)
    t = time.time()
    if not trained:
      ckpts = os.path.join(rdir, "checkpoints")
      resumed = any(n.isdigit() for n in workdir_lib.listdir(ckpts))
      log(f"{tag}: training{' (resuming)' if resumed else ''} -> {rdir}")
      summary = train.train_and_evaluate(cfg, rdir)
      trained_now += 1
      if summary.get("preempted"):
        raise RuntimeError(f"{tag}: stopped at step {summary['step']} (SIGTERM); re-run the "
                           "same command to resume")
      log(f"{tag}: trained {summary['step']} steps in {time.time() - t:.0f} s")
    if evaluated:
      res = workdir_lib.read_json(os.path.join(rdir, "eval", "results.json"))
      log(f"{tag}: done earlier, skipped")
    else:
      t = time.time()
      res = eval_workdir.evaluate_workdir(rdir, **(eval_kwargs or {}),
                                          **(final_eval_kwargs or {}))
      evaluated_now += 1
      log(f"{tag}: evaluated in {time.time() - t:.0f} s")
    s = res["summary"]
    log(f"{tag}: kNN@20 {_fmt(s['knn_20'])}  linear {_fmt(s['linear'])}  5-shot "
        f"{_fmt(s['few_shot_5'])}  eff. rank proj {_fmt(s['effective_rank_projector'], 1, 1.0)}")
    per_method[method].append({"seed": seed, "step": res["step"], **s})
    budget = budget or {**res["budget"], "dataset": res["dataset"]["name"],
                        "test_split": res["dataset"]["test_split"],
                        "protocol": res["protocol"]}
    if steps:
      by_step, n = compare_steps.evaluate_steps(
          rdir, steps, evaluate=eval_workdir.evaluate_workdir, eval_kwargs=eval_kwargs, log=log,
          tag=tag)
      step_evals += n
      for step, r in by_step.items():
        per_step[step][method].append({"seed": seed, "step": step, **r["summary"]})
      log(f"{tag}: kNN@20 by step " + ", ".join(
          f"{step}: {_fmt(r['summary']['knn_20'])}" for step, r in by_step.items()))
  out = {
      "command": command, "budget": budget, "seeds": [int(s) for s in seeds],
      "methods": {m: {"description": config_schema.METHODS[m], "runs": runs,
                      "mean_std": aggregate(runs)} for m, runs in per_method.items()},
      "runs_trained": trained_now, "runs_evaluated": evaluated_now,
      "seconds": round(time.time() - t_start, 1),
  }
  if steps:
    out["per_step"] = [
        {"step": step, "fraction": str(fraction),
         "epochs": compare_steps.epochs(step, budget["batch_size"], budget["num_train"]),
         "methods": {m: {"runs": runs, "mean_std": aggregate(runs)}
                     for m, runs in per_step[step].items()}}
        for step, fraction in steps.items()]
    out["step_evaluations"] = step_evals
    from simlap.evaluation import plots  # noqa: PLC0415 - matplotlib only when a figure is drawn
    plots.plot_budget_curves(out["per_step"], os.path.join(workdir, CURVES_PNG), CURVE_PANELS)
    out["curves"] = CURVES_PNG
  workdir_lib.write_json(os.path.join(workdir, "comparison.json"), out, indent=1)
  workdir_lib.write_text(os.path.join(workdir, "comparison.md"), table_markdown(out))
  log(f"table: {os.path.join(workdir, 'comparison.md')}")
  return out


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, list[float | None]]:
  """{key: [mean, sample std]} over the runs that have the key (None where none has it)."""
  from simlap.evaluation import run as eval_workdir  # noqa: PLC0415
  from simlap.evaluation import array_eval as evaluators  # noqa: PLC0415
  out = {}
  for key in eval_workdir.SUMMARY_KEYS:
    vals = [r[key] for r in runs if r.get(key) is not None]
    out[key] = list(evaluators.mean_std(vals)) if vals else [None, None]
  return out


def _fmt(x, digits: int = 2, scale: float = 100.0) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return f"{x * scale:.{digits}f}"


def _cell(mean_std: Sequence[float | None], kind: str) -> str:
  mean, std = mean_std
  if mean is None:
    return "–"
  if kind == "pct":
    return f"{100 * mean:.2f} ± {100 * std:.2f}"
  d = int(kind[3:])
  return f"{mean:.{d}f} ± {std:.{d}f}"


def table_markdown(out: dict[str, Any]) -> str:
  """The comparison table with its budget and command (see module docstring)."""
  b = out["budget"] or {}
  p = b.get("protocol", {})
  lin = p.get("linear_probe", {})
  head = [
      "# simlap comparison", "",
      f"Command: `{out['command']}`", "",
      f"Budget (identical for every run): {b.get('dataset')} {b.get('train_split')} "
      f"({b.get('num_train')} images), {b.get('num_steps')} steps × batch {b.get('batch_size')}"
      f", backbone {b.get('backbone')}, D = {b.get('projector_dim')}, image {b.get('image_size')}"
      f", {b.get('optimizer')} lr {b.get('lr')}; seeds {out['seeds']}; evaluated on "
      f"{b.get('test_split')}.", "",
      f"Protocols: kNN cosine T = {p.get('knn', {}).get('temperature')} on frozen backbone "
      f"features (bank = train split); linear probe {lin.get('optimizer')}, {lin.get('epochs')} "
      f"epochs, lr {lin.get('lr')}, bs {lin.get('batch_size')}, {lin.get('features')}; 5-shot "
      f"ridge λ = {p.get('few_shot', {}).get('lam')}, mean over 3 draws per run; online probe = "
      "the linear head trained alongside the model; effective rank = exp(entropy of the "
      "covariance spectrum) on test features; group recovery = top-k neighbour precision of "
      "class similarities against the known groups (gate: cosine of class gates g(y, y); "
      "class-mean: cosine of projector class means, the no-gate baseline).", "",
      "Cells: mean ± std over seeds (sample std); accuracies in %.", ""]
  titles = ["method", "runs"] + [c[0] for c in COLUMNS]
  rows = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
  for m, d in out["methods"].items():
    cells = [m, str(len(d["runs"]))] + [_cell(d["mean_std"][key], kind)
                                        for _, key, kind in COLUMNS]
    rows.append("| " + " | ".join(cells) + " |")
  chance = [r.get("group_recovery_chance") for d in out["methods"].values() for r in d["runs"]]
  chance = [c for c in chance if c is not None]
  tail = ["", f"Group-recovery chance level: {chance[0]:.3f}." if chance else ""]
  if out.get("per_step"):
    tail += compare_steps.steps_markdown(out["per_step"], _cell, out.get("curves"))
  tail += [f"{out['runs_trained']} runs trained and {out['runs_evaluated']} evaluated by this "
           f"invocation in {out['seconds']:.0f} s.", ""]
  return "\n".join(head + rows + tail)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def define_flags(flag_values=None, sys_argv: list[str] | None = None) -> None:
  """Defines --config, --methods, --seeds, --workdir on `flag_values` (default: absl FLAGS).

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


def main(argv: Sequence[str], flag_values=None, sys_argv: list[str] | None = None
         ) -> dict[str, Any]:
  """Runs the grid from the flags; returns `run_grid`'s dict."""
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
  return run_grid(fv.config, fv.methods, [int(s) for s in fv.seeds], fv.workdir,
                  command=command, eval_kwargs=eval_kwargs, final_eval_kwargs=final_kwargs,
                  eval_fractions=fv.eval_fractions, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TFDS_DISABLE_GCS", "1")
  from absl import app  # noqa: PLC0415
  define_flags()
  app.run(lambda argv: main(argv) and None)  # exit 0, not the comparison dict (see evaluate)
