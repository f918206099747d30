"""TFDS -> tf.data -> global jax.Arrays: two augmented training views, and eval batches.

Each process reads only its own slice of a split (`tfds.split_for_jax_process`), builds its
local rows with tf.data, and `jax.make_array_from_process_local_data` assembles the global batch
sharded over the mesh's batch axis.

Determinism. The training stream is a pure function of (seed, step):
  * Order. Each process sees an infinite stream of its examples, epoch after epoch; stream
    position p is example `perm_e[p % n]` of epoch e = p // n. In-memory datasets (the default
    whenever the split fits in `_IN_MEMORY_MAX_BYTES`) compute `perm_e` per element with the
    stateless, O(1) `RandomIndexShuffle` op keyed by (seed, epoch), and read by direct indexing,
    so starting at any step costs nothing. Larger datasets (ImageNet) are streamed from TFDS in
    a fixed file order through a shuffle buffer seeded by (seed, epoch); resuming at step s
    re-reads (without decoding: JPEG bytes are only parsed) the examples of the current epoch
    before s, i.e. at most one epoch of records, and never earlier epochs.
  * Augmentation. The row at position r of the global batch at step s draws its randomness
    from a seed folded from (seed, s, r); `repeats` copies of an image sit at different rows,
    so they get independent views.
  A run started with `start_step=s` therefore yields the batches an uninterrupted run yields
  from s on.
"""
from collections.abc import Iterator, Mapping
import collections
import dataclasses
import functools
import math
from typing import Any

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap import sharding
from simlap.data import augment
from simlap.data import fashion_mnist

# TensorFlow only feeds the host pipeline; it must never take GPU memory away from JAX.
tf.config.set_visible_devices([], "GPU")

_IN_MEMORY_MAX_BYTES = 1 << 30  # larger splits are streamed (see module docstring)
_FOREVER = 2**62  # end of the infinite step / position ranges
# Tags that keep the independent random streams (order, class draws, views) apart.
_ORDER, _CLASSES, _MEMBERS, _VIEWS = 1, 2, 3, 4
ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and evaluators need to know about the configured dataset."""
  num_classes: int
  class_names: tuple[str, ...]
  num_train: int
  num_eval: int
  image_shape: tuple[int | None, ...]  # (H, W, C) as stored; H, W None for variable size
  extra_label_keys: tuple[str, ...]


# ---- dataset and validation -------------------------------------------------------------------

def _builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder, prepared; raises if that would need a download the config forbids."""
  d = config.dataset
  if d.name == fashion_mnist.NAME:
    return fashion_mnist.prepare(d.data_dir, d.source_dir)
  try:
    builder = tfds.builder(d.name, data_dir=d.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    # TFDS's own message lists every registered dataset (thousands of lines); name the value.
    raise ValueError(f"config.dataset.name={d.name!r} is neither {fashion_mnist.NAME!r} nor a "
                     "TFDS dataset name (e.g. 'cifar10', 'imagenet2012')") from None
  if not builder.is_prepared():
    if not (d.download or d.manual_dir):
      raise ValueError(
          f"dataset {d.name!r} is not prepared in {builder.data_dir} and "
          "config.dataset.download is False, so nothing was downloaded. Prepare it first: "
          f"`tfds build {d.name} --data_dir={d.data_dir or '~/tensorflow_datasets'}` "
          "(imagenet2012: put the ILSVRC2012 tars in a directory and set "
          "config.dataset.manual_dir to it), point config.dataset.data_dir at an existing "
          "TFDS data dir, or set config.dataset.download=True.")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=d.manual_dir, try_download_gcs=bool(d.download)))
  return builder


def _num_examples(builder: tfds.core.DatasetBuilder, split: Any) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # splits unknown (e.g. tfds.testing.mock_data): ask the reader
    return int(builder.as_dataset(split=split).cardinality())


def _label_info(config: ConfigDict, builder) -> tuple[int, tuple[str, ...]]:
  d = config.dataset
  features = builder.info.features
  for key in (d.image_key, d.label_key, *d.extra_label_keys):
    if key not in features:
      raise ValueError(f"dataset {d.name!r} has no feature {key!r}; it has {list(features)}")
  label = features[d.label_key]
  if isinstance(label, tfds.features.ClassLabel):
    if label.num_classes != d.num_classes:
      raise ValueError(
          f"config.dataset.num_classes={d.num_classes} but dataset {d.name!r} has "
          f"{label.num_classes} classes in {d.label_key!r}")
    return label.num_classes, tuple(label.names)
  # A plain integer label: the config is the only source; labels are range-checked on read.
  return d.num_classes, tuple(str(i) for i in range(d.num_classes))


