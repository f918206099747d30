"""The configured dataset: its TFDS builder, what the model needs to know about it, the checks
that reject a config that does not fit it, and reading a split.

Nothing here downloads unless `config.dataset.download` is True: offline, TFDS retries for
minutes before failing, so a missing dataset is reported at once with how to prepare it.
The train and eval streams (`train_stream`, `eval_stream`) build on these readers.
"""
from __future__ import annotations
from collections.abc import Mapping
import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap.runtime import sharding
from simlap.data import fashion_mnist

# TensorFlow only feeds the host pipeline; it must never take GPU memory away from JAX.
tf.config.set_visible_devices([], "GPU")

IN_MEMORY_MAX_BYTES = 1 << 30  # larger splits are streamed (`train_stream.reader`)
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


_PREPARED_BY_PROCESS_0: set[tuple[Any, ...]] = set()


def prepared_builder(config: ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder, prepared; raises if that would need a download the config forbids.

  Multi-process: the first call for a dataset prepares it on process 0 alone while the others
  wait at a barrier (every host preparing one shared data_dir at once would race on its
  files), then process 0's verdict is shared, so that all go on or all raise. After it the
  others find the data prepared (or, with a data_dir per host, prepare their own copy). Every
  process must make that first call at the same point; later calls need no collective.
  """
  d = config.dataset
  key = (d.name, d.data_dir, d.source_dir, d.manual_dir)
  if jax.process_count() == 1 or key in _PREPARED_BY_PROCESS_0:
    return _prepare(config)
  from jax.experimental import multihost_utils  # noqa: PLC0415
  builder, error = None, None
  if jax.process_index() == 0:
    try:
      builder = _prepare(config)
    except Exception as e:  # pylint: disable=broad-except
      error = e
  failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  _PREPARED_BY_PROCESS_0.add(key)
  if error is not None:
    raise error
  if failed:
    raise ValueError(f"preparing dataset {d.name!r} failed on process 0 (see its log)")
  return builder if builder is not None else _prepare(config)


def _prepare(config: ConfigDict) -> tfds.core.DatasetBuilder:
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


def num_examples(builder: tfds.core.DatasetBuilder, split: Any) -> int:
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


def check_image_shape(config: ConfigDict, shape: tuple[Any, ...], where: str) -> None:
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


def validated(config: ConfigDict) -> tuple[tfds.core.DatasetBuilder, int, tuple[str, ...]]:
  """(prepared builder, num_classes, class names), after checking features against config."""
  prepared = prepared_builder(config)
  num_classes, names = _label_info(config, prepared)
  d = config.dataset
  check_image_shape(config, tuple(prepared.info.features[d.image_key].shape), repr(d.name))
  return prepared, num_classes, names


def get_dataset_info(config: ConfigDict) -> DatasetInfo:
  """Prepares the dataset if it is the embedded one, validates the config against it."""
  prepared, num_classes, names = validated(config)
  d = config.dataset
  image_shape = tuple(prepared.info.features[d.image_key].shape)
  return DatasetInfo(
      num_classes=num_classes, class_names=names,
      num_train=num_examples(prepared, d.train_split),
      num_eval=num_examples(prepared, d.eval_split), image_shape=image_shape,
      extra_label_keys=tuple(d.extra_label_keys))


def info_from_config(config: ConfigDict, num_train: int) -> DatasetInfo:
  """Shapes only, from the config, reading no dataset: for compile-only tools and benchmarks.
  `num_train` sets the LR schedule's length; class names are the indices."""
  d = config.dataset
  return DatasetInfo(
      num_classes=d.num_classes, class_names=tuple(str(i) for i in range(d.num_classes)),
      num_train=num_train, num_eval=0, image_shape=(d.image_size, d.image_size, d.channels),
      extra_label_keys=tuple(d.extra_label_keys))


def decoders(builder, image_key: str) -> dict[str, Any] | None:
  """JPEG images stay bytes, so augmentations can decode only their crop window."""
  feature = builder.info.features[image_key]
  if isinstance(feature, tfds.features.Image) and feature.encoding_format == "jpeg":
    return {image_key: tfds.decode.SkipDecoding()}
  return None


def processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f"process_index={pi} not in [0, process_count={pc})")
  return pi, pc


def rows_per_process(batch: int, mesh: Mesh | None, pc: int, name: str,
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


def pick(ex: Mapping[str, tf.Tensor], d: ConfigDict, with_ids: bool) -> dict[str, tf.Tensor]:
  """Keeps the image and int32 labels (and the example id for tests)."""
  out = {"image": ex[d.image_key], "label": tf.cast(ex[d.label_key], tf.int32)}
  out.update({k: tf.cast(ex[k], tf.int32) for k in d.extra_label_keys})
  if with_ids:
    out["tfds_id"] = ex["tfds_id"]
  return out


_loaded: dict[str, dict[str, np.ndarray]] = {}  # the last few splits read into memory


def load_arrays(builder, split: Any, d: ConfigDict, with_ids: bool) -> dict[str, np.ndarray]:
  """Reads a whole split into numpy arrays (image, labels), cached: TFDS decodes one example
  at a time, which takes seconds for a 60k split, and tests and restarts in one process read
  the same split again."""
  key = repr((builder.data_dir, split, d.image_key, d.label_key, tuple(d.extra_label_keys),
              with_ids))
  if key not in _loaded:
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders(builder, d.image_key),
        read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=with_ids))
    # Chunks, not batch_size=-1: that sizes one batch from split metadata, which mocked or
    # sliced splits may not have.
    chunks = list(ds.map(lambda ex: pick(ex, d, with_ids)).batch(8192).as_numpy_iterator())
    while len(_loaded) >= 2:
      _loaded.pop(next(iter(_loaded)))
    _loaded[key] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  return _loaded[key]


def in_memory(builder, config: ConfigDict) -> bool:
  """Whether `config`'s train split is read into memory (exact, free resume) or streamed."""
  if config.dataset.in_memory is not None:
    return bool(config.dataset.in_memory)
  return (builder.info.dataset_size or 0) <= IN_MEMORY_MAX_BYTES
