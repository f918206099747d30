"""Training batches: TFDS -> tf.data -> two augmented views per image -> global jax.Arrays.

Each process reads only its slice of a split (`tfds.split_for_jax_process`), and
`jax.make_array_from_process_local_data` assembles the global batch. Invariant: the stream is a
pure function of (seed, step), so `start_step=s` yields what an uninterrupted run yields from s
on: position p is example perm_e[p % n] of epoch e = p // n, perm_e keyed by (seed, e) (an index
shuffle, or seeded shuffled blocks for a TFRecord stream), and row r of step s augments with a
seed folded from (seed, s, r). docs/performance.md, "Input pipeline".
"""
from __future__ import annotations
from collections.abc import Iterator
import logging
import os
from typing import Any

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap.runtime import sharding
from simlap.data import augment
from simlap.data import datasets
from simlap.data import random_labels

_FOREVER = 2**62  # end of the infinite step / position ranges
# Tags that keep the independent random streams (order, class draws, views) apart.
_ORDER, _CLASSES, _MEMBERS, _VIEWS = 1, 2, 3, 4
ConfigDict = ml_collections.ConfigDict


def _memory_stream(arrays: dict[str, np.ndarray], config: ConfigDict, *, seed: int,
                   start_step: int, unique: int, process_count: int) -> tf.data.Dataset:
  """Unique examples from step `start_step` on, `unique` per step, by direct indexing."""
  d = config.dataset
  n = len(arrays["label"])
  tensors = {k: tf.constant(v) for k, v in arrays.items()}
  if d.classes_per_batch:
    return tf.data.Dataset.range(start_step, _FOREVER).map(
        _class_balanced_indices(arrays["label"], config, seed, unique, process_count)
    ).map(lambda idx: {k: tf.gather(v, idx) for k, v in tensors.items()}).unbatch()

  def step_examples(step):
    idx = _step_indices(step, unique, n, seed)
    return {k: tf.gather(v, idx) for k, v in tensors.items()}

  return tf.data.Dataset.range(start_step, _FOREVER).map(step_examples).unbatch()


def _step_indices(step: tf.Tensor, unique: int, n: int, seed: int) -> tf.Tensor:
  """(unique,) int64 example indices of `step`: position p is perm_e[p % n], e = p // n."""
  pos = step * unique + tf.range(unique, dtype=tf.int64)
  epoch = pos // n
  keys = tf.stack([tf.fill([unique], tf.constant(seed, tf.int64)),
                   tf.fill([unique], tf.constant(_ORDER, tf.int64)), epoch], axis=1)
  # The raw op: tf.random.experimental.index_shuffle mangles [n, 2] seeds (TF 2.21).
  return tf.raw_ops.RandomIndexShuffle(index=pos % n, seed=keys, rounds=4,
                                       max_index=tf.fill([unique], tf.constant(n - 1, tf.int64)))


