"""A grid's numbers: one flat record per run, mean ± std over seeds, wins against baselines.

A run's record (comparison.json "runs") is {"seed", "step", **results["summary"]} plus, when
its results have a "transfer" section, per target `transfer_<target>_knn_<k>` and
`transfer_<target>_few_shot_<s>` (that run's mean over the few-shot draws), and when they have a
"robustness" section, per corruption `corruption_<name>` (its mean over the severities) and per
severity `severity_<s>` (the mean over the corruptions at that severity). Aggregates are
[mean, sample std (ddof 1; 0.0 for one seed)] over the seeds that have the key, [None, None]
where none has it: runs evaluated without robustness or transfer still aggregate, as dashes.

Against a baseline, per dataset and metric (all higher-is-better), a method wins when its mean
is above the baseline's by more than the larger of the two stds, loses when below by more than
that, ties otherwise; with fewer than 2 seeds on either side there is no std to judge by, and
the outcome is None (undecided), never a win.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

OUTCOMES = ("win", "tie", "loss")
MIN_SEEDS = 2  # a sample std needs two values
# The metrics each dataset is judged on: in-domain accuracy, under corruptions, on transfer.
IN_DOMAIN_METRICS = ("knn_20", "linear", "few_shot_5")
CORRUPTED_METRICS = {"mCA": "robustness_mca"}
TRANSFER_METRICS = ("knn_20", "few_shot_5")
_TRANSFER_KEY = re.compile(r"transfer_(.+)_(knn_[0-9]+|few_shot_[0-9]+)")
_CORRUPTION_KEY = re.compile(r"corruption_(.+)")
_SEVERITY_KEY = re.compile(r"severity_([0-9]+)")


def transfer_key(target: str, metric: str) -> str:
  """`transfer_key("digits", "few_shot_5") == "transfer_digits_few_shot_5"`."""
  return f"transfer_{target}_{metric}"


def split_transfer_key(key: str) -> tuple[str, str] | None:
  """(target, metric) of a `transfer_key`; None for any other key."""
  m = _TRANSFER_KEY.fullmatch(key)
  return (m.group(1), m.group(2)) if m else None


def corruption_key(name: str) -> str:
  """`corruption_key("fog") == "corruption_fog"`: a corruption's accuracy over severities."""
  return f"corruption_{name}"


def severity_key(severity: int) -> str:
  """`severity_key(3) == "severity_3"`: the accuracy over corruptions at one severity."""
  return f"severity_{severity}"


def corruption_names(keys: Sequence[str]) -> list[str]:
  """The corruptions named by the `corruption_key`s among `keys`, in order."""
  return [m.group(1) for k in keys if (m := _CORRUPTION_KEY.fullmatch(k))]


def severities(keys: Sequence[str]) -> list[int]:
  """The severities of the `severity_key`s among `keys`, in order."""
  return [int(m.group(1)) for k in keys if (m := _SEVERITY_KEY.fullmatch(k))]


def _robustness_record(robustness: Mapping[str, Any]) -> dict[str, float]:
  """Per corruption its mean over severities, per severity the mean over corruptions, from
  results["robustness"]["accuracy"] ({name: {"1": acc, ..., "5": acc, "mean": acc}})."""
  acc = robustness.get("accuracy") or {}
  rec = {corruption_key(name): a["mean"] for name, a in acc.items()}
  for s in (robustness.get("severities") or ()) if acc else ():
    rec[severity_key(int(s))] = sum(a[str(s)] for a in acc.values()) / len(acc)
  return rec


def run_record(res: Mapping[str, Any], seed: int) -> dict[str, Any]:
  """The flat record of one results dict (see module docstring)."""
  rec = {"seed": int(seed), "step": res["step"], **res["summary"]}
  protocol = (res.get("protocol") or {}).get("transfer") or {}
  k = int(protocol.get("knn", {}).get("k", 20))
  for target, t in (res.get("transfer") or {}).items():
    rec[transfer_key(target, f"knn_{k}")] = t.get("knn_accuracy")
    for name, few in (t.get("few_shot") or {}).items():  # "5shot": {"mean", "std", ...}
      rec[transfer_key(target, f"few_shot_{name.removesuffix('shot')}")] = (
          None if few is None else few.get("mean"))
  if res.get("robustness"):
    rec.update(_robustness_record(res["robustness"]))
  return rec


def record_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """`SUMMARY_KEYS`, then the transfer, corruption and severity keys of `runs`, each kind in
  order of first appearance."""
  from simlap.evaluation import run as eval_workdir  # noqa: PLC0415 - heavy (TF): not for --help
  keys = list(dict.fromkeys(k for r in runs for k in r))
  return list(eval_workdir.SUMMARY_KEYS) + [
      k for pattern in (_TRANSFER_KEY, _CORRUPTION_KEY, _SEVERITY_KEY) for k in keys
      if pattern.fullmatch(k)]


