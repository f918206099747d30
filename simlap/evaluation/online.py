"""The training loop's periodic evaluation: online-probe and kNN test accuracy.

Both splits are extracted into row-sharded banks (simlap/evaluation/bank.py) and the kNN runs
distributed (knn.py), so an ImageNet-size evaluation fits a chip whatever the slice. The stop
check is asked between blocks (extraction batches, kNN query blocks): a preemption notice
during an evaluation ends it within one block (`progress.Interrupted`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from simlap.evaluation import bank as bank_lib
from simlap.evaluation import knn as knn_lib


@jax.jit
def _masked_accuracy(pred, labels, mask):
  return jnp.sum((pred == labels) & mask) / jnp.maximum(jnp.sum(mask), 1)


def evaluate_online(config, model, state, mesh, num_classes: int, *,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
  """{"eval/probe_accuracy", "eval/knn_accuracy"} on the test split (kNN k, T from config).

  Args:
    config, model, state, mesh: the run's config, model, train state and mesh.
    num_classes: C.
    should_stop: asked between blocks; raises `progress.Interrupted` when it says so.
  """
  times = {}
  train = bank_lib.extract_bank(config, model, state, mesh, config.dataset.train_split,
                                should_stop=should_stop, timings=times)
  test = bank_lib.extract_bank(config, model, state, mesh, config.dataset.eval_split,
                               should_stop=should_stop, timings=times)
  probe = float(_masked_accuracy(test["predictions"], test["labels"], test["mask"]))
  knn = knn_lib.knn_predict(train, test, num_classes=num_classes, ks=(config.knn_k,),
                            temperature=config.knn_temperature, should_stop=should_stop,
                            timings=times)
  logging.info("online evaluation times: %s", ", ".join(f"{k} {v:.1f} s" for k, v in
                                                         times.items()))
  return {"eval/probe_accuracy": probe, "eval/knn_accuracy": knn["accuracy"][config.knn_k]}
