"""`python -m simlap.compare` on a 2-method x 2-seed tiny grid: table, resume, skip, guard."""
from __future__ import annotations
import json
import os
import shutil
from unittest import mock

from fractions import Fraction

import numpy as np
import pytest
from absl import flags

from simlap.runtime import checkpointing
from simlap import compare
from simlap.grid import run as grid_run
from simlap.grid import steps as compare_steps
from simlap.runtime import workdir as workdir_lib
from simlap.evaluation import run as eval_workdir
from simlap import evaluate
from simlap.training import loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def tiny_overrides(data_dir):
  """configs/default.py shrunk like tests/test_train.py::tiny_config (seconds per run)."""
  return [f"--config.dataset.data_dir={data_dir}", "--config.dataset.train_split=train[:2048]",
          "--config.dataset.eval_split=test[:512]", "--config.dataset.image_size=16",
          "--config.model.backbone=resnet_tiny", "--config.model.projector_hidden=(32,)",
          "--config.model.projector_dim=16", "--config.gate.embed_dim=16",
          "--config.gate.hidden_dim=32", "--config.batch_size=32", "--config.num_steps=4",
          "--config.eval_batch_size=256", "--config.optimizer.warmup_epochs=0.0",
          "--config.log_every=2", "--config.checkpoint_every=2", "--config.eval_at_end=False"]


def parse(argv):
  """Fresh FlagValues per invocation; config_flags reads the --config.* overrides from argv."""
  argv = ["simlap.compare", *argv]
  fv = flags.FlagValues()
  compare.define_flags(fv, sys_argv=argv)
  fv(argv)
  return fv, argv


def run(argv):
  fv, argv = parse(argv)
  return compare.main([argv[0]], fv, sys_argv=argv)


def grid_argv(data_dir, workdir):
  return [f"--config={REPO}/configs/default.py", "--methods=simlap,ce", "--seeds=0,1",
          f"--workdir={workdir}", "--linear_epochs=2", "--noplots", *tiny_overrides(data_dir)]


@pytest.fixture(scope="module")
def grid(fmnist_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compare") / "grid")
  argv = grid_argv(fmnist_data_dir, workdir)
  with mock.patch.object(train, "train_and_evaluate", wraps=train.train_and_evaluate) as tr:
    first = run(argv)
  return workdir, argv, first, tr.call_count


def test_grid_trains_every_run_and_writes_the_table(grid):
  workdir, _, out, trained = grid
  assert trained == 4 and out["runs_trained"] == 4 and out["runs_evaluated"] == 4
  for method in ("simlap", "ce"):
    for seed in (0, 1):
      rdir = grid_run.run_dir(workdir, method, seed)
      assert grid_run.run_status(rdir) == (True, True)
      summary = json.load(open(os.path.join(rdir, "summary.json"), encoding="utf-8"))
      assert summary["step"] == 4 and summary["num_steps"] == 4
  table = open(os.path.join(workdir, "comparison.md"), encoding="utf-8").read()
  assert "python -m simlap.compare --config=" in table and "--seeds=0,1" in table
  assert "4 steps × batch 32" in table and "resnet_tiny" in table
  rows = [line for line in table.splitlines() if line.startswith("| simlap | 2 |")
          or line.startswith("| ce | 2 |")]
  assert len(rows) == 2 and all(" ± " in r for r in rows)
  # --baselines defaults to ce,supcon: simlap is judged against ce (supcon is not in the grid).
  assert "| vs ce | seeds | fashion_mnist_local |" in table and "| simlap | 2 vs 2 |" in table
  data = json.load(open(os.path.join(workdir, "comparison.json"), encoding="utf-8"))
  assert list(data["methods"]) == ["simlap", "ce"]
  simlap, ce = data["methods"]["simlap"], data["methods"]["ce"]
  assert list(data["win_loss"]["vs"]) == ["ce"] and data["win_loss"]["vs"]["ce"]["simlap"][
      "seeds"] == [2, 2]
  assert [r["seed"] for r in simlap["runs"]] == [0, 1]
  assert set(simlap["mean_std"]) == set(eval_workdir.SUMMARY_KEYS)
  assert simlap["mean_std"]["group_recovery_gate"][0] is not None
  # CE has no gate: its gate entries are null, and the table shows a dash.
  assert ce["mean_std"]["group_recovery_gate"] == [None, None]
  assert ce["runs"][0]["group_recovery_class_mean_projector"] is not None
  # Seeds differ, so a std over them is a real number.
  assert simlap["mean_std"]["knn_20"][1] >= 0.0


def test_rerun_skips_finished_runs(grid):
  workdir, argv, first, _ = grid
  results = os.path.join(grid_run.run_dir(workdir, "ce", 0), "eval", "results.json")
  mtime = os.path.getmtime(results)
  with mock.patch.object(train, "train_and_evaluate") as tr, \
       mock.patch.object(eval_workdir, "evaluate_workdir") as ev:
    out = run(argv)
  assert tr.call_count == 0 and ev.call_count == 0
  assert out["runs_trained"] == 0 and out["runs_evaluated"] == 0
  assert os.path.getmtime(results) == mtime
  # The table is rebuilt from the saved results: the same numbers as the first time.
  assert json.loads(json.dumps(out["methods"])) == json.loads(json.dumps(first["methods"]))


def test_interrupted_run_resumes_from_its_checkpoint(grid, capsys):
  workdir, argv, _, _ = grid
  rdir = grid_run.run_dir(workdir, "simlap", 1)
  # What a preemption after step 2 leaves: checkpoint 2, no final checkpoint, no summary.
  shutil.rmtree(os.path.join(rdir, "checkpoints", "4"))
  os.remove(os.path.join(rdir, "summary.json"))
  assert grid_run.run_status(rdir) == (False, False)
  with mock.patch.object(train, "train_and_evaluate", wraps=train.train_and_evaluate) as tr:
    out = run(argv)
  assert tr.call_count == 1 and out["runs_trained"] == 1 and out["runs_evaluated"] == 1
  assert "simlap seed 1: training (resuming)" in capsys.readouterr().out
  assert grid_run.run_status(rdir) == (True, True)
  rows = [json.loads(line) for line in open(os.path.join(rdir, "metrics.jsonl"),
                                            encoding="utf-8")]
  # Steps 3-4 trained again: the interrupted run's step-4 row was dropped on resume (it is
  # past the restored step), so each step is in the file exactly once.
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]