def _check_image_shape(config: ConfigDict, shape: tuple[Any, ...], where: str) -> None:
  d = config.dataset
  if len(shape) != 3:
    raise ValueError(f"{where}: image {d.image_key!r} has shape {tuple(shape)} (rank "
                     f"{len(shape)}); expected rank 3 (H, W, C)")
  if shape[-1] is not None and shape[-1] != d.channels:
    raise ValueError(f"{where}: image {d.image_key!r} has {shape[-1]} channels but "
                     f"config.dataset.channels={d.channels}")


def check_labels(labels: np.ndarray, num_classes: int, where: str,
                 mask: np.ndarray | None = None) -> None:
  """Raises ValueError naming the first label outside [0, num_classes)."""
  labels = np.asarray(labels if mask is None else labels[mask])
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{where}: label {int(bad[0])} outside [0, {num_classes}) "
                     f"({bad.size} such labels); check config.dataset.num_classes")


def _validated(config: ConfigDict) -> tuple[tfds.core.DatasetBuilder, int, tuple[str, ...]]:
  """(prepared builder, num_classes, class names), after checking features against config."""
  builder = _builder(config)
  num_classes, names = _label_info(config, builder)
  d = config.dataset
  _check_image_shape(config, tuple(builder.info.features[d.image_key].shape), repr(d.name))
  return builder, num_classes, names


def get_dataset_info(config: ConfigDict) -> DatasetInfo:
  """Prepares the dataset if it is the embedded one, validates the config against it."""
  builder, num_classes, names = _validated(config)
  d = config.dataset
  image_shape = tuple(builder.info.features[d.image_key].shape)
  return DatasetInfo(
      num_classes=num_classes, class_names=names,
      num_train=_num_examples(builder, d.train_split),
      num_eval=_num_examples(builder, d.eval_split), image_shape=image_shape,
      extra_label_keys=tuple(d.extra_label_keys))


def _decoders(builder, image_key: str) -> dict[str, Any] | None:
  """JPEG images stay bytes, so augmentations can decode only their crop window."""
  feature = builder.info.features[image_key]
  if isinstance(feature, tfds.features.Image) and feature.encoding_format == "jpeg":
    return {image_key: tfds.decode.SkipDecoding()}
  return None


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f"process_index={pi} not in [0, process_count={pc})")
  return pi, pc


def _rows_per_process(batch: int, mesh: Mesh | None, pc: int, name: str,
                      repeats: int = 1) -> int:
  """Rows each process contributes; raises unless they split over its devices and repeats."""
  if mesh is not None:
    sharding.check_batch_divisible(batch, mesh)
  # Simulated processes (tests) keep every device local: their rows split over all of them.
  devices = 1 if mesh is None else sharding.num_batch_shards(mesh) // (
      jax.process_count() if pc == jax.process_count() else 1)
  local = batch // pc
  if batch % pc or local % devices or local % repeats:
    raise ValueError(f"{name}={batch} does not split into {pc} process(es) x {devices} "
                     f"device(s) with repeats={repeats}")
  return local


# ---- training ---------------------------------------------------------------------------------

def _pick(ex: Mapping[str, tf.Tensor], d: ConfigDict, with_ids: bool) -> dict[str, tf.Tensor]:
  """Keeps the image and int32 labels (and the example id for tests)."""
  out = {"image": ex[d.image_key], "label": tf.cast(ex[d.label_key], tf.int32)}
  out.update({k: tf.cast(ex[k], tf.int32) for k in d.extra_label_keys})
  if with_ids:
    out["tfds_id"] = ex["tfds_id"]
  return out


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
    pos = step * unique + tf.range(unique, dtype=tf.int64)
    epoch = pos // n
    keys = tf.stack([tf.fill([unique], tf.constant(seed, tf.int64)),
                     tf.fill([unique], tf.constant(_ORDER, tf.int64)), epoch], axis=1)
    # The raw op: tf.random.experimental.index_shuffle mangles [n, 2] seeds (TF 2.21).
    idx = tf.raw_ops.RandomIndexShuffle(index=pos % n, seed=keys, rounds=4,
                                        max_index=tf.fill([unique], tf.constant(n - 1, tf.int64)))
    return {k: tf.gather(v, idx) for k, v in tensors.items()}

  return tf.data.Dataset.range(start_step, _FOREVER).map(step_examples).unbatch()


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
  """Unique examples streamed from TFDS: fixed file order, shuffle buffer seeded per epoch."""
  d = config.dataset
  if d.classes_per_batch:
    raise ValueError(f"classes_per_batch needs an in-memory dataset; {d.name!r} is streamed")
  base = builder.as_dataset(
      split=split, shuffle_files=False, decoders=_decoders(builder, d.image_key),
      read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=with_ids))
  n = int(base.cardinality())
  if n <= 0:
    n = _num_examples(builder, split)
  base = base.map(lambda ex: _pick(ex, d, with_ids))
  epoch, skip = divmod(start_step * unique, n)
  epoch_seed = lambda e: tf.random.experimental.stateless_fold_in(  # noqa: E731
      tf.constant([seed, _ORDER], tf.int64), e)[0]
  stream = tf.data.Dataset.range(epoch, _FOREVER).flat_map(
      lambda e: base.shuffle(d.shuffle_buffer, seed=epoch_seed(e)))
  return stream.skip(skip)


