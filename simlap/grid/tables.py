"""comparison.md: a grid's comparison dict (`grid.run.run_grid`) as Markdown tables.

Every table's columns are listed here as (title, record key, cell kind), and every cell is
written by `simlap.evaluation.cells` (the format of each run's report.md too): "mean ± std"
over seeds, accuracies in %, "–" where no run has the number. The robustness, transfer and
against-the-baselines tables appear only when some run has those numbers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from simlap.evaluation import cells
from simlap.grid import aggregate as agg

# The main table: accuracy, the representation's rank, and whether the gate finds the groups.
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
# The per-step tables: accuracy, and whether the representation collapses as training goes on.
STEP_COLUMNS = (
    ("kNN@20", "knn_20", "pct"), ("linear", "linear", "pct"), ("5-shot", "few_shot_5", "pct"),
    ("eff. rank proj", "effective_rank_projector", "num1"),
    ("eff. rank backbone", "effective_rank_backbone", "num1"),
    ("AUROC backbone", "auroc_backbone", "num3"), ("AUROC proj", "auroc_projector", "num3"),
    ("AUROC gated proj", "auroc_projector_gated", "num3"),
    ("group rec. gate", "group_recovery_gate", "num2"),
)
ROBUSTNESS_COLUMNS = (
    ("clean", "robustness_clean", "pct"), ("mCA", "robustness_mca", "pct"),
    ("rel. corruption error", "robustness_relative_error", "num3"),
)
# Per transfer target: (title, metric of `agg.transfer_key`, kind).
TRANSFER_COLUMNS = (("kNN@20", "knn_20", "pct"), ("5-shot", "few_shot_5", "pct"))


def cell(mean_std: Sequence[float | None], kind: str) -> str:
  """One aggregate [mean, std] as a cell."""
  return cells.mean_std(mean_std[0], mean_std[1], kind)


def _row(values: Sequence[str]) -> str:
  return "| " + " | ".join(values) + " |"


def _table(methods: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]
           ) -> list[str]:
  """One row per method: name, number of runs, then `columns` of its aggregates."""
  titles = ["method", "runs"] + [c[0] for c in columns]
  lines = [_row(titles), "|" + "---|" * len(titles)]
  for m, d in methods.items():
    lines.append(_row([m, str(len(d["runs"]))] + [
        cell(d["mean_std"].get(key, (None, None)), kind) for _, key, kind in columns]))
  return lines


def _has(methods: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> bool:
  return any(r.get(k) is not None for d in methods.values() for r in d["runs"] for k in keys)


def robustness_markdown(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """The robustness table; [] when no run was scored under corruptions."""
  if not _has(methods, [c[1] for c in ROBUSTNESS_COLUMNS]):
    return []
  return ["", "## Robustness: ridge probe under common corruptions", "",
          "Per run: a ridge probe on frozen backbone features fitted on the clean train split, "
          "scored on the test split clean and under every corruption and severity; mCA = mean "
          "accuracy over those, relative corruption error = (1 − mCA) / (1 − clean). Each "
          "run's eval/report.md has every corruption at every severity.", "",
          *_table(methods, ROBUSTNESS_COLUMNS), *_per_corruption_markdown(methods)]


def _per_corruption_markdown(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Accuracy per corruption (mean over severities) and per severity (mean over corruptions):
  where a method's mCA comes from. [] for runs whose records have neither (older grids)."""
  keys = list(dict.fromkeys(k for d in methods.values() for k in d["mean_std"]))
  names, levels = agg.corruption_names(keys), agg.severities(keys)
  if not names:
    return []
  return ["", "Per corruption, mean over severities:", "",
          *_table(methods, [(n, agg.corruption_key(n), "pct") for n in names]),
          "", "Per severity, mean over corruptions:", "",
          *_table(methods, [(str(s), agg.severity_key(s), "pct") for s in levels])]


