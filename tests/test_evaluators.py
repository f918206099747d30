"""The evaluator protocol: the list `evaluate_workdir`'s arguments build, what runs, the timing."""
from __future__ import annotations
import dataclasses
import inspect
import time
from typing import ClassVar

import pytest

from simlap.evaluation import analysis
from simlap.evaluation import evaluators
from simlap.evaluation import knn as knn_lib
from simlap.evaluation import probes
from simlap.evaluation import progress
from simlap.evaluation import robustness as robustness_lib
from simlap.evaluation import run as eval_workdir
from simlap.evaluation import transfer_eval


def _list_kw(**overrides):
  """`evaluator_list`'s keywords: `evaluate_workdir`'s defaults, then `overrides`."""
  sig = inspect.signature(eval_workdir.evaluate_workdir)
  names = inspect.signature(eval_workdir.evaluator_list).parameters
  return {**{n: sig.parameters[n].default for n in names}, **overrides}


def test_the_default_arguments_list_the_four_reported_evaluators_with_their_defaults():
  evals = eval_workdir.evaluator_list(**_list_kw())
  assert [e.name for e in evals] == ["knn", "linear_probe", "few_shot", "analysis"]
  # evaluate_workdir's defaults are the evaluators' own.
  assert evals == [evaluators.Knn(), evaluators.LinearProbe(), evaluators.FewShot(),
                   evaluators.Analysis()]


def test_robustness_and_transfer_are_listed_only_when_asked_in_results_order():
  evals = eval_workdir.evaluator_list(**_list_kw(
      ks=(5,), temperature=0.1, shots=(1,), seeds=(7,), lam=0.5, linear={"epochs": 2},
      num_pairs=10, robustness={"seed": 3}, transfer=["digits"], transfer_data_dir="/d"))
  names = [e.name for e in evals]
  assert names == ["knn", "linear_probe", "few_shot", "robustness", "transfer", "analysis"]
  assert names == [n for n in eval_workdir.EVALUATOR_KEYS if n in names]
  by = {e.name: e for e in evals}
  assert by["knn"] == evaluators.Knn(ks=(5,), temperature=0.1)
  assert by["linear_probe"] == evaluators.LinearProbe(epochs=2)
  assert by["few_shot"] == evaluators.FewShot(shots=(1,), seeds=(7,), lam=0.5)
  assert by["robustness"] == evaluators.Robustness(seed=3, lam=0.5)
  assert by["transfer"] == evaluators.Transfer(targets=("digits",), k=20, temperature=0.1,
                                               shots=(1,), seeds=(7,), lam=0.5, data_dir="/d")
  assert by["analysis"] == evaluators.Analysis(num_pairs=10)
  assert [e.name for e in eval_workdir.evaluator_list(**_list_kw(robustness={}))] == [
      "knn", "linear_probe", "few_shot", "robustness", "analysis"]


def _defaults(fn, names):
  params = inspect.signature(fn).parameters
  return {n: params[n].default for n in names}


@pytest.mark.parametrize("cls, fn", [
    (evaluators.Knn, knn_lib.knn_predict), (evaluators.LinearProbe, probes.linear_probe),
    (evaluators.FewShot, probes.few_shot_ridge),
    (evaluators.Robustness, robustness_lib.evaluate_robustness),
    (evaluators.Transfer, transfer_eval.evaluate_target), (evaluators.Analysis, analysis.analyze)])
def test_an_evaluators_defaults_are_those_of_the_function_it_calls(cls, fn):
  fields = {f.name: f.default for f in dataclasses.fields(cls)}
  fields.pop("targets", None)  # Transfer's list of targets: evaluate_transfer's `names`
  assert fields == _defaults(fn, fields)


def test_build_checks_names_and_config_keys():
  assert [e.name for e in evaluators.build([("analysis", {}), ("knn", {"ks": (1,)})])] == [
      "analysis", "knn"]
  with pytest.raises(ValueError, match="unknown evaluator 'knnn'; known: knn, linear_probe"):
    evaluators.build([("knnn", {})])
  with pytest.raises(ValueError, match="listed twice"):
    evaluators.build([("knn", {}), ("knn", {"ks": (1,)})])
  with pytest.raises(TypeError, match="epoch"):
    evaluators.build([("linear_probe", {"epoch": 2})])


@dataclasses.dataclass(frozen=True)
class _Fake(evaluators.Evaluator):
  name: ClassVar[str] = "fake"
  value: int = 0

  def run(self, ctx):
    ctx.append(self.name)
    time.sleep(0.01)
    return {"value": self.value}

  def protocol(self, ctx, result):
    return {"value": result["value"]} if self.value else None


@dataclasses.dataclass(frozen=True)
class _Other(_Fake):
  name: ClassVar[str] = "other"


def test_run_all_runs_the_listed_evaluators_in_order_each_timed_under_its_name():
  ran, timing = [], {"restore": 1.0}
  out = evaluators.run_all([_Other(value=2), _Fake()], ran, timing)
  assert ran == ["other", "fake"] and list(out) == ["other", "fake"]
  assert out == {"other": {"value": 2}, "fake": {"value": 0}}
  assert list(timing) == ["restore", "other", "fake"] and timing["restore"] == 1.0
  assert all(timing[n] >= 0.009 for n in ("other", "fake")), timing
  # Protocol entries in list order; an evaluator without one (None) has none.
  assert evaluators.protocols([_Other(value=2), _Fake()], ran, out) == {"other": {"value": 2}}


def test_timed_records_seconds_and_nothing_for_a_block_that_raises():
  timing = {}
  with progress.timed(timing, "a"):
    time.sleep(0.02)
  assert 0.02 <= timing["a"] < 5
  with pytest.raises(RuntimeError), progress.timed(timing, "b"):
    raise RuntimeError
  assert list(timing) == ["a"]


def test_evaluate_rejects_a_list_results_json_cannot_hold_before_reading_anything(tmp_path):
  base = eval_workdir.evaluator_list(**_list_kw())
  for evals in (base[:-1], base + [evaluators.Knn(ks=(1,))], base + [_Other()]):
    with pytest.raises(ValueError, match="each at most once"):
      eval_workdir.evaluate(str(tmp_path / "no_such_run"), None, evals)