_loaded: dict[str, dict[str, np.ndarray]] = {}  # the last few splits read into memory


def _load_arrays(builder, split: Any, d: ConfigDict, with_ids: bool) -> dict[str, np.ndarray]:
  """Reads a whole split into numpy arrays (image, labels), cached: TFDS decodes one example
  at a time (~7 s for Fashion-MNIST's 60k on a busy 2-core machine), and tests and restarts in
  one process read the same split again."""
  key = repr((builder.data_dir, split, d.image_key, d.label_key, tuple(d.extra_label_keys),
              with_ids))
  if key not in _loaded:
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders=_decoders(builder, d.image_key),
        read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=with_ids))
    # Chunks, not batch_size=-1: that sizes one batch from split metadata, which mocked or
    # sliced splits may not have.
    chunks = list(ds.map(lambda ex: _pick(ex, d, with_ids)).batch(8192).as_numpy_iterator())
    while len(_loaded) >= 2:
      _loaded.pop(next(iter(_loaded)))
    _loaded[key] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  return _loaded[key]


def _in_memory(builder, config: ConfigDict) -> bool:
  if config.dataset.get("in_memory") is not None:
    return bool(config.dataset.in_memory)
  return (builder.info.dataset_size or 0) <= _IN_MEMORY_MAX_BYTES


