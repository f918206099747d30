"""A fair multi-seed grid: train every method x seed, evaluate, aggregate, tabulate.

Every run is `apply_method(config, method)` with `config.seed = k`, so methods differ only in
the objective and gate (same backbone, budget, augmentation, probe). Runs go sequentially,
seed-major, into W/<method>/seed<k>. Resumable: a run whose summary.json says step ==
num_steps and whose eval/results.json is for that step (with the robustness and transfer
sections asked for) is not evaluated again; an interrupted run resumes from its checkpoint
(the trainer does that); a finished but unevaluated run is only evaluated. A run directory
trained with a different config is an error, never silently mixed in.
Writes W/comparison.json (records, aggregates: `grid.aggregate`) and W/comparison.md
(`grid.tables`); with eval_fractions also the per-step scores (`grid.steps`) and their curves.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from simlap import config_schema
from simlap.evaluation import cells
from simlap.grid import aggregate as agg
from simlap.grid import steps as steps_lib
from simlap.grid import tables
from simlap.runtime import workdir as workdir_lib

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


def run_status(rdir: str, *, robustness: bool = False, transfer: Sequence[str] = ()
               ) -> tuple[bool, bool]:
  """(trained, evaluated): summary.json at its last step; eval/results.json for that step,
  with a robustness section if `robustness` and a section for every target of `transfer`."""
  summary = workdir_lib.read_json(os.path.join(rdir, "summary.json"))
  trained = bool(summary) and summary.get("step") == summary.get("num_steps") and not summary.get(
      "preempted", False)
  results = workdir_lib.read_json(os.path.join(rdir, "eval", "results.json"))
  evaluated = trained and bool(results) and results.get("step") == summary.get("step")
  if evaluated:
    evaluated = (not robustness or results.get("robustness") is not None) and set(
        transfer) <= set(results.get("transfer") or {})
  return trained, evaluated


def _check_names(kind: str, names: Sequence[str]) -> None:
  for m in names:
    if m not in config_schema.METHODS:
      raise ValueError(f"unknown {kind} {m!r}; choose from {sorted(config_schema.METHODS)}")


def run_grid(config: ml_collections.ConfigDict, methods: Sequence[str], seeds: Sequence[int],
             workdir: str, *, command: str = "", eval_kwargs: dict[str, Any] | None = None,
             eval_fractions: Sequence[str] = (), final_eval_kwargs: dict[str, Any] | None = None,
             baselines: Sequence[str] = (), log=print) -> dict[str, Any]:
  """Trains, evaluates and tabulates the grid; returns the comparison dict (also written).

  Args:
    config: the base config (its method is overridden per run).
    methods: names from `config_schema.METHODS`.
    seeds: training seeds; each run gets `config.seed = k`.
    workdir: W; runs in W/<method>/seed<k>, the table in W/comparison.{md,json}.
    command: the command line to print in the table header.
    eval_kwargs: keyword arguments for `eval_workdir.evaluate_workdir`.
    final_eval_kwargs: more of them for the final step only ("robustness": {} or None,
      "transfer": target names).
    eval_fractions: points of training ("1/3", "0.5", ...) at which every run is also
      scored (`simlap.grid.steps`); the final step always is.
    baselines: methods every other method is judged against (`aggregate.win_loss`); those not
      among `methods` are skipped.
    log: progress printer (one line per event).

  Returns:
    {"command", "budget", "seeds", "methods": {method: {"description", "runs": [record per
     seed], "mean_std": {key: [mean, std]}}}, "runs_trained", "runs_evaluated", "seconds"};
    with a baseline among the methods also "win_loss"; with eval_fractions also "per_step":
    [{"step", "fraction", "epochs", "methods": {method: {"runs", "mean_std"}}}],
    "step_evaluations" (evaluated by this call) and "curves" (the PNG's name).
  """
  from simlap.evaluation import run as eval_workdir  # noqa: PLC0415 - heavy (TF, trainer): not for --help
  from simlap.training import loop as train  # noqa: PLC0415
  _check_names("method", methods)
  _check_names("baseline", baselines)
  final = final_eval_kwargs or {}
  wants = {"robustness": final.get("robustness") is not None,
           "transfer": list(final.get("transfer") or ())}
  workdir = workdir_lib.prepare(workdir)  # URLs (gs://) stay URLs: no os.path.abspath
  t_start = time.time()
  # Seed-major: an interrupted grid has every method at the first seeds, not half the methods.
  grid = [(m, int(s)) for s in seeds for m in methods]
  steps = steps_lib.grid_steps(config, eval_fractions)
  keep = [s for s in steps if s != max(steps, default=0)]
  for m, s in grid:  # fail before hours of training, not after
    _check_same_config(method_config(config, m, s, keep), run_dir(workdir, m, s))
    steps_lib.check_available(run_dir(workdir, m, s), steps)
  per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
  per_step: dict[int, dict[str, list[dict[str, Any]]]] = {
      step: {m: [] for m in methods} for step in steps}
  budget, trained_now, evaluated_now, step_evals = None, 0, 0, 0
  for i, (method, seed) in enumerate(grid, 1):
    rdir, cfg = run_dir(workdir, method, seed), method_config(config, method, seed, keep)
    tag = f"[{i}/{len(grid)}] {method} seed {seed}"
    trained, evaluated = run_status(rdir, **wants)
    t = time.time()
    if not trained:
      resumed = bool(workdir_lib.checkpoint_steps(os.path.join(rdir, "checkpoints")))
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
      res = eval_workdir.evaluate_workdir(rdir, **(eval_kwargs or {}), **final)
      evaluated_now += 1
      log(f"{tag}: evaluated in {time.time() - t:.0f} s")
    s = res["summary"]
    log(f"{tag}: kNN@20 {cells.pct(s['knn_20'])}  linear {cells.pct(s['linear'])}  5-shot "
        f"{cells.pct(s['few_shot_5'])}  eff. rank proj "
        f"{cells.num(s['effective_rank_projector'], 1)}")
    per_method[method].append(agg.run_record(res, seed))
    budget = budget or {**res["budget"], "dataset": res["dataset"]["name"],
                        "test_split": res["dataset"]["test_split"],
                        "protocol": res["protocol"]}
    if steps:
      by_step, n = steps_lib.evaluate_steps(
          rdir, steps, evaluate=eval_workdir.evaluate_workdir, eval_kwargs=eval_kwargs, log=log,
          tag=tag)
      step_evals += n
      for step, r in by_step.items():
        per_step[step][method].append(agg.run_record(r, seed))
      log(f"{tag}: kNN@20 by step " + ", ".join(
          f"{step}: {cells.pct(r['summary']['knn_20'])}" for step, r in by_step.items()))
  out = {
      "command": command, "budget": budget, "seeds": [int(s) for s in seeds],
      "methods": {m: {"description": config_schema.METHODS[m], **d}
                  for m, d in agg.by_method(per_method).items()},
      "runs_trained": trained_now, "runs_evaluated": evaluated_now,
      "seconds": round(time.time() - t_start, 1),
  }
  if any(b in methods for b in baselines):
    out["win_loss"] = agg.win_loss(out["methods"], baselines, budget["dataset"])
  if steps:
    out["per_step"] = [
        {"step": step, "fraction": str(fraction),
         "epochs": steps_lib.epochs(step, budget["batch_size"], budget["num_train"]),
         "methods": agg.by_method(per_step[step])}
        for step, fraction in steps.items()]
    out["step_evaluations"] = step_evals
    from simlap.evaluation import plots  # noqa: PLC0415 - matplotlib only when a figure is drawn
    plots.plot_budget_curves(out["per_step"], os.path.join(workdir, CURVES_PNG), CURVE_PANELS)
    out["curves"] = CURVES_PNG
  workdir_lib.write_json(os.path.join(workdir, "comparison.json"), out, indent=1)
  workdir_lib.write_text(os.path.join(workdir, "comparison.md"), tables.table_markdown(out))
  log(f"table: {os.path.join(workdir, 'comparison.md')}")
  return out

