"""`python -m simlap.evaluate` on a tiny trained checkpoint: results.json keys, report, PNGs."""
from __future__ import annotations
import json
import os

import pytest
from absl import flags

from simlap.evaluation import evaluators
from simlap.evaluation import run as eval_workdir
from simlap.runtime import storage
from simlap.runtime import workdir as workdir_lib
from simlap.grid import run as grid_run
from simlap import evaluate
from simlap.training import loop as train
from test_compare import grid_argv, parse

PNGS = ("spectrum.png", "intra_inter_backbone.png", "intra_inter_projector.png",
        "intra_inter_projector_gated.png", "intra_inter_projector_pair_gated.png",
        "class_mean_similarity_backbone.png", "class_mean_similarity_projector.png",
        "gate_histogram.png", "gate_similarity.png", "pair_sizes.png")




def run_cli(argv):
  """The CLI in-process on its own FlagValues (absl's global FLAGS stays untouched)."""
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  fv(["simlap.evaluate", *argv])
  return evaluate.main(["simlap.evaluate"], fv)


@pytest.fixture(scope="module")
def workdir(fmnist_data_dir, tmp_path_factory):
  # The config of test_compare's simlap seed 0 run: same programs, so the session's
  # compilation cache serves them whichever test file runs first.
  path = str(tmp_path_factory.mktemp("evaluate_cli") / "run")
  fv, _ = parse(grid_argv(fmnist_data_dir, path))
  config = grid_run.method_config(fv.config, "simlap", 0)
  train.train_and_evaluate(config, path)
  return path, config


def test_load_config_round_trip(workdir):
  path, config = workdir
  loaded = workdir_lib.load_config(path)
  assert loaded.to_dict() == config.to_dict()
  assert isinstance(loaded.model.projector_hidden, tuple)


def test_cli_writes_results_report_and_pngs(workdir, capsys):
  path, _ = workdir
  res = run_cli([f"--workdir={path}", "--linear_epochs=2"])
  out = os.path.join(path, "eval")
  # The console gets a summary and the paths, not the results dict (several screens).
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 4 and "kNN@20" in printed[0], printed
  assert printed[1].endswith(os.path.join(out, "results.json"))
  assert printed[2].endswith(os.path.join(out, "report.md"))
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(res))
  assert tuple(saved) == eval_workdir.RESULTS_KEYS
  assert saved["step"] == 4 and saved["method"] == "simlap"
  assert set(saved["summary"]) == set(eval_workdir.SUMMARY_KEYS)
  assert set(saved["knn"]) == {"backbone", "projector"}
  assert set(saved["knn"]["backbone"]) == {"10", "20", "50"}
  assert saved["protocol"]["knn"]["temperature"] == 0.07
  assert saved["linear_probe"]["hparams"]["epochs"] == 2
  few = saved["few_shot"]
  assert few["lam"] == 1e-3 and few["seeds"] == [0, 1, 2]
  assert set(few["shots"]) == {"1", "5", "10", "25"}
  assert all(len(v["per_seed"]) == 3 for v in few["shots"].values())
  # Every example once: the 2048 / 512 slices, not the padded eval batches.
  assert (saved["dataset"]["num_train"], saved["dataset"]["num_test"]) == (2048, 512)
  ana = saved["analysis"]
  assert ana["groups"] == [[0, 2, 4, 6], [5, 7, 9]]
  assert ana["gates"]["dim"] == 16 and ana["pair_sizes"]["num_within"] == 18
  assert ana["class_relationships"]["gate"] is not None
  assert {"backbone", "projector", "projector_gated", "projector_pair_gated"} <= set(
      ana["similarity"])
  for key in ("knn_20", "linear", "few_shot_5", "effective_rank_projector",
              "group_recovery_gate", "group_recovery_class_mean_projector"):
    assert saved["summary"][key] is not None, key
  for png in PNGS:
    assert os.path.getsize(os.path.join(out, png)) > 0, png
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "kNN k=20" in report and "## Gates" in report and "spectrum.png" in report


def test_step_flag_restores_that_checkpoint_and_writes_to_a_url_with_the_listed_evaluators(
    workdir, monkeypatch):
  # Results go through runtime.storage, so an out_dir (or workdir) may be a URL: memory:// here.
  # The same evaluation checks that only the listed evaluators run, each timed under its name.
  path, _ = workdir
  ran = []
  for cls in evaluators.EVALUATORS.values():
    def spy(self, ctx, real=cls.run):
      ran.append(self.name)
      return real(self, ctx)
    monkeypatch.setattr(cls, "run", spy)
  url = "memory://evaluate_cli/eval"
  res = eval_workdir.evaluate_workdir(path, step=2, plots=False, linear={"epochs": 2},
                                      ks=(5, 20), out_dir=url)
  assert res["step"] == 2 and res["analysis"]["plots"] == []
  assert workdir_lib.read_json(f"{url}/results.json")["step"] == 2
  assert storage.exists(f"{url}/report.md")
  assert not os.path.exists("memory:")
  assert ran == ["knn", "linear_probe", "few_shot", "analysis"]  # no robustness, no transfer
  assert res["robustness"] is None and res["transfer"] is None
  assert list(res["protocol"]) == ["features", *eval_workdir.PROTOCOL_KEYS]
  assert res["protocol"]["transfer"] is None and res["protocol"]["knn"]["ks"] == [5, 20]
  assert res["protocol"]["linear_probe"] == res["linear_probe"]["hparams"]
  assert set(res["knn"]["projector"]) == {"5", "20"}
  assert list(res["timing_s"]) == ["restore", "features", *ran, "total"]