def transfer_markdown(methods: Mapping[str, Mapping[str, Any]],
                      protocol: Mapping[str, Any] | None = None) -> list[str]:
  """The transfer table (columns per target); [] when no run was scored on a target."""
  keys = list(dict.fromkeys(k for d in methods.values() for r in d["runs"] for k in r))
  targets = agg.transfer_targets(keys)
  if not targets:
    return []
  p = protocol or {}
  knn, few = p.get("knn", {}), p.get("few_shot", {})
  columns = [(f"{t} {title}", agg.transfer_key(t, metric), kind)
             for t in targets for title, metric, kind in TRANSFER_COLUMNS]
  return ["", "## Transfer: frozen backbone on other datasets", "",
          f"Per target, on its own train/test split, images converted to the run's input: kNN "
          f"k = {knn.get('k', 20)}, T = {knn.get('temperature', 0.07)} against the target's "
          f"train split; few-shot ridge λ = {few.get('lam', '?')}, each run's mean over its "
          "draws. "
          "comparison.json has every shot count.", "",
          *_table(methods, columns)]


def win_loss_markdown(win_loss: Mapping[str, Any] | None) -> list[str]:
  """One table per baseline: wins / ties / losses of every method per dataset."""
  if not win_loss or not win_loss["vs"]:
    return []
  datasets = win_loss["datasets"]
  lines = ["", "## Against the baselines", "",
           "Per dataset: wins / ties / losses over the metrics "
           + "; ".join(f"{d}: {', '.join(m)}" for d, m in datasets.items())
           + f". A win is a mean above the baseline's by more than the larger of the two stds "
           f"over seeds, a loss one below by more; \"–\": fewer than {win_loss['min_seeds']} "
           "seeds on a side."]
  for b, per_method in win_loss["vs"].items():
    titles = [f"vs {b}", "seeds"] + list(datasets)
    lines += ["", _row(titles), "|" + "---|" * len(titles)]
    for m, d in per_method.items():
      lines.append(_row([m, " vs ".join(map(str, d["seeds"]))] + [
          cells.DASH if d[name]["undecided"] == len(d[name]["metrics"]) else
          " / ".join(str(d[name][o]) for o in agg.OUTCOMES) for name in datasets]))
  return lines


def steps_markdown(per_step: Sequence[Mapping[str, Any]], curves: str | None = None
                   ) -> list[str]:
  """One table of `STEP_COLUMNS` (rows: method x step) for comparison.json's "per_step"."""
  titles = ["method", "step", "fraction", "epochs", "runs"] + [c[0] for c in STEP_COLUMNS]
  lines = ["", "## At several points of training", "",
           "Every run scored from its own checkpoint at each step (same protocols); cells are "
           "mean ± std over seeds." + (f" Curves: `{curves}`." if curves else ""), "",
           _row(titles), "|" + "---|" * len(titles)]
  methods = list(dict.fromkeys(m for e in per_step for m in e["methods"]))
  for m in methods:
    for e in per_step:
      d = e["methods"].get(m)
      if d is None:
        continue
      lead = [m, str(e["step"]), e["fraction"], f"{e['epochs']:g}", str(len(d["runs"]))]
      lines.append(_row(lead + [cell(d["mean_std"][key], kind)
                                for _, key, kind in STEP_COLUMNS]))
  return lines


def table_markdown(out: Mapping[str, Any]) -> str:
  """comparison.md: the budget and command, the main table, then the optional sections."""
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
  methods = out["methods"]
  chance = [r.get("group_recovery_chance") for d in methods.values() for r in d["runs"]]
  chance = [c for c in chance if c is not None]
  tail = ["", f"Group-recovery chance level: {chance[0]:.3f}." if chance else ""]
  tail += robustness_markdown(methods)
  tail += transfer_markdown(methods, p.get("transfer"))
  tail += win_loss_markdown(out.get("win_loss"))
  if out.get("per_step"):
    tail += steps_markdown(out["per_step"], out.get("curves"))
  tail += ["", f"{out['runs_trained']} runs trained and {out['runs_evaluated']} evaluated by this "
           f"invocation in {out['seconds']:.0f} s.", ""]
  return "\n".join(head + _table(methods, COLUMNS) + tail)
