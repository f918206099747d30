"""A grid's numbers and tables without training: records, mean ± std over seeds, wins against
baselines, the robustness and transfer tables (hand-made results, exact numbers), the records
of results/grid_full tabulated as they are, and the one list of a run's checkpoint steps."""
from __future__ import annotations
import json
import os
import shutil
import statistics
from unittest import mock

import numpy as np
import pytest

from configs import default
from simlap.evaluation import cells
from simlap.evaluation import run as eval_workdir
from simlap.grid import aggregate as agg
from simlap.grid import run as grid_run
from simlap.grid import tables
from simlap.runtime import checkpointing
from simlap.runtime import workdir as workdir_lib
from simlap.training import loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID_FULL = os.path.join(REPO, "results", "grid_full")


def results(step=4, transfer=None, **summary):
  """A results dict with only what the grid reads: step, summary, and maybe transfer, given
  as {target: (knn, 1-shot mean or None, 5-shot mean)}."""
  out = {"step": step, "summary": summary}
  if transfer is not None:
    out["protocol"] = {"transfer": {"knn": {"k": 20, "temperature": 0.07},
                                    "few_shot": {"lam": 1e-3}}}
    out["transfer"] = {t: {"knn_accuracy": knn, "few_shot": {
        "1shot": None if f1 is None else {"mean": f1, "std": 0.01},
        "5shot": {"mean": f5, "std": 0.02}}} for t, (knn, f1, f5) in transfer.items()}
  return out


def grid_runs():
  """{method: [record per seed]}: ce and simlap with 3 seeds, robustness and transfer; simclr
  one seed without either. Chosen so each outcome of `agg.outcome` occurs once or more."""
  ce = [results(knn_20=k, linear=0.90, few_shot_5=f, robustness_clean=c, robustness_mca=m,
                robustness_relative_error=e, transfer={"digits": (tk, None, t5)})
        for k, f, c, m, e, tk, t5 in zip((0.80, 0.82, 0.84), (0.70, 0.71, 0.72),
                                         (0.60, 0.62, 0.64), (0.40, 0.41, 0.42),
                                         (1.50, 1.55, 1.60), (0.60, 0.61, 0.62),
                                         (0.50, 0.52, 0.54))]
  simlap = [results(knn_20=k, linear=li, few_shot_5=f, robustness_clean=c, robustness_mca=m,
                    robustness_relative_error=e,
                    transfer={"digits": (tk, 0.3, 0.53), "animal_mnist": (0.70, 0.2, 0.40)})
            for k, li, f, c, m, e, tk in zip((0.85, 0.86, 0.87), (0.89, 0.91, 0.93),
                                             (0.60, 0.62, 0.64), (0.64, 0.65, 0.66),
                                             (0.44, 0.45, 0.46), (1.0, 1.1, 1.2),
                                             (0.65, 0.66, 0.67))]
  simclr = [results(knn_20=0.95, linear=0.95, few_shot_5=0.95)]
  return {m: [agg.run_record(r, seed) for seed, r in enumerate(runs)]
          for m, runs in (("ce", ce), ("simlap", simlap), ("simclr", simclr))}


def grid_methods():
  return agg.by_method(grid_runs())


def test_cells_are_one_format():
  assert cells.pct(0.91234) == "91.23" and cells.num(3.14159, 1) == "3.1"
  assert cells.pct(None) == cells.num(float("nan")) == cells.DASH == "–"
  assert cells.mean_std(0.9, 0.01) == "90.00 ± 1.00"
  assert cells.mean_std(2.0, 0.25, "num2") == "2.00 ± 0.25" == tables.cell([2.0, 0.25], "num2")
  assert cells.mean_std(None, 0.1) == cells.mean_std(float("nan"), 0.1) == "–"
  assert cells.mean_std(2.0, None, "num1") == "2.0"
  with pytest.raises(ValueError, match="cell kind"):
    cells.value(1.0, "float")


def test_run_record_flattens_transfer_per_target():
  rec = agg.run_record(results(step=7, knn_20=0.5, transfer={"animal_mnist": (0.6, None, 0.7)}),
                       seed=2)
  assert rec == {"seed": 2, "step": 7, "knn_20": 0.5, "transfer_animal_mnist_knn_20": 0.6,
                 "transfer_animal_mnist_few_shot_1": None,
                 "transfer_animal_mnist_few_shot_5": 0.7}
  assert agg.split_transfer_key("transfer_animal_mnist_few_shot_5") == ("animal_mnist",
                                                                        "few_shot_5")
  assert agg.split_transfer_key("knn_20") is None
  assert agg.split_transfer_key("robustness_mca") is None
  # Results without a transfer section (every run before --transfer): the summary alone.
  assert agg.run_record(results(knn_20=0.5), 0) == {"seed": 0, "step": 4, "knn_20": 0.5}