def test_changed_config_is_refused(grid):
  workdir, argv, _, _ = grid
  with pytest.raises(ValueError, match="num_steps: 4 -> 6"):
    run([*argv, "--config.num_steps=6"])
  with pytest.raises(ValueError, match="unknown method"):
    run([*argv, "--methods=simlap,byol"])


# --------------------------------------------------------------------------------------------
# --eval_fractions: every run scored at several points of its training, from its checkpoints.
# --------------------------------------------------------------------------------------------
def test_fractions_map_to_steps():
  fractions = compare_steps.parse_fractions(["2/3", "1/3", "1", "1/3"])
  assert fractions == [Fraction(1, 3), Fraction(2, 3), Fraction(1)]
  # The running 3-epoch grid: 1404 steps, checkpoints every 468.
  assert list(compare_steps.fraction_steps(fractions, 1404)) == [468, 936, 1404]
  assert compare_steps.fraction_steps([Fraction(1, 2)], 5) == {3: Fraction(1, 2)}  # halves up
  assert compare_steps.epochs(936, 128, 60_000) == 2.0  # 468 steps per epoch, as trained
  for bad in ("0", "3/2", "a third"):
    with pytest.raises(ValueError, match="--eval_fractions"):
      compare_steps.parse_fractions([bad])


def test_runs_saved_before_kept_steps_and_selective_pairs_still_match():
  # A grid trained before keep_checkpoint_steps and the selective-pair fields existed (their
  # config.json lacks them) is continued, and scored at 1/3 and 2/3, without a config error.
  from simlap import config_schema  # noqa: PLC0415
  for method in ("simlap", "simlap_open", "supcon", "ce"):
    saved = workdir_lib.as_json(grid_run.method_config(config_schema.base_config(), method, 1))
    del saved["keep_checkpoint_steps"], saved["loss"]["selective_alpha"]
    del saved["loss"]["selective_max_level"]
    now = grid_run.method_config(config_schema.base_config(), method, 1, keep_steps=(468, 936))
    assert now.keep_checkpoint_steps == (468, 936)
    assert workdir_lib.resume_blockers(saved, now) == [], method