def local_train_dataset(config: ConfigDict, *, seed: int, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        with_ids: bool = False) -> tf.data.Dataset:
  """This process's training rows: a tf.data.Dataset of dicts of local batches.

  Batches hold `config.batch_size / process_count` rows: `view1`, `view2` float32
  (b, size, size, C) in [0, 1], `label` int32 (b,), the extra labels int32 (b,), and with
  `with_ids` the TFDS example id `tfds_id` (string, for tests). Rows are in global-batch order:
  process p holds rows [p * b, (p + 1) * b).
  """
  d = config.dataset
  pi, pc = _processes(process_index, process_count)
  builder, num_classes, _ = _validated(config)
  local = _rows_per_process(config.batch_size, None, pc, "batch_size", d.repeats)
  unique = local // d.repeats
  split = tfds.split_for_jax_process(d.train_split, process_index=pi, process_count=pc)

  if _in_memory(builder, config):
    arrays = _load_arrays(builder, split, d, with_ids)
    if arrays["image"].dtype != object:  # decoded: the real shape is known now
      _check_image_shape(config, arrays["image"].shape[1:], f"{d.name} {d.train_split}")
    check_labels(arrays["label"], num_classes, f"{d.name} {d.train_split}")
    for k in d.extra_label_keys:
      if isinstance(builder.info.features[k], tfds.features.ClassLabel):
        check_labels(arrays[k], builder.info.features[k].num_classes, f"{d.name} {k}")
    ds = _memory_stream(arrays, config, seed=seed, start_step=start_step, unique=unique,
                        process_count=pc)
  else:
    ds = _disk_stream(builder, split, config, seed=seed, start_step=start_step, unique=unique,
                      with_ids=with_ids)

  if d.repeats > 1:
    ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(d.repeats))
  # Global row position q = step * local + row; the view seeds fold in (step, global row).
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(start_step * local, _FOREVER))
  views = (config.augment.view1.to_dict(), config.augment.view2.to_dict())
  base_seed = tf.constant([seed, _VIEWS], tf.int64)

  def two_views(ex, q):
    ex_seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(base_seed, q // local), pi * local + q % local)
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(ex_seed, 2))
    image = ex.pop("image")
    for name, s, v in (("view1", s1, views[0]), ("view2", s2, views[1])):
      ex[name] = augment.first_stage(image, s, v, size=d.image_size, channels=d.channels)
    return ex

  def colour(batch):  # the pixel-heavy ops, one call per batch (see augment's docstring)
    for name, v in (("view1", views[0]), ("view2", views[1])):
      batch[name] = augment.second_stage(batch[name], v)
    return batch

  ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True)
  ds = ds.map(colour, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _device_batches(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                    prefetch: int) -> Iterator[dict[str, jax.Array]]:
  """Global jax.Arrays from local numpy rows, `prefetch` device transfers kept in flight."""
  batch_sharding = sharding.batch_sharding(mesh)
  queue = collections.deque()

  def put(batch):
    # global_shape=None: JAX infers it from the process count (local rows x processes).
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in batch.items()}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def train_iterator(config: ConfigDict, mesh: Mesh, *, seed: int, start_step: int = 0,
                   process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[dict[str, jax.Array]]:
  """Infinite global training batches, step `start_step` first.

  Each batch: `view1`, `view2` float32 (B, size, size, C) in [0, 1], `label` int32 (B,) and
  each of config.dataset.extra_label_keys int32 (B,), all sharded over the mesh batch axis,
  B = config.batch_size. Validation (dataset prepared, shapes, labels, batch divisibility)
  happens here, before the first batch is requested. With simulated processes
  (`process_count` != jax.process_count(), tests) arrays hold this process's rows only.
  """
  _, pc = _processes(process_index, process_count)
  _rows_per_process(config.batch_size, mesh, pc, "batch_size", config.dataset.repeats)
  ds = local_train_dataset(config, seed=seed, start_step=start_step, process_index=process_index,
                           process_count=process_count)
  num_classes = _validated(config)[1]

  def checked():  # in-memory splits were checked whole; streamed ones are checked per batch
    for batch in ds.as_numpy_iterator():
      check_labels(batch["label"], num_classes, f"{config.dataset.name} train batch")
      yield batch

  return _device_batches(checked(), mesh, config.dataset.prefetch)


# ---- evaluation -------------------------------------------------------------------------------

def num_eval_batches(config: ConfigDict, split: str | None = None, *,
                     process_count: int | None = None) -> int:
  """Batches every process yields for `split`: ceil(largest process slice / local batch)."""
  _, pc = _processes(0, process_count)
  builder = _builder(config)
  split = split or config.dataset.eval_split
  local = _rows_per_process(config.eval_batch_size, None, pc, "eval_batch_size")
  largest = max(_num_examples(builder, tfds.split_for_jax_process(
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
    self._pi, self._pc = _processes(process_index, process_count)
    self._split = split or d.eval_split
    self._builder, self._num_classes, _ = _validated(config)
    self._local = _rows_per_process(config.eval_batch_size, mesh, self._pc, "eval_batch_size")
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
    if _in_memory(self._builder, self._config):
      # Shares the cached arrays with the training pipeline (kNN reads the train split too).
      # Padding rows copy row 0 (a valid image, even as JPEG bytes) and carry mask False.
      arrays = dict(_load_arrays(self._builder, split, d, with_ids=False))
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
                                  decoders=_decoders(self._builder, d.image_key),
                                  read_config=tfds.ReadConfig(try_autocache=False))
    ds = per_example(ds.map(lambda ex: {**_pick(ex, d, with_ids=False),
                                        "mask": tf.constant(True)}))
    pad = self._num_batches * local - _num_examples(self._builder, split)
    ds = ds.concatenate(tf.data.Dataset.range(pad).map(
        lambda _: {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}))
    return ds.batch(local).prefetch(tf.data.AUTOTUNE)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    where = f"{self._config.dataset.name} {self._split}"

    def checked():
      for batch in self.local_dataset().as_numpy_iterator():
        check_labels(batch["label"], self._num_classes, where, batch["mask"])
        yield batch

    return _device_batches(checked(), self._mesh, self._prefetch)


def eval_iterator(config: ConfigDict, mesh: Mesh, split: str | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> EvalIterator:
  """Eval batches of `split` (default config.dataset.eval_split); see `EvalIterator`."""
  return EvalIterator(config, mesh, split, process_index=process_index,
                      process_count=process_count)