def robustness_results(seed_shift: float = 0.0) -> dict:
  """Results with a robustness section: 2 corruptions x 2 severities (mCA 0.5 + seed_shift)."""
  acc = {"fog": {"1": 0.8, "2": 0.6}, "gaussian_noise": {"1": 0.5, "2": 0.1}}
  acc = {n: {s: a + seed_shift for s, a in v.items()} for n, v in acc.items()}
  for v in acc.values():
    v["mean"] = (v["1"] + v["2"]) / 2
  out = results(robustness_mca=0.5 + seed_shift)
  out["robustness"] = {"severities": [1, 2], "accuracy": acc, "mca": 0.5 + seed_shift}
  return out


def test_run_record_averages_each_corruption_and_each_severity():
  rec = agg.run_record(robustness_results(), seed=0)
  assert rec == pytest.approx({"seed": 0, "step": 4, "robustness_mca": 0.5,
                               "corruption_fog": 0.7, "corruption_gaussian_noise": 0.3,
                               "severity_1": 0.65, "severity_2": 0.35})
  keys = agg.record_keys([rec])
  assert agg.corruption_names(keys) == ["fog", "gaussian_noise"]
  assert agg.severities(keys) == [1, 2]
  methods = agg.by_method({"simlap": [rec, agg.run_record(robustness_results(0.1), seed=1)],
                           "ce": [agg.run_record(results(knn_20=0.5), seed=0)]})
  lines = tables.robustness_markdown(methods)
  at = lines.index("Per corruption, mean over severities:")
  assert lines[at + 2:at + 6] == [
      "| method | runs | fog | gaussian_noise |", "|---|---|---|---|",
      "| simlap | 2 | 75.00 ± 7.07 | 35.00 ± 7.07 |", "| ce | 1 | – | – |"]
  at = lines.index("Per severity, mean over corruptions:")
  assert lines[at + 2:at + 5] == [
      "| method | runs | 1 | 2 |", "|---|---|---|---|",
      "| simlap | 2 | 70.00 ± 7.07 | 40.00 ± 7.07 |"]


def test_aggregate_is_mean_and_sample_std_over_seeds():
  runs = grid_runs()["simlap"]
  del runs[2]["robustness_mca"], runs[2]["transfer_animal_mnist_knn_20"]  # a seed without
  ms = agg.aggregate(runs)
  assert list(ms)[:len(eval_workdir.SUMMARY_KEYS)] == list(eval_workdir.SUMMARY_KEYS)
  assert list(ms)[len(eval_workdir.SUMMARY_KEYS):] == [
      "transfer_digits_knn_20", "transfer_digits_few_shot_1", "transfer_digits_few_shot_5",
      "transfer_animal_mnist_knn_20", "transfer_animal_mnist_few_shot_1",
      "transfer_animal_mnist_few_shot_5"]
  assert ms["knn_20"] == pytest.approx([0.86, 0.01])  # sample std (ddof 1) over the 3 seeds
  assert ms["linear"] == pytest.approx([0.91, 0.02])
  assert ms["robustness_mca"] == pytest.approx([0.445, 0.01 / np.sqrt(2)])  # 2 seeds have it
  assert ms["transfer_animal_mnist_knn_20"] == pytest.approx([0.70, 0.0])
  assert ms["transfer_digits_knn_20"] == pytest.approx([0.66, 0.01])
  assert ms["group_recovery_gate"] == [None, None]  # no run has it
  assert agg.aggregate(grid_runs()["simclr"])["knn_20"] == [0.95, 0.0]  # one seed: std 0