def test_checkpointer_keeps_the_listed_steps(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2, keep=1,
                                    keep_steps=(3,))
  for step in range(1, 7):  # the trainer's rule: interval steps, kept steps, the last one
    if step % 2 == 0 or step in ckpt.keep_steps:
      ckpt.save(step, {"w": np.ones(2, np.float32)}, {"step": step}, force=step == 6)
  ckpt.close()
  # The newest 1, and step 3, read from the folder names as Orbax saw them.
  assert workdir_lib.checkpoint_steps(str(tmp_path / "checkpoints")) == [3, 6]


def step_argv(argv, fractions):
  return [*argv, "--methods=simlap", "--seeds=0", f"--eval_fractions={fractions}"]


def test_eval_fractions_score_each_checkpoint(grid, capsys):
  workdir, argv, _, _ = grid
  rdir = grid_run.run_dir(workdir, "simlap", 0)
  with mock.patch.object(train, "train_and_evaluate") as tr:
    out = run(step_argv(argv, "1/2,1"))
  assert tr.call_count == 0 and out["step_evaluations"] == 1  # step 4 is eval/results.json
  assert "simlap seed 0: evaluated step 2 (1/2 of training)" in capsys.readouterr().out
  assert [(e["step"], e["fraction"], e["epochs"]) for e in out["per_step"]] == [
      (2, "1/2", 0.0312), (4, "1", 0.0625)]
  at = {e["step"]: e["methods"]["simlap"]["runs"][0] for e in out["per_step"]}
  final = json.load(open(os.path.join(rdir, "eval", "results.json"), encoding="utf-8"))
  assert final["step"] == 4 and at[4] == {"seed": 0, "step": 4, **final["summary"]}
  assert at[2]["knn_20"] != at[4]["knn_20"]  # two checkpoints, two models
  saved = json.load(open(os.path.join(rdir, "eval", "step_2", "results.json"), encoding="utf-8"))
  assert saved["step"] == 2 and at[2] == {"seed": 0, "step": 2, **saved["summary"]}
  # The same numbers as `simlap.evaluate --step=2`, which writes to the same place by default.
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  fv(["simlap.evaluate", f"--workdir={rdir}", "--step=2", "--linear_epochs=2", "--noplots"])
  direct = evaluate.main(["simlap.evaluate"], fv)
  assert direct["summary"] == saved["summary"]
  assert f"results: {os.path.join(rdir, 'eval', 'step_2', 'results.json')}" in (
      capsys.readouterr().out)
  table = open(os.path.join(workdir, "comparison.md"), encoding="utf-8").read()
  assert "## At several points of training" in table
  assert "| simlap | 2 | 1/2 | 0.0312 | 1 |" in table
  data = json.load(open(os.path.join(workdir, "comparison.json"), encoding="utf-8"))
  assert data["per_step"][0]["methods"]["simlap"]["mean_std"]["knn_20"] == [at[2]["knn_20"], 0.0]
  assert data["curves"] == "comparison_curves.png"
  assert os.path.getsize(os.path.join(workdir, "comparison_curves.png")) > 10_000


def test_eval_fractions_rerun_skips_scored_steps(grid):
  workdir, argv, _, _ = grid
  before = json.load(open(os.path.join(workdir, "comparison.json"), encoding="utf-8"))
  with mock.patch.object(train, "train_and_evaluate") as tr, \
       mock.patch.object(eval_workdir, "evaluate_workdir") as ev:
    out = run(step_argv(argv, "1/2,1"))
  assert tr.call_count == 0 and ev.call_count == 0 and out["step_evaluations"] == 0
  assert out["per_step"] == before["per_step"]


def test_eval_fraction_without_checkpoint_is_a_clear_error(grid):
  workdir, argv, _, _ = grid
  with mock.patch.object(train, "train_and_evaluate") as tr, \
       mock.patch.object(eval_workdir, "evaluate_workdir") as ev, \
       pytest.raises(ValueError, match=r"no checkpoint and no results at step 1 \(1/4 of "
                                       r"training\); its checkpoints are at steps \[2, 4\]"):
    run(step_argv(argv, "1/4,1"))
  assert tr.call_count == 0 and ev.call_count == 0  # refused before anything ran
