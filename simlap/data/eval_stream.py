"""Eval batches: every example of a split exactly once, padded to whole global batches.

Padding rows carry `mask` False, so evaluators count every real example once whatever the
device count; every process yields the same number of batches (collectives stay in step).
"""
from __future__ import annotations
from collections.abc import Iterator
import functools
import math

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap.runtime import sharding
from simlap.data import augment
from simlap.data import datasets

ConfigDict = ml_collections.ConfigDict


def num_eval_batches(config: ConfigDict, split: str | None = None, *,
                     process_count: int | None = None) -> int:
  """Batches every process yields for `split`: ceil(largest process slice / local batch)."""
  _, pc = datasets.processes(0, process_count)
  builder = datasets.prepared_builder(config)
  split = split or config.dataset.eval_split
  local = datasets.rows_per_process(config.eval_batch_size, None, pc, "eval_batch_size")
  largest = max(datasets.num_examples(builder, tfds.split_for_jax_process(
      split, process_index=i, process_count=pc)) for i in range(pc))
  return math.ceil(largest / local)


class EvalIterator:
  """Re-iterable eval batches; `len()` is the number of batches (the same on every process).

  Each batch: `image` float32 (E, size, size, C) in [0, 1] (the eval transform), `label` int32
  (E,), extra labels int32 (E,), `mask` bool (E,), False on padding rows; E =
  config.eval_batch_size. Every example of the split appears exactly once with mask True.
  """

  def __init__(self, config: ConfigDict, mesh: Mesh, split: str | None = None, *,
               process_index: int | None = None, process_count: int | None = None):
    d = config.dataset
    self._mesh, self._prefetch = mesh, d.prefetch
    self._pi, self._pc = datasets.processes(process_index, process_count)
    self._split = split or d.eval_split
    self._builder, self._num_classes, _ = datasets.validated(config)
    self._local = datasets.rows_per_process(config.eval_batch_size, mesh, self._pc,
                                            "eval_batch_size")
    self._num_batches = num_eval_batches(config, self._split, process_count=self._pc)
    self._config = config

  def __len__(self) -> int:
    return self._num_batches

  def local_dataset(self) -> tf.data.Dataset:
    """This process's rows, padded to len(self) full local batches."""
    d, local = self._config.dataset, self._local
    split = tfds.split_for_jax_process(self._split, process_index=self._pi,
                                       process_count=self._pc)
    transform = functools.partial(augment.eval_view, size=d.image_size, channels=d.channels,
                                  crop_fraction=self._config.augment.eval_crop_fraction)
    per_example = lambda ds: ds.map(  # noqa: E731
        lambda ex: {**ex, "image": transform(ex["image"])},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if datasets.in_memory(self._builder, self._config):
      # Shares the cached arrays with the training pipeline (kNN reads the train split too).
      # Padding rows copy row 0 (a valid image, even as JPEG bytes) and carry mask False.
      arrays = dict(datasets.load_arrays(self._builder, split, d, with_ids=False))
      n = len(arrays["label"])
      pad = self._num_batches * local - n
      arrays = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in arrays.items()}
      arrays["mask"] = np.arange(n + pad) < n
      ds = tf.data.Dataset.from_tensor_slices(arrays)
      if arrays["image"].dtype == object:  # JPEG bytes: decode one at a time
        return per_example(ds).batch(local).prefetch(tf.data.AUTOTUNE)
      # Fixed-size decoded images: transform whole batches, far cheaper per image.
      ds = ds.batch(local).map(lambda ex: {**ex, "image": transform(ex["image"])})
      return ds.prefetch(tf.data.AUTOTUNE)
    ds = self._builder.as_dataset(split=split, shuffle_files=False,
                                  decoders=datasets.decoders(self._builder, d.image_key),
                                  read_config=tfds.ReadConfig(try_autocache=False))
    ds = per_example(ds.map(lambda ex: {**datasets.pick(ex, d, with_ids=False),
                                        "mask": tf.constant(True)}))
    pad = self._num_batches * local - datasets.num_examples(self._builder, split)
    ds = ds.concatenate(tf.data.Dataset.range(pad).map(
        lambda _: {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}))
    return ds.batch(local).prefetch(tf.data.AUTOTUNE)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    where = f"{self._config.dataset.name} {self._split}"

    def checked():
      for batch in self.local_dataset().as_numpy_iterator():
        datasets.check_labels(batch["label"], self._num_classes, where, batch["mask"])
        yield batch

    return sharding.global_batches(checked(), self._mesh, self._prefetch)


def eval_iterator(config: ConfigDict, mesh: Mesh, split: str | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> EvalIterator:
  """Eval batches of `split` (default config.dataset.eval_split); see `EvalIterator`."""
  return EvalIterator(config, mesh, split, process_index=process_index,
                      process_count=process_count)
