"""The evaluator protocol of `evaluation.run`: named evaluators, listed by config, each run on
one `Context` (the restored run and its frozen-feature banks).

An evaluator is a frozen dataclass whose fields are its config (its protocol parameters), with
a `name` (its key in results.json), `run(context) -> result` and `protocol(context, result)`
(its entry in results.json's "protocol", or None: it has none). `build` makes a list from
(name, config) pairs; `run_all` runs it in order, timing each under its name; an evaluator not
listed never runs. Every evaluator's defaults are those of the function it calls.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import ml_collections
import numpy as np
from jax.sharding import Mesh

from simlap.data import corruptions as corruptions_lib
from simlap.evaluation import analysis_eval
from simlap.evaluation import knn as knn_lib
from simlap.evaluation import probes
from simlap.evaluation import progress
from simlap.evaluation import robustness as robustness_lib
from simlap.evaluation import transfer_eval
from simlap.evaluation.bank import Bank


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator may read: the restored run and its banks (nothing is written here but
  `parts`, the sub-parts' seconds for the log, and PNGs into `png_dir`)."""
  config: ml_collections.ConfigDict  # the run's config.json
  model: Any
  state: Any  # training.state.TrainState, restored
  mesh: Mesh
  num_classes: int
  class_names: Sequence[str]
  train: Bank  # the train split, row-sharded on the devices
  test: Bank  # the eval split, row-sharded on the devices
  test_rows: dict[str, np.ndarray]  # the eval split's real rows on the host (`run.test_rows`)
  png_dir: str | None  # where pictures go (None: no pictures)
  parts: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """The protocol: subclasses set `name` and define `run` (and `protocol` if they have one)."""
  name: ClassVar[str] = ""

  @property
  def config(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def run(self, ctx: Context) -> Any:
    raise NotImplementedError

  def protocol(self, ctx: Context, result: Any) -> Any:
    del ctx, result
    return None


@dataclasses.dataclass(frozen=True)
class Knn(Evaluator):
  """Weighted kNN of the test split against the train bank, backbone and projector features:
  {"backbone"|"projector": {"<k>": accuracy}}."""
  name: ClassVar[str] = "knn"
  ks: Sequence[int] = (10, 20, 50)
  temperature: float = 0.07

  def run(self, ctx: Context) -> dict[str, dict[str, float]]:
    return {name: {str(int(k)): v for k, v in knn_lib.knn_predict(
        ctx.train, ctx.test, feature=col, num_classes=ctx.num_classes, ks=self.ks,
        temperature=self.temperature, name=f"knn {name}", timings=ctx.parts)["accuracy"].items()}
        for name, col in (("backbone", "features"), ("projector", "embeddings"))}

  def protocol(self, ctx: Context, result: Any) -> dict[str, Any]:
    return {"ks": [int(k) for k in self.ks], "temperature": float(self.temperature),
            "similarity": "cosine (L2-normalised)", "bank": ctx.config.dataset.train_split}


@dataclasses.dataclass(frozen=True)
class LinearProbe(Evaluator):
  """`probes.linear_probe` on the train bank, scored on the test bank; its "hparams" are its
  protocol."""
  name: ClassVar[str] = "linear_probe"
  feature: str = "features"
  epochs: int = 30
  batch_size: int = 4096
  lr: float = 1e-2
  weight_decay: float = 1e-4
  standardize: bool = True
  seed: int = 0

  def run(self, ctx: Context) -> dict[str, Any]:
    return probes.linear_probe(ctx.train, ctx.test, num_classes=ctx.num_classes, **self.config)

  def protocol(self, ctx: Context, result: Any) -> dict[str, Any]:
    return result["hparams"]


@dataclasses.dataclass(frozen=True)
class FewShot(Evaluator):
  """`probes.few_shot_ridge` (backbone features): {"lam", "seeds", "shots": {"<s>": {"mean",
  "std", "per_seed"}}}."""
  name: ClassVar[str] = "few_shot"
  shots: Sequence[int] = (1, 5, 10, 25)
  seeds: Sequence[int] = (0, 1, 2)
  lam: float = 1e-3

  def run(self, ctx: Context) -> dict[str, Any]:
    few = probes.few_shot_ridge(ctx.train, ctx.test, num_classes=ctx.num_classes,
                                shots=self.shots, seeds=self.seeds, lam=self.lam)
    return {**few, "shots": {str(k): v for k, v in few["shots"].items()}}

  def protocol(self, ctx: Context, result: Any) -> dict[str, Any]:
    return {"shots": [int(s) for s in self.shots], "seeds": [int(s) for s in self.seeds],
            "lam": float(self.lam), "features": "backbone, L2-normalised, + bias"}


@dataclasses.dataclass(frozen=True)
class Robustness(Evaluator):
  """`robustness.evaluate_robustness`: the ridge probe under corruptions (its protocol is in
  its result), its picture into the context's `png_dir`."""
  name: ClassVar[str] = "robustness"
  corruptions: Sequence[str] | None = None
  severities: Sequence[int] = corruptions_lib.SEVERITIES
  seed: int = 0
  lam: float = 1e-3

  def run(self, ctx: Context) -> dict[str, Any]:
    picture = os.path.join(ctx.png_dir, robustness_lib.PICTURE) if ctx.png_dir else None
    return robustness_lib.evaluate_robustness(
        ctx.config, ctx.model, ctx.state, ctx.mesh, ctx.train, ctx.test,
        num_classes=ctx.num_classes, picture_path=picture, **self.config)


@dataclasses.dataclass(frozen=True)
class Transfer(Evaluator):
  """`transfer_eval.evaluate_transfer` on `targets`; `data_dir` None: the run's
  dataset.data_dir."""
  name: ClassVar[str] = "transfer"
  targets: Sequence[str] = ()
  k: int = 20
  temperature: float = 0.07
  shots: Sequence[int] = (1, 5, 10, 25)
  seeds: Sequence[int] = (0, 1, 2)
  lam: float = 1e-3
  data_dir: str | None = None

  def _protocol_kw(self) -> dict[str, Any]:
    return dict(k=self.k, temperature=self.temperature, shots=self.shots, seeds=self.seeds,
                lam=self.lam)

  def run(self, ctx: Context) -> dict[str, Any]:
    data_dir = ctx.config.dataset.data_dir if self.data_dir is None else self.data_dir
    return transfer_eval.evaluate_transfer(ctx.config, ctx.model, ctx.state, ctx.mesh,
                                           self.targets, data_dir=data_dir, **self._protocol_kw())

  def protocol(self, ctx: Context, result: Any) -> dict[str, Any]:
    return transfer_eval.protocol(ctx.config, **self._protocol_kw())


@dataclasses.dataclass(frozen=True)
class Analysis(Evaluator):
  """`analysis_eval.analyze_test_split` on the test rows (host), PNGs into `png_dir`."""
  name: ClassVar[str] = "analysis"
  num_pairs: int = 20000

  def run(self, ctx: Context) -> dict[str, Any]:
    return analysis_eval.analyze_test_split(
        ctx.config, ctx.model, ctx.state, ctx.test_rows, num_classes=ctx.num_classes,
        class_names=ctx.class_names, num_pairs=self.num_pairs, png_dir=ctx.png_dir)

  def protocol(self, ctx: Context, result: Any) -> dict[str, Any]:
    return {"split": ctx.config.dataset.eval_split, "num_pairs": int(self.num_pairs),
            "gated": "class gates g(y, y) of the anchor's class"}


EVALUATORS: dict[str, type[Evaluator]] = {
    e.name: e for e in (Knn, LinearProbe, FewShot, Robustness, Transfer, Analysis)}


def build(specs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Evaluator]:
  """[(name, config)] -> evaluators in that order; ValueError for an unknown or repeated name,
  TypeError for a config key the evaluator does not have."""
  names = [name for name, _ in specs]
  for name in names:
    if name not in EVALUATORS:
      raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"an evaluator is listed twice: {names}")
  return [EVALUATORS[name](**config) for name, config in specs]


def run_all(evaluators: Sequence[Evaluator], ctx: Context,
            timing: dict[str, float]) -> dict[str, Any]:
  """{name: result} of every listed evaluator, run in order; `timing[name]` its seconds."""
  results = {}
  for ev in evaluators:
    with progress.timed(timing, ev.name):
      results[ev.name] = ev.run(ctx)
  return results


def protocols(evaluators: Sequence[Evaluator], ctx: Context,
              results: Mapping[str, Any]) -> dict[str, Any]:
  """{name: protocol entry} of the listed evaluators that have one, in list order."""
  out = {ev.name: ev.protocol(ctx, results[ev.name]) for ev in evaluators}
  return {name: entry for name, entry in out.items() if entry is not None}
