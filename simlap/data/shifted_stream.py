"""Eval batches of images the run was not trained on: its eval split under a corruption
(robustness) or another dataset converted to its input (transfer).

`SourceEvalIterator` keeps `eval_stream.EvalIterator`'s contract (each process its contiguous
slice, every example once, padded to whole global batches with `mask` False, as many batches on
every process) over a tf.data source of fixed-size uint8 images, with an optional NumPy hook on
each uint8 batch before the eval transform: the corruption. The hook is told the split position
of the batch's first row, so a corruption never depends on the batching or the process count.
"""
from __future__ import annotations
from collections.abc import Callable, Iterator
import dataclasses
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
from simlap.data import transfer

ConfigDict = ml_collections.ConfigDict
# (images uint8 (B, H, W, C), split position of row 0) -> images uint8 (B, H, W, C)
ImageHook = Callable[[np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Source:
  """This process's examples of a split, and what the eval transform must still do."""
  dataset: tf.data.Dataset  # {"image": uint8 (H, W, C) of one fixed shape, "label": int}
  sizes: tuple[int, ...]  # real examples in each process's slice, in process order
  crop_fraction: float  # of the eval view applied after the hook
  num_classes: int


class SourceEvalIterator:
  """Re-iterable eval batches of a `Source`: `image` float32 (E, size, size, C) in [0, 1],
  `label` int32 (E,), `mask` bool (E,); `len()` batches, the same on every process."""

  def __init__(self, config: ConfigDict, mesh: Mesh, source: Source, *,
               hook: ImageHook | None = None, where: str = "eval source"):
    self._pi, pc = datasets.processes(None, None)
    self._config, self._mesh, self._source, self._hook, self._where = (config, mesh, source,
                                                                       hook, where)
    self._local = datasets.rows_per_process(config.eval_batch_size, mesh, pc, "eval_batch_size")
    self._num_batches = max(1, math.ceil(max(source.sizes) / self._local))

  def __len__(self) -> int:
    return self._num_batches

  def local_dataset(self) -> tf.data.Dataset:
    """This process's rows, padded to len(self) full local batches."""
    d, local, src = self._config.dataset, self._local, self._source
    start, count = sum(src.sizes[:self._pi]), src.sizes[self._pi]
    ds = src.dataset.map(lambda ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32),
                                     "mask": tf.constant(True)})
    pad = self._num_batches * local - count
    ds = ds.concatenate(tf.data.Dataset.range(pad).map(
        lambda _: {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}))
    ds = ds.batch(local, drop_remainder=True)
    if self._hook is not None:
      hook = self._hook

      def apply(i, ex):
        run = lambda x, b: hook(x, start + int(b) * local)  # noqa: E731
        image = tf.numpy_function(run, [ex["image"], i], tf.uint8, stateful=False)
        return {**ex, "image": tf.ensure_shape(image, ex["image"].shape)}

      ds = ds.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda ex: {**ex, "image": augment.eval_view(
        ex["image"], size=d.image_size, channels=d.channels, crop_fraction=src.crop_fraction)},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    def checked():
      for batch in self.local_dataset().as_numpy_iterator():
        datasets.check_labels(batch["label"], self._source.num_classes, self._where,
                              batch["mask"])
        yield batch

    return sharding.global_batches(checked(), self._mesh, self._config.dataset.prefetch)


def _slices(builder, split: str) -> tuple[str, tuple[int, ...]]:
  """(this process's sub-split, the example count of every process's)."""
  pi, pc = datasets.processes(None, None)
  sizes = tuple(datasets.num_examples(builder, tfds.split_for_jax_process(
      split, process_index=i, process_count=pc)) for i in range(pc))
  return tfds.split_for_jax_process(split, process_index=pi, process_count=pc), sizes


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(x * 255), tf.uint8)


def split_source(config: ConfigDict, split: str, *,
                 builder: tfds.core.DatasetBuilder | None = None,
                 resized_by_builder: bool = False) -> Source:
  """`split` of the configured dataset (or of `builder`, with the config's feature keys) as
  uint8 images ready for a corruption. `resized_by_builder`: the stored images already are the
  eval crop (imagenet2012_corrupted), so only a resize follows.

  Fixed-size images (Fashion-MNIST, CIFAR) are corrupted as stored, as CIFAR-10-C corrupts
  CIFAR-10's 32-px images; images of varying size (ImageNet) after the run's eval view (resize
  and centre crop to the input size, rounded to uint8), as ImageNet-C corrupts the 224-px centre
  crops. The eval transform after the hook is then the run's own for fixed-size images, and
  only a resize (crop fraction 1) otherwise.
  """
  d = config.dataset
  builder = builder or datasets.prepared_builder(config)
  local_split, sizes = _slices(builder, split)
  shape = tuple(builder.info.features[d.image_key].shape)
  fixed = None not in shape
  if fixed and datasets.in_memory(builder, config):
    arrays = datasets.load_arrays(builder, local_split, d, with_ids=False)
    ds = tf.data.Dataset.from_tensor_slices({"image": arrays["image"], "label": arrays["label"]})
  else:
    ds = builder.as_dataset(split=local_split, shuffle_files=False,
                            decoders=datasets.decoders(builder, d.image_key),
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ex: datasets.pick(ex, d, with_ids=False))
  crop = 1.0 if resized_by_builder else float(config.augment.eval_crop_fraction)

  def base(ex):
    image = ex["image"]
    if fixed:
      if image.dtype == tf.string:
        image = tf.ensure_shape(tf.io.decode_image(image, channels=shape[-1],
                                                   expand_animations=False), shape)
    else:
      image = _to_uint8(augment.eval_view(image, size=d.image_size, channels=d.channels,
                                          crop_fraction=crop))
    return {"image": image, "label": ex["label"]}

  ds = ds.map(base, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return Source(ds, sizes, crop if fixed else 1.0, int(d.num_classes))


def transfer_source(config: ConfigDict, name: str, split: str,
                    data_dir: str | None = None) -> Source:
  """`split` of transfer target `name`, converted to the run's input (`transfer.to_run_input`:
  centre square, resized, channels matched); the eval transform after it is the identity."""
  t = transfer.target(name)
  builder = transfer.prepared_builder(name, data_dir)
  local_split, sizes = _slices(builder, split)
  d = config.dataset
  ds = builder.as_dataset(split=local_split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.map(lambda ex: {"image": transfer.to_run_input(ex["image"], size=d.image_size,
                                                         channels=d.channels),
                          "label": ex["label"]},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return Source(ds, sizes, 1.0, t.num_classes)


def source_batches(config: ConfigDict, mesh: Mesh, source: Source, *,
                   hook: ImageHook | None = None, where: str = "eval source"
                   ) -> SourceEvalIterator:
  """Eval batches of `source` (see `SourceEvalIterator`)."""
  return SourceEvalIterator(config, mesh, source, hook=hook, where=where)
