"""Robustness under distribution shift: the authors' ridge probe, fitted once on the clean train
split's frozen features, scored on the eval split under ImageNet-C's common corruptions.

Protocol: `evaluate_robustness`; where each corruption's images come from (TFDS's
imagenet2012_corrupted or `simlap.data.corruptions`): `plan`. Each corrupted split goes through
the same row-sharded bank as the clean one, never gathered.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds

from simlap.data import corruptions as corruptions_lib
from simlap.data import shifted_stream
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import probes
from simlap.evaluation import progress

TFDS_NAME = "imagenet2012_corrupted"
TFDS_SOURCE, NUMPY_SOURCE = f"tfds:{TFDS_NAME}", "numpy"
TFDS_SPLIT = "validation"
# ImageNet-C's 15 benchmark corruptions, in its order (frost is TFDS's alone here).
BENCHMARK = corruptions_lib.CORRUPTIONS[:8] + ("frost",) + corruptions_lib.CORRUPTIONS[8:]
PICTURE = "robustness_corruptions.png"


def summarize(clean: float, accuracy: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
  """clean accuracy, {corruption: {severity: accuracy}} -> the reported numbers:
  {"clean_accuracy", "mca", "relative_corruption_error", "accuracy": {corruption: {"<s>": acc,
  "mean": mean over its severities}}}. mCA weighs every (corruption, severity) cell alike; the
  relative error is None when the clean accuracy is 1 (no clean error to compare with)."""
  cells = [float(a) for per in accuracy.values() for a in per.values()]
  mca = float(np.mean(cells)) if cells else None
  rel = None if mca is None or clean >= 1.0 else (1.0 - mca) / (1.0 - clean)
  return {"clean_accuracy": float(clean), "mca": mca, "relative_corruption_error": rel,
          "accuracy": {name: {**{str(s): float(a) for s, a in per.items()},
                              "mean": float(np.mean(list(per.values())))}
                       for name, per in accuracy.items()}}


def tfds_builder(config, name: str, severity: int) -> tfds.core.DatasetBuilder | None:
  """TFDS's prepared `imagenet2012_corrupted/<name>_<severity>` for an imagenet2012 run, else
  None (another dataset, an unknown config, or not prepared: nothing is ever downloaded)."""
  if config.dataset.name != "imagenet2012":
    return None
  try:
    builder = tfds.builder(f"{TFDS_NAME}/{name}_{severity}", data_dir=config.dataset.data_dir)
  except (ValueError, KeyError, tfds.core.registered.DatasetNotFoundError):
    return None
  return builder if builder.is_prepared() else None


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which corruption is scored from where; `builders[(name, s)]` for the TFDS ones."""
  sources: dict[str, str]
  missing: dict[str, str]
  builders: dict[tuple[str, int], tfds.core.DatasetBuilder]


def check_names(names: Sequence[str] | None) -> list[str]:
  """The corruptions in order, duplicates dropped (None: all of `BENCHMARK`); ValueError naming
  the valid ones otherwise."""
  out = []
  for name in BENCHMARK if names is None else names:
    if name not in BENCHMARK:
      raise ValueError(f"unknown corruption {name!r}; known: {', '.join(BENCHMARK)}")
    if name not in out:
      out.append(name)
  return out


def plan(config, names: Sequence[str] | None, severities: Sequence[int]) -> Plan:
  """The source of each corruption (`sources` in the results); ValueError for an unknown name.

    "tfds:imagenet2012_corrupted"  an imagenet2012 run whose TFDS data dir holds every requested
                                   severity of the builder config `<corruption>_<severity>`;
    "numpy"                        `simlap.data.corruptions` on the eval split (seeded: the same
                                   bytes for a seed whatever the batching or process count).
  A corruption with neither (frost without TFDS's files) is listed under `missing`, with why.
  """
  names = check_names(names)
  for s in severities:
    corruptions_lib.check_name_severity(corruptions_lib.CORRUPTIONS[0], s)
  sources, missing, builders = {}, {}, {}
  for name in names:
    found = {s: tfds_builder(config, name, s) for s in severities if s > 0}
    if found and all(b is not None for b in found.values()):
      sources[name] = TFDS_SOURCE
      builders.update({(name, s): b for s, b in found.items()})
    elif name in corruptions_lib.CORRUPTIONS:
      sources[name] = NUMPY_SOURCE
    else:
      missing[name] = corruptions_lib.MISSING.get(name, "not implemented")
  return Plan(sources, missing, builders)