def test_win_loss_needs_more_than_the_larger_std():
  methods = grid_methods()
  # Every method over the same keys, so a method without transfer shows dashes, not gaps.
  assert len({tuple(d["mean_std"]) for d in methods.values()}) == 1
  wl = agg.win_loss(methods, ["ce", "supcon"], "fmnist")  # supcon is not in the grid: skipped
  assert list(wl["vs"]) == ["ce"] and list(wl["vs"]["ce"]) == ["simlap", "simclr"]
  assert wl["datasets"] == {
      "fmnist": {"knn_20": "knn_20", "linear": "linear", "few_shot_5": "few_shot_5"},
      "fmnist corrupted": {"mCA": "robustness_mca"},
      "digits": {"knn_20": "transfer_digits_knn_20", "few_shot_5": "transfer_digits_few_shot_5"},
      "animal_mnist": {"knn_20": "transfer_animal_mnist_knn_20",
                       "few_shot_5": "transfer_animal_mnist_few_shot_5"}}
  s = wl["vs"]["ce"]["simlap"]
  assert s["seeds"] == [3, 3]
  # kNN 86 ± 1 vs 82 ± 2: above by 4 > 2, a win. Linear 91 ± 2 vs 90 ± 0: above, but by 1,
  # within the spread: a tie. 5-shot 62 ± 2 vs 71 ± 1: a loss.
  assert s["fmnist"] == {"win": 1, "tie": 1, "loss": 1, "undecided": 0, "metrics": {
      "knn_20": "win", "linear": "tie", "few_shot_5": "loss"}}
  assert s["fmnist corrupted"]["metrics"] == {"mCA": "win"}  # 45 ± 1 vs 41 ± 1
  assert s["digits"]["metrics"] == {"knn_20": "win", "few_shot_5": "tie"}  # 53 ± 0 vs 52 ± 2
  assert s["animal_mnist"]["undecided"] == 2  # the baseline has no number there
  # One seed has no std to judge by: undecided everywhere, never a win (simclr's 95 % is above
  # every mean of ce).
  c = wl["vs"]["ce"]["simclr"]
  assert c["seeds"] == [1, 3] and c["fmnist"]["metrics"] == dict.fromkeys(
      ("knn_20", "linear", "few_shot_5"))
  assert agg.outcome([0.9, 0.0], [0.5, 0.0], 1, 3) is None
  assert agg.outcome([0.5, 0.01], [0.5, 0.01], 2, 2) == "tie"
  assert agg.win_loss(methods, ["supcon"], "fmnist")["vs"] == {}


def test_robustness_transfer_and_win_loss_tables():
  methods = grid_methods()
  assert tables.robustness_markdown(methods)[5:10] == [
      "| method | runs | clean | mCA | rel. corruption error |", "|---|---|---|---|---|",
      "| ce | 3 | 62.00 ± 2.00 | 41.00 ± 1.00 | 1.550 ± 0.050 |",
      "| simlap | 3 | 65.00 ± 1.00 | 45.00 ± 1.00 | 1.100 ± 0.100 |",
      "| simclr | 1 | – | – | – |"]
  transfer = tables.transfer_markdown(methods, {"knn": {"k": 20, "temperature": 0.07},
                                                "few_shot": {"lam": 1e-3}})
  assert transfer[5:10] == [
      "| method | runs | digits kNN@20 | digits 5-shot | animal_mnist kNN@20 | animal_mnist "
      "5-shot |", "|---|---|---|---|---|---|",
      "| ce | 3 | 61.00 ± 1.00 | 52.00 ± 2.00 | – | – |",
      "| simlap | 3 | 66.00 ± 1.00 | 53.00 ± 0.00 | 70.00 ± 0.00 | 40.00 ± 0.00 |",
      "| simclr | 1 | – | – | – | – |"]
  assert "kNN k = 20, T = 0.07" in transfer[3]
  wins = tables.win_loss_markdown(agg.win_loss(methods, ["ce"], "fmnist"))
  assert wins[5:9] == [
      "| vs ce | seeds | fmnist | fmnist corrupted | digits | animal_mnist |",
      "|---|---|---|---|---|---|",
      "| simlap | 3 vs 3 | 1 / 1 / 1 | 1 / 0 / 0 | 1 / 1 / 0 | – |",
      "| simclr | 1 vs 3 | – | – | – | – |"]
  out = {"command": "c", "budget": None, "seeds": [0, 1, 2], "methods": methods,
         "win_loss": agg.win_loss(methods, ["ce"], "fmnist"), "runs_trained": 0,
         "runs_evaluated": 0, "seconds": 1.0}
  md = tables.table_markdown(out)
  order = [md.index(h) for h in ("| method | runs | kNN@20 |", "## Robustness", "## Transfer",
                                 "## Against the baselines", "0 runs trained")]
  assert order == sorted(order)
  assert "| simclr | 1 | 95.00 ± 0.00 | 95.00 ± 0.00 | 95.00 ± 0.00 | – |" in md


def copy_runs(tmp_path, methods=("ce", "supcon", "simlap")):
  for m in methods:
    shutil.copytree(os.path.join(GRID_FULL, m), tmp_path / m,
                    ignore=shutil.ignore_patterns("step_*", "metrics.jsonl"))
  return str(tmp_path)