def aggregate(runs: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
              ) -> dict[str, list[float | None]]:
  """{key: [mean, sample std]} over the runs that have the key ([None, None] where none has
  it), for `keys` (default `record_keys(runs)`)."""
  from simlap.evaluation import array_eval  # noqa: PLC0415 - JAX: not for --help
  out = {}
  for key in record_keys(runs) if keys is None else keys:
    vals = [r[key] for r in runs if r.get(key) is not None]
    out[key] = list(array_eval.mean_std(vals)) if vals else [None, None]
  return out


def by_method(per_method: Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> dict[str, dict[str, Any]]:
  """{method: {"runs", "mean_std"}} of {method: [record]}, every method over the same keys
  (a method without transfer gets [None, None] for the others' targets)."""
  keys = record_keys([r for runs in per_method.values() for r in runs])
  return {m: {"runs": list(runs), "mean_std": aggregate(runs, keys)}
          for m, runs in per_method.items()}


def transfer_targets(keys: Sequence[str]) -> list[str]:
  """The targets named by the transfer keys among `keys`, in order."""
  return list(dict.fromkeys(t[0] for k in keys if (t := split_transfer_key(k))))


def judged(dataset: str, methods: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
  """{dataset: {metric: record key}} a grid is judged on: `dataset` (in-domain), "<dataset>
  corrupted" (robustness) and each transfer target, each with the metrics some method of
  `methods` (comparison.json's) has a mean of."""
  have = [k for d in methods.values() for k, ms in d["mean_std"].items() if ms[0] is not None]
  out = {dataset: {m: m for m in IN_DOMAIN_METRICS if m in have},
         f"{dataset} corrupted": {m: k for m, k in CORRUPTED_METRICS.items() if k in have}}
  for target in transfer_targets(have):
    out[target] = {m: transfer_key(target, m) for m in TRANSFER_METRICS
                   if transfer_key(target, m) in have}
  return {d: metrics for d, metrics in out.items() if metrics}


def outcome(method: Sequence[float | None], baseline: Sequence[float | None], n_method: int,
            n_baseline: int) -> str | None:
  """"win", "tie" or "loss" of [mean, std] `method` against `baseline` (module docstring);
  None when either has no mean or fewer than `MIN_SEEDS` seeds."""
  (m, m_std), (b, b_std) = method, baseline
  if m is None or b is None or min(n_method, n_baseline) < MIN_SEEDS:
    return None
  margin = max(m_std, b_std)
  return "win" if m - b > margin else "loss" if b - m > margin else "tie"


def win_loss(methods: Mapping[str, Mapping[str, Any]], baselines: Sequence[str], dataset: str
             ) -> dict[str, Any]:
  """Every method against every baseline, per dataset (`judged`).

  Args:
    methods: comparison.json's "methods": {method: {"runs": [record], "mean_std": {key: [m, s]}}}.
    baselines: names among `methods` (others are skipped).
    dataset: the in-domain dataset's name.

  Returns:
    {"rule", "min_seeds", "datasets": {dataset: {metric: key}}, "vs": {baseline: {method:
     {"seeds": [n method, n baseline], dataset: {"win": n, "tie": n, "loss": n, "undecided": n,
     "metrics": {metric: outcome}}}}}}.
  """
  datasets = judged(dataset, methods)

  def seeds(d, key):
    return sum(r.get(key) is not None for r in d["runs"])

  vs = {}
  for b in (b for b in baselines if b in methods):
    base = methods[b]
    vs[b] = {}
    for m, d in methods.items():
      if m == b:
        continue
      vs[b][m] = {"seeds": [len(d["runs"]), len(base["runs"])]}
      for name, metrics in datasets.items():
        res = {metric: outcome(d["mean_std"].get(key, [None, None]),
                               base["mean_std"].get(key, [None, None]), seeds(d, key),
                               seeds(base, key)) for metric, key in metrics.items()}
        counts = {o: sum(v == o for v in res.values()) for o in OUTCOMES}
        vs[b][m][name] = {**counts, "undecided": sum(v is None for v in res.values()),
                          "metrics": res}
  return {"rule": "win: mean above the baseline's by more than the larger std over seeds; "
                  "loss: below by more than it; tie: otherwise; undecided (null): a side with "
                  f"fewer than {MIN_SEEDS} seeds or no number",
          "min_seeds": MIN_SEEDS, "datasets": datasets, "vs": vs}
