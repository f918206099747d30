"""`python -m simlap.compare` on a 2-method x 2-seed tiny grid: table, resume, skip, guard."""
from __future__ import annotations
import json
import os
import shutil
from unittest import mock

import pytest
from absl import flags

from simlap import eval_workdir
from simlap import compare
from simlap import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Compile-bound on CPU: XLA optimisations off for this module (see conftest).
pytestmark = pytest.mark.usefixtures("fast_compiles")


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
      rdir = compare.run_dir(workdir, method, seed)
      assert compare.run_status(rdir) == (True, True)
      summary = json.load(open(os.path.join(rdir, "summary.json"), encoding="utf-8"))
      assert summary["step"] == 4 and summary["num_steps"] == 4
  table = open(os.path.join(workdir, "comparison.md"), encoding="utf-8").read()
  assert "python -m simlap.compare --config=" in table and "--seeds=0,1" in table
  assert "4 steps × batch 32" in table and "resnet_tiny" in table
  rows = [line for line in table.splitlines() if line.startswith("| simlap |")
          or line.startswith("| ce |")]
  assert len(rows) == 2 and all(" ± " in r for r in rows)
  data = json.load(open(os.path.join(workdir, "comparison.json"), encoding="utf-8"))
  assert list(data["methods"]) == ["simlap", "ce"]
  simlap, ce = data["methods"]["simlap"], data["methods"]["ce"]
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
  results = os.path.join(compare.run_dir(workdir, "ce", 0), "eval", "results.json")
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
  rdir = compare.run_dir(workdir, "simlap", 1)
  # What a preemption after step 2 leaves: checkpoint 2, no final checkpoint, no summary.
  shutil.rmtree(os.path.join(rdir, "checkpoints", "4"))
  os.remove(os.path.join(rdir, "summary.json"))
  assert compare.run_status(rdir) == (False, False)
  with mock.patch.object(train, "train_and_evaluate", wraps=train.train_and_evaluate) as tr:
    out = run(argv)
  assert tr.call_count == 1 and out["runs_trained"] == 1 and out["runs_evaluated"] == 1
  assert "simlap seed 1: training (resuming)" in capsys.readouterr().out
  assert compare.run_status(rdir) == (True, True)
  rows = [json.loads(line) for line in open(os.path.join(rdir, "metrics.jsonl"),
                                            encoding="utf-8")]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4, 4]  # steps 3-4 trained again


def test_changed_config_is_refused(grid):
  workdir, argv, _, _ = grid
  with pytest.raises(ValueError, match="num_steps: 4 -> 6"):
    run([*argv, "--config.num_steps=6"])
  with pytest.raises(ValueError, match="unknown method"):
    run([*argv, "--methods=simlap,byol"])