def test_grid_full_records_tabulate_as_before(tmp_path):
  # 9 real runs from before robustness and transfer: the grid reads them back (nothing is
  # trained or evaluated), aggregates them as ever, and shows no robustness or transfer table.
  workdir = copy_runs(tmp_path)
  with mock.patch.object(train, "train_and_evaluate") as tr, \
       mock.patch.object(eval_workdir, "evaluate_workdir") as ev:
    out = grid_run.run_grid(default.get_config(), ["ce", "supcon", "simlap"], [0, 1, 2],
                            workdir, baselines=["ce", "supcon"], log=lambda _: None)
  assert tr.call_count == 0 and ev.call_count == 0
  for m in ("ce", "supcon", "simlap"):
    knn = [json.load(open(os.path.join(workdir, m, f"seed{s}", "eval", "results.json"),
                          encoding="utf-8"))["summary"]["knn_20"] for s in range(3)]
    assert out["methods"][m]["mean_std"]["knn_20"] == pytest.approx(
        [statistics.mean(knn), statistics.stdev(knn)])
    assert set(out["methods"][m]["mean_std"]) == set(eval_workdir.SUMMARY_KEYS)
    assert out["methods"][m]["mean_std"]["robustness_mca"] == [None, None]
  md = open(os.path.join(workdir, "comparison.md"), encoding="utf-8").read()
  assert "## Robustness" not in md and "## Transfer" not in md
  assert "Per corruption" not in md
  assert "| ce | 3 | 89.41 ± 0.19 | 89.34 ± 0.22 | 69.69 ± 1.20 |" in md
  # Judged on Fashion-MNIST alone (no corrupted or transfer numbers).
  assert "| vs ce | seeds | fashion_mnist_local |" in md
  assert "| simlap | 3 vs 3 | 2 / 0 / 1 |" in md  # kNN and 5-shot above, linear below
  assert json.load(open(os.path.join(workdir, "comparison.json"), encoding="utf-8"))[
      "win_loss"]["vs"]["supcon"]["simlap"]["fashion_mnist_local"]["metrics"] == {
          "knn_20": "win", "linear": "win", "few_shot_5": "tie"}


def test_run_status_asks_for_the_sections_wanted(tmp_path):
  rdir = os.path.join(copy_runs(tmp_path, ("ce",)), "ce", "seed0")
  assert grid_run.run_status(rdir) == (True, True)
  assert grid_run.run_status(rdir, robustness=True) == (True, False)
  assert grid_run.run_status(rdir, transfer=["digits"]) == (True, False)
  path = os.path.join(rdir, "eval", "results.json")
  res = json.load(open(path, encoding="utf-8"))
  workdir_lib.write_json(path, {**res, "robustness": {"mca": 0.5},
                                "transfer": {"digits": {}, "animal_mnist": {}}})
  assert grid_run.run_status(rdir, robustness=True, transfer=["digits"]) == (True, True)


# --------------------------------------------------------------------------------------------
# The one list of a run's checkpoint steps.
# --------------------------------------------------------------------------------------------
def test_checkpoint_steps_read_the_folder_names(tmp_path):
  for name in ("2", "10", "4.damaged", "6.orbax-checkpoint-tmp-1712", "x", "٣"):
    os.makedirs(tmp_path / name)
  assert workdir_lib.checkpoint_steps(str(tmp_path)) == [2, 10]  # numerically sorted
  assert workdir_lib.checkpoint_steps(str(tmp_path / "absent")) == []


def test_checkpoint_steps_on_gcs_need_orbax_commit_file(monkeypatch):
  from orbax.checkpoint._src.path import atomicity_types  # noqa: PLC0415
  assert workdir_lib.COMMIT_FILE == atomicity_types.COMMIT_SUCCESS_FILE
  files = {"gs://b/r/checkpoints/4/commit_success.txt", "gs://b/r/checkpoints/8/x"}
  monkeypatch.setattr(workdir_lib.storage, "listdir", lambda path: ["4", "8"])
  monkeypatch.setattr(workdir_lib.storage, "exists", lambda path: path in files)
  assert workdir_lib.checkpoint_steps("gs://b/r/checkpoints") == [4]  # 8 is half written


def test_checkpointer_lists_what_orbax_lists(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=10)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": np.ones(2, np.float32)}, {"step": step})
  ckpt.close()
  os.makedirs(tmp_path / "7.damaged")
  os.makedirs(tmp_path / "9.orbax-checkpoint-tmp-1712")
  again = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=10)
  orbax_steps = sorted(again._manager.all_steps())  # noqa: SLF001 - Orbax's own view
  assert again.all_steps() == orbax_steps == [1, 2, 3]
  again.close()
