"""Frozen features of a whole split, and the online evaluation made from them.

`extract_features` runs the model in inference mode (BatchNorm running statistics) over the
padded eval stream, batch split over the mesh; the mask marks the padding rows so every example
counts once. Training uses `evaluate_online` for its periodic kNN / probe numbers; the workdir
evaluation (`eval_workdir`) uses `extract_features` for its train and test sets.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simlap import evaluators
from simlap import sharding
from simlap.data import eval_stream


def extract_features(config, model, state, mesh, split: str, *,
                     embeddings: bool = False) -> dict[str, np.ndarray]:
  """Frozen features of every example of `split`, padding rows included (see "mask").

  Returns host arrays over the padded split (N_pad rows): "features" (N_pad, F) pooled
  backbone features, "predictions" (N_pad,) online-probe argmax, "labels" (N_pad,), "mask"
  (N_pad,) bool (True = real example; each appears exactly once), with `embeddings` also
  "embeddings" (N_pad, D) projector outputs, and any extra label keys of the dataset (e.g.
  "coarse_label") under their own names.
  """
  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def features_fn(params, batch_stats, images):
    # Whole weights against split batches, also when the state is sharded (FSDP): XLA then
    # gathers the weights, never the activations. A no-op for a replicated state.
    params, batch_stats = jax.lax.with_sharding_constraint((params, batch_stats),
                                                           sharding.replicated(mesh))
    variables = {"params": params["model"], "batch_stats": batch_stats}
    out = model.apply(variables, images, train=False)
    res = {"features": out["features"], "predictions": jnp.argmax(out["probe_logits"], axis=-1)}
    if embeddings:  # otherwise XLA drops the projector: online eval pays nothing for it
      res["embeddings"] = out["embeddings"]
    return res

  cols: dict[str, list[jax.Array]] = {}
  for batch in eval_stream.eval_iterator(config, mesh, split):
    out = features_fn(state.params, state.batch_stats, batch["image"])
    out.update({"labels" if k == "label" else k: v for k, v in batch.items() if k != "image"})
    for name, value in out.items():
      cols.setdefault(name, []).append(value)
  gather = jax.jit(lambda *xs: jnp.concatenate(xs), out_shardings=sharding.replicated(mesh))
  return {name: np.asarray(gather(*xs)) for name, xs in cols.items()}


def evaluate_online(config, model, state, mesh, num_classes) -> dict[str, float]:
  """Test accuracy of the online probe and of kNN (k, T from config) on backbone features."""
  train = extract_features(config, model, state, mesh, config.dataset.train_split)
  test = extract_features(config, model, state, mesh, config.dataset.eval_split)
  mask = test["mask"]
  probe_acc = float(np.mean(test["predictions"][mask] == test["labels"][mask]))
  knn = evaluators.knn_accuracy(train["features"], train["labels"], test["features"],
                              test["labels"], num_classes=num_classes, ks=(config.knn_k,),
                              temperature=config.knn_temperature, train_mask=train["mask"],
                              test_mask=mask)
  return {"eval/probe_accuracy": probe_acc, "eval/knn_accuracy": float(knn[config.knn_k])}
