"""Transfer: the frozen backbone on other datasets, each scored on its own train/test split.

Per target (`simlap.data.transfer.TARGETS`): prepare it (offline builders read installed
packages; TFDS targets must already be prepared), convert its images to the run's input
(`transfer.to_run_input`), extract backbone features of both splits into sharded banks, and score
kNN and few-shot ridge with the target's train split as bank and pool (`evaluate_target`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from simlap.data import shifted_stream
from simlap.data import transfer
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import knn as knn_lib
from simlap.evaluation import probes
from simlap.evaluation import progress


def check_names(names: Sequence[str]) -> list[str]:
  """The targets in order, duplicates dropped; ValueError naming the valid ones otherwise."""
  out = []
  for name in names:
    transfer.target(name)  # ValueError: unknown transfer target 'x'; known: ...
    if name not in out:
      out.append(name)
  return out


def _prepare(name: str, data_dir: str | None) -> None:
  """Process 0 prepares an offline target first (one writer per data dir), the others then
  find it prepared."""
  if jax.process_count() == 1 or not transfer.target(name).offline:
    return
  from jax.experimental import multihost_utils  # noqa: PLC0415
  if jax.process_index() == 0:
    transfer.prepared_builder(name, data_dir)
  multihost_utils.sync_global_devices(f"simlap transfer prepare {name}")


def _bank(config, model, state, mesh, name: str, split: str, data_dir: str | None
          ) -> bank_lib.Bank:
  src = shifted_stream.transfer_source(config, name, split, data_dir)
  batches = shifted_stream.source_batches(config, mesh, src, where=f"{name} {split}")
  return bank_lib.extract_batches(model, state, mesh, batches, src.sizes,
                                  name=f"extract {name} {split}")


def evaluate_target(config, model, state, mesh, name: str, *, data_dir: str | None = None,
                    k: int = 20, temperature: float = 0.07,
                    shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                    lam: float = 1e-3) -> dict[str, Any]:
  """`transfer.<name>` of results.json: {"dataset", "num_train", "num_test", "num_classes",
  "knn_accuracy", "few_shot": {"<s>shot": {"mean", "std", "per_seed"} or None}, "timing_s"}.

  kNN: cosine, `k` neighbours, temperature `temperature` (`knn.knn_predict`). Few-shot: the
  authors' ridge (L2-normalised features + bias, one-hot, λ = `lam`), balanced draws of `shots`
  per class for each of `seeds` (`probes.few_shot_ridge`); a shot count above the smallest
  train class is reported None.
  """
  took: dict[str, float] = {}
  with progress.timed(took, name):
    t = transfer.target(name)
    _prepare(name, data_dir)
    train = _bank(config, model, state, mesh, name, t.train_split, data_dir)
    test = _bank(config, model, state, mesh, name, t.test_split, data_dir)
    knn = knn_lib.knn_predict(train, test, num_classes=t.num_classes, ks=(k,),
                              temperature=temperature, name=f"knn {name}")
    smallest = int(np.bincount(train.host("labels"), minlength=t.num_classes).min())
    possible = [int(s) for s in shots if s <= smallest]
    few = probes.few_shot_ridge(train, test, num_classes=t.num_classes, shots=possible,
                                seeds=seeds, lam=lam) if possible else {"shots": {}}
  return {
      "dataset": t.tfds_name, "train_split": t.train_split, "test_split": t.test_split,
      "num_train": train.num_examples, "num_test": test.num_examples,
      "num_classes": t.num_classes, "licence": t.licence,
      "knn_accuracy": knn["accuracy"][k],
      "few_shot": {f"{s}shot": few["shots"].get(s) for s in (int(s) for s in shots)},
      "smallest_train_class": smallest,
      "timing_s": round(took[name], 2)}


def protocol(config, *, k: int = 20, temperature: float = 0.07,
             shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
             lam: float = 1e-3) -> dict[str, Any]:
  """The transfer protocol, for results.json's "protocol"."""
  return {"input": f"centre square resized to {config.dataset.image_size} px, "
                   f"{config.dataset.channels} channel(s)",
          "features": "backbone, frozen, BatchNorm in inference mode",
          "knn": {"k": int(k), "temperature": float(temperature), "similarity": "cosine",
                  "bank": "the target's train split"},
          "few_shot": {"shots": [int(s) for s in shots], "seeds": [int(s) for s in seeds],
                       "lam": float(lam), "pool": "the target's train split"}}


def evaluate_transfer(config, model, state, mesh, names: Sequence[str], *,
                      data_dir: str | None = None, **protocol_kw) -> dict[str, Any]:
  """The transfer section: {"<name>": `evaluate_target`, ...} in the order given."""
  return {name: evaluate_target(config, model, state, mesh, name, data_dir=data_dir,
                                **protocol_kw) for name in check_names(names)}