def _source(config, p: Plan, name: str, severity: int, seed: int, shown: dict):
  """(Source, hook) of one corruption and severity; the hook also keeps the split's first
  image as the model got it (`shown`), for the picture."""
  builder = p.builders.get((name, severity))
  if builder is not None:
    src = shifted_stream.split_source(config, TFDS_SPLIT, builder=builder,
                                      resized_by_builder=True)
  else:
    src = shifted_stream.split_source(config, config.dataset.eval_split)

  def hook(images: np.ndarray, start: int) -> np.ndarray:
    out = images if builder is not None else corruptions_lib.corrupt_batch(
        images, name, severity, seed, start)
    if start == 0 and len(out):
      shown[(name, severity)] = out[0].copy()
    return out

  return src, hook


def evaluate_robustness(config, model, state, mesh, train_bank: bank_lib.Bank,
                        test_bank: bank_lib.Bank, *, num_classes: int,
                        corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] = corruptions_lib.SEVERITIES, seed: int = 0,
                        lam: float = 1e-3, picture_path: str | None = None) -> dict[str, Any]:
  """The robustness section of results.json, to the authors' post-review protocol.

  Closed-form ridge on L2-normalised backbone features plus a bias, one-hot targets, λ
  (`probes.ridge_probe`), fitted on the clean train bank; scored on the eval split under every
  corruption at every severity. Reported: the clean accuracy (the same probe on the clean eval
  split), the accuracy per corruption and severity, mCA (their mean, each cell weighted alike)
  and the relative corruption error (1 - mCA) / (1 - clean accuracy) (`summarize`).

  Args:
    config, model, state, mesh: the restored run.
    train_bank, test_bank: its clean train and eval banks ("features": backbone).
    num_classes: C of the run's dataset.
    corruptions: names (default: ImageNet-C's 15; those neither implemented nor in TFDS are
      reported as missing); severities: 1-5 (0, the identity, is allowed: a check).
    seed: of the NumPy corruptions.
    lam: the ridge λ.
    picture_path: where process 0 writes the grid of the first eval image under every
      corruption and severity, as the model got it (None: no picture).
  """
  took: dict[str, float] = {}
  with progress.timed(took, "robustness"):
    p = plan(config, corruptions, severities)
    w = probes.ridge_probe(train_bank, num_classes=num_classes, lam=lam)
    clean = probes.ridge_accuracy(w, test_bank)
    shown: dict[tuple[str, int], np.ndarray] = {}
    acc: dict[str, dict[int, float]] = {}
    for name in p.sources:
      acc[name] = {}
      for s in severities:
        src, hook = _source(config, p, name, s, seed, shown)
        batches = shifted_stream.source_batches(config, mesh, src, hook=hook,
                                                where=f"{name} severity {s}")
        bank = bank_lib.extract_batches(model, state, mesh, batches, src.sizes,
                                        name=f"extract {name}-{s}")
        acc[name][int(s)] = probes.ridge_accuracy(w, bank)
        del bank
      logging.info("robustness %s: %s", name, {s: round(a, 4) for s, a in acc[name].items()})
  res = {
      "probe": {"kind": "ridge", "lam": float(lam), "fit_on": config.dataset.train_split,
                "num_train": train_bank.num_examples,
                "features": "backbone, L2-normalised, + bias; one-hot targets"},
      "split": config.dataset.eval_split, "num_test": test_bank.num_examples,
      "severities": [int(s) for s in severities], "seed": int(seed),
      "source": "+".join(sorted(set(p.sources.values()))) or None,
      "sources": p.sources, "missing": p.missing,
      **summarize(clean, acc), "picture": None,
      "timing_s": round(took["robustness"], 2)}
  if picture_path and jax.process_index() == 0:
    res["picture"] = _picture(config, p, severities, shown, picture_path)
  return res


def _picture(config, p: Plan, severities, shown, path: str) -> str:
  from simlap.evaluation import plots  # noqa: PLC0415 - matplotlib only for pictures
  clean = next(iter(shifted_stream.split_source(config, config.dataset.eval_split)
                    .dataset.take(1).as_numpy_iterator()))["image"]
  rows = {name: [clean] + [shown.get((name, s)) for s in severities] for name in p.sources}
  plots.plot_image_grid(rows, ["clean"] + [f"severity {s}" for s in severities], path)
  return path.rsplit("/", 1)[-1]