def random_access(builder, config: ConfigDict) -> bool:
  """Whether a streamed split is read by index (ArrayRecord) rather than as a TFRecord stream."""
  if config.dataset.random_access is not None:
    return bool(config.dataset.random_access)
  return builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def _random_access_stream(builder, split: Any, config: ConfigDict, *, seed: int,
                          start_step: int, unique: int, with_ids: bool) -> tf.data.Dataset:
  """Unique examples read by index from ArrayRecord files (`tfds.data_source`), in the
  in-memory path's order: a fresh permutation of the whole slice every epoch, no shuffle
  buffer to refill, and starting at any step costs nothing."""
  d = config.dataset
  if d.classes_per_batch:
    raise ValueError(f"classes_per_batch needs an in-memory dataset; {d.name!r} is streamed")
  source = builder.as_data_source(split=split, decoders=datasets.decoders(builder, d.image_key))
  n = len(source)
  feature = builder.info.features[d.image_key]
  jpeg = datasets.decoders(builder, d.image_key) is not None
  labels = (d.label_key, *d.extra_label_keys)

  def fetch(idx):  # numpy (unique,) int64 -> image bytes or pixels, int32 labels
    examples = [source[int(i)] for i in idx]
    images = (np.array([ex[d.image_key] for ex in examples], object) if jpeg
              else np.stack([ex[d.image_key] for ex in examples]))
    return [images, *(np.array([ex[k] for ex in examples], np.int32) for k in labels)]

  def step_examples(step):
    idx = _step_indices(step, unique, n, seed)
    out = tf.numpy_function(fetch, [idx], [tf.string if jpeg else tf.uint8] +
                            [tf.int32] * len(labels), stateful=False)
    ex = {"image": tf.ensure_shape(out[0], [unique] + ([] if jpeg else list(feature.shape)))}
    ex.update({k: tf.ensure_shape(v, [unique]) for k, v in zip(
        ("label", *d.extra_label_keys), out[1:])})
    if with_ids:
      ex["tfds_id"] = tf.strings.as_string(idx)
    return ex

  # Parallel fetches: a numpy_function holds the GIL only around the Python list building;
  # ArrayRecord reads release it.
  return tf.data.Dataset.range(start_step, _FOREVER).map(
      step_examples, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _class_balanced_indices(labels: np.ndarray, config: ConfigDict, seed: int, unique: int,
                            process_count: int):
  """P x K sampler: every step draws P classes (same on all processes) and, per class, K / (
  processes * repeats) distinct local examples; draws are independent across steps."""
  d = config.dataset
  p, k, c = d.classes_per_batch, d.samples_per_class, d.num_classes
  per_class = k // (process_count * d.repeats)
  if p * k != config.batch_size or per_class * process_count * d.repeats != k or p > c:
    raise ValueError(
        f"classes_per_batch={p} x samples_per_class={k} must equal batch_size="
        f"{config.batch_size}, with samples_per_class a multiple of processes x repeats "
        f"({process_count} x {d.repeats}) and classes_per_batch <= num_classes={c}")
  counts = np.bincount(labels, minlength=c)
  if counts.min() < per_class:
    raise ValueError(f"class {int(counts.argmin())} has {int(counts.min())} examples in this "
                     f"process's split, fewer than the {per_class} per batch the sampler needs")
  order = tf.constant(np.argsort(labels, kind="stable"), tf.int64)
  starts = tf.constant(np.cumsum(counts) - counts, tf.int64)
  counts = tf.constant(counts, tf.int64)

  def indices(step):
    classes = tf.raw_ops.RandomIndexShuffle(
        index=tf.range(p, dtype=tf.int64), seed=tf.constant([seed, _CLASSES, 0], tf.int64) +
        tf.stack([0, 0, step]), max_index=tf.constant(c - 1, tf.int64), rounds=4)
    cls = tf.repeat(classes, per_class)
    keys = tf.stack([tf.fill([unique], tf.constant(seed, tf.int64)),
                     tf.fill([unique], tf.constant(_MEMBERS, tf.int64)), step * c + cls], axis=1)
    j = tf.tile(tf.range(per_class, dtype=tf.int64), [p])
    k_idx = tf.raw_ops.RandomIndexShuffle(index=j, seed=keys, max_index=tf.gather(counts, cls) - 1,
                                          rounds=4)
    return tf.gather(order, tf.gather(starts, cls) + k_idx)

  return indices


def _disk_stream(builder, split: Any, config: ConfigDict, *, seed: int, start_step: int,
                 unique: int, with_ids: bool) -> tf.data.Dataset:
  """Unique examples streamed from TFRecord files in shuffled blocks.

  The process's slice is cut into nb blocks of about `dataset.shuffle_buffer` consecutive
  records (`tfds.even_splits`). Epoch e visits the blocks in a permutation keyed by (seed, e)
  and each block in a shuffle keyed by (seed, e, block), so stream position p is a pure
  function of the seed. The next block is read while the current one drains, across epoch
  boundaries too: no epoch refills a buffer from scratch, and at most two blocks are held.
  A resume opens the block that holds its position and skips less than one block in it.
  """
  d = config.dataset
  if d.classes_per_batch:
    raise ValueError(f"classes_per_batch needs an in-memory dataset; {d.name!r} is streamed")
  n = datasets.num_examples(builder, split)
  nb = max(1, -(-n // d.shuffle_buffer))
  blocks = tfds.even_splits(split, n=nb) if nb > 1 else [split]
  sizes = [n // nb + (i < n % nb) for i in range(nb)]  # even_splits: the larger blocks first
  read = lambda b: builder.as_dataset(  # noqa: E731
      split=b, shuffle_files=False, decoders=datasets.decoders(builder, d.image_key),
      read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=with_ids)).map(
          lambda ex: datasets.pick(ex, d, with_ids))
  block_datasets = [read(b) for b in blocks]
  order_seed = lambda e: tf.random.experimental.stateless_fold_in(  # noqa: E731
      tf.constant([seed, _ORDER], tf.int64), e)

  def block(g):  # g = e * nb + k: the k-th block of epoch e, shuffled whole
    e = g // nb
    b = tf.random.experimental.index_shuffle(g % nb, order_seed(e), nb - 1)
    chosen = tf.data.Dataset.choose_from_datasets(
        block_datasets, tf.data.Dataset.from_tensors(b).repeat())
    key = tf.random.experimental.stateless_fold_in(order_seed(e), b)
    return chosen.shuffle(max(sizes), seed=tf.cast(key[0], tf.int64) * (2**31) + tf.cast(
        key[1], tf.int64))

  epoch, pos = divmod(start_step * unique, n)
  k, offset = 0, pos
  first_order = [int(tf.random.experimental.index_shuffle(i, order_seed(epoch), nb - 1))
                 for i in range(nb)]
  while offset >= sizes[first_order[k]]:
    offset -= sizes[first_order[k]]
    k += 1
  return tf.data.Dataset.range(epoch * nb + k, _FOREVER).interleave(
      block, cycle_length=2, block_length=max(sizes), num_parallel_calls=2,
      deterministic=True).skip(offset)


def view_dtype(config: ConfigDict, builder) -> str:
  """"uint8" or "float32": the dtype of the views this config's stream yields (see
  config.dataset.view_dtype; the auto choice is uint8 exactly when the split is streamed)."""
  if config.dataset.view_dtype is not None:
    return config.dataset.view_dtype
  return "float32" if datasets.in_memory(builder, config) else "uint8"


def colour_stage(config: ConfigDict, dtype: str) -> str:
  """"host" or "device": where colour jitter, grayscale, blur and solarize run for views of
  `dtype` (config.augment.colour_stage; the auto choice is the device exactly for uint8)."""
  if config.augment.colour_stage is not None:
    return config.augment.colour_stage
  return "device" if dtype == "uint8" else "host"


def _quantised(x: tf.Tensor) -> tf.Tensor:
  """float [0, 1] -> uint8 {0, ..., 255}, rounded."""
  return tf.cast(tf.round(x * 255), tf.uint8)


def reader(builder, config: ConfigDict) -> str:
  """How the train split is read, for the run's log: "memory", "random_access" or "stream"."""
  if datasets.in_memory(builder, config):
    return "memory"
  return "random_access" if random_access(builder, config) else "stream"


_READER_LOG = {
    "memory": "in memory, a permutation per epoch, free resume",
    "random_access": "by index from ArrayRecord (tfds.data_source), a permutation per epoch, "
                     "free resume",
    "stream": "TFRecord stream in shuffled blocks of {} records, a block order per epoch, "
              "resume reads one block (prepare with --file_format=array_record for random "
              "access)",
}


def local_train_dataset(config: ConfigDict, *, seed: int, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        with_ids: bool = False) -> tf.data.Dataset:
  """This process's training rows: a tf.data.Dataset of dicts of local batches.

  Batches hold `config.batch_size / process_count` rows: `view1`, `view2` (b, size, size, C),
  float32 in [0, 1] or uint8 in [0, 255] (`view_dtype`); where the colour stage runs on the
  device (`colour_stage`), these are the crops before it and `view1_colour`, `view2_colour`
  (b, P) float32 hold each view's packed parameters (`augment.pack_params`); `label` int32
  (b,), the extra labels int32 (b,), and with `with_ids` the TFDS example id `tfds_id` (string,
  for tests). Rows are in global-batch order: process p holds rows [p * b, (p + 1) * b).
  """
  d = config.dataset
  pi, pc = datasets.processes(process_index, process_count)
  builder, num_classes, _ = datasets.validated(config)
  local = datasets.rows_per_process(config.batch_size, None, pc, "batch_size", d.repeats)
  unique = local // d.repeats
  split = tfds.split_for_jax_process(d.train_split, process_index=pi, process_count=pc)

  in_memory = datasets.in_memory(builder, config)
  if d.random_labels and not in_memory:
    raise ValueError(f"config.dataset.random_labels needs an in-memory train split; {d.name!r} "
                     "is streamed (set config.dataset.in_memory=True if it fits)")
  if in_memory:
    arrays = datasets.load_arrays(builder, split, d, with_ids)
    if arrays["image"].dtype != object:  # decoded: the real shape is known now
      datasets.check_image_shape(config, arrays["image"].shape[1:], f"{d.name} {d.train_split}")
    datasets.check_labels(arrays["label"], num_classes, f"{d.name} {d.train_split}")
    for k in d.extra_label_keys:
      if isinstance(builder.info.features[k], tfds.features.ClassLabel):
        datasets.check_labels(arrays[k], builder.info.features[k].num_classes, f"{d.name} {k}")
    if d.random_labels:  # the random-label control; the true labels ride along
      arrays = {**arrays, "true_label": arrays["label"],
                "label": random_labels.process_labels(builder, config, pi, pc)}
    ds = _memory_stream(arrays, config, seed=seed, start_step=start_step, unique=unique,
                        process_count=pc)
  else:
    stream = _random_access_stream if random_access(builder, config) else _disk_stream
    ds = stream(builder, split, config, seed=seed, start_step=start_step, unique=unique,
                with_ids=with_ids)

  if d.repeats > 1:
    ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(d.repeats))
  # Global row position q = step * local + row; the view seeds fold in (step, global row).
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(start_step * local, _FOREVER))
  views = (config.augment.view1.to_dict(), config.augment.view2.to_dict())
  base_seed = tf.constant([seed, _VIEWS], tf.int64)

  dtype = view_dtype(config, builder)
  uint8, on_device = dtype == "uint8", colour_stage(config, dtype) == "device"

  def two_views(ex, q):
    ex_seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(base_seed, q // local), pi * local + q % local)
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(ex_seed, 2))
    image = ex.pop("image")
    for name, s, v in (("view1", s1, views[0]), ("view2", s2, views[1])):
      first = augment.first_stage(image, s, v, size=d.image_size, channels=d.channels)
      if on_device:  # the crop and its drawn parameters; the step does the rest
        ex[name] = _quantised(first["image"]) if uint8 else first["image"]
        ex[name + "_colour"] = augment.pack_params(first, d.channels)
      else:
        ex[name] = first
    return ex

  def colour(batch):  # the pixel-heavy ops, one call per batch (see augment's docstring)
    for name, v in (("view1", views[0]), ("view2", views[1])):
      batch[name] = augment.second_stage(batch[name], v)
      if uint8:  # the step maps it back (training.step.device_views)
        batch[name] = _quantised(batch[name])
    return batch

  ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True)
  if not on_device:
    ds = ds.map(colour, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.with_options(pipeline_options()).prefetch(tf.data.AUTOTUNE)


def pipeline_options(threads: int | None = None) -> tf.data.Options:
  """big_vision's tf.data options: a private thread pool for this pipeline (not TF's global
  inter-op pool) and single-threaded ops inside it, so parallelism comes from tf.data's
  parallel maps and not from ops oversubscribing the cores (docs/performance.md)."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = threads or os.cpu_count()
  options.threading.max_intra_op_parallelism = 1
  return options


def train_iterator(config: ConfigDict, mesh: Mesh, *, seed: int, start_step: int = 0,
                   process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[dict[str, jax.Array]]:
  """Infinite global training batches, step `start_step` first.

  Each batch: `view1`, `view2` (B, size, size, C) float32 in [0, 1] or uint8 (`view_dtype`),
  with `view1_colour`, `view2_colour` (B, P) where the colour stage runs on the device
  (`local_train_dataset`), `label` int32 (B,) and
  each of config.dataset.extra_label_keys int32 (B,), all sharded over the mesh batch axis,
  B = config.batch_size. Validation (dataset prepared, shapes, labels, batch divisibility)
  happens here, before the first batch is requested. With simulated processes
  (`process_count` != jax.process_count(), tests) arrays hold this process's rows only.
  """
  _, pc = datasets.processes(process_index, process_count)
  datasets.rows_per_process(config.batch_size, mesh, pc, "batch_size", config.dataset.repeats)
  ds = local_train_dataset(config, seed=seed, start_step=start_step, process_index=process_index,
                           process_count=process_count)
  builder, num_classes, _ = datasets.validated(config)
  how = reader(builder, config)
  dtype = view_dtype(config, builder)
  logging.info("train input: %s, %s views, colour stage on the %s, read %s",
               config.dataset.name, dtype, colour_stage(config, dtype),
               _READER_LOG[how].format(config.dataset.shuffle_buffer))

  def checked():  # in-memory splits were checked whole; streamed ones are checked per batch
    for batch in ds.as_numpy_iterator():
      datasets.check_labels(batch["label"], num_classes, f"{config.dataset.name} train batch")
      yield batch

  return sharding.global_batches(checked(), mesh, config.dataset.prefetch)


