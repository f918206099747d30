"""Transfer targets: datasets a frozen backbone is evaluated on (kNN, few-shot ridge) besides the
one it was trained on, and the conversion of their images to the run's input size and channels.

`TARGETS` maps a `--transfer` name to its TFDS dataset, splits, source shape and licence. Two
ship inside Python packages and are prepared offline (`animal_mnist`, `digits`); the paper's
ImageNet-run targets are TFDS datasets the user prepares with `tfds build` (nothing here
downloads). FGVC-Aircraft, the paper's eighth, has no TFDS builder in tfds 4.9.10.
"""
from __future__ import annotations
from collections.abc import Callable
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap.data import animal_mnist
from simlap.data import digits


@dataclasses.dataclass(frozen=True)
class TransferTarget:
  """One transfer dataset: what to read, its source format, and its terms."""
  name: str  # the --transfer value
  tfds_name: str
  train_split: str
  test_split: str
  num_classes: int
  image_shape: tuple[int | None, int | None, int]  # (H, W, C) as stored; None: varies
  licence: str  # of the data as shipped
  source: str  # where the files come from
  prepare: Callable[[str | None], tfds.core.DatasetBuilder] | None = None  # offline builders

  @property
  def offline(self) -> bool:
    """Prepared from files installed with simlap's dependencies (no `tfds build` needed)."""
    return self.prepare is not None


def _tfds(name: str, tfds_name: str, test_split: str, num_classes: int, channels: int = 3
          ) -> TransferTarget:
  return TransferTarget(name, tfds_name, "train", test_split, num_classes, (None, None, channels),
                        licence=f"the original dataset's terms (TFDS catalog: {tfds_name})",
                        source=f"`tfds build {tfds_name}`")


TARGETS: dict[str, TransferTarget] = {t.name: t for t in (
    TransferTarget("animal_mnist", animal_mnist.NAME, "train", "test",
                   len(animal_mnist.CLASS_NAMES), (28, 28, 1), licence=animal_mnist.LICENCE,
                   source=f"PyPI wheel {animal_mnist.DISTRIBUTION}=={animal_mnist.VERSION}",
                   prepare=animal_mnist.prepare),
    TransferTarget("digits", digits.NAME, "train", "test", len(digits.CLASS_NAMES), (8, 8, 1),
                   licence=digits.LICENCE,
                   source=f"PyPI wheel {digits.DISTRIBUTION}=={digits.VERSION} "
                          "(sklearn/datasets/data/digits.csv.gz)",
                   prepare=digits.prepare),
    _tfds("cifar10", "cifar10", "test", 10),
    _tfds("cars", "cars196", "test", 196),
    _tfds("dtd", "dtd", "test", 47),
    _tfds("flowers", "oxford_flowers102", "test", 102),
    _tfds("food", "food101", "validation", 101),
    _tfds("pets", "oxford_iiit_pet", "test", 37),
    _tfds("stl", "stl10", "test", 10),
)}


def target(name: str) -> TransferTarget:
  """The registered target `name`; ValueError listing the known ones otherwise."""
  if name not in TARGETS:
    raise ValueError(f"unknown transfer target {name!r}; known: {', '.join(TARGETS)}")
  return TARGETS[name]


def prepared_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The target's TFDS builder, prepared; offline targets are prepared here, the TFDS ones must
  already be (ValueError with the command otherwise: a download at run time is never made)."""
  t = target(name)
  if t.prepare is not None:
    return t.prepare(data_dir)
  builder = tfds.builder(t.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise ValueError(f"transfer target {name!r} needs TFDS dataset {t.tfds_name!r}, not prepared "
                     f"in {builder.data_dir}: run `tfds build {t.tfds_name}"
                     f"{f' --data_dir={data_dir}' if data_dir else ''}` first")
  return builder


def load_split(name: str, split: str, data_dir: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, H, W, C), labels int32 (N,)) of a fixed-size target's split, in the
  builder's order. Variable-size targets are read with tfds and converted image by image."""
  t = target(name)
  if None in t.image_shape:
    raise ValueError(f"transfer target {name!r} has images of varying size; read it with "
                     "tfds and convert each image with to_run_input")
  ds = prepared_builder(name, data_dir).as_dataset(split=split, shuffle_files=False,
                                                   batch_size=-1)
  arrays = tfds.as_numpy(ds)
  return arrays["image"], arrays["label"].astype(np.int32)


@tf.autograph.experimental.do_not_convert  # plain graph code (see augment)
def to_run_input(images, *, size: int, channels: int) -> tf.Tensor:
  """Converts transfer images to the run's input: uint8 ([N,] H, W, C) -> uint8 ([N,] size,
  size, channels).

  The centre square (the whole image when square, as the run's eval view takes it) is resized
  bilinearly, antialiased when shrinking (an 96x96 STL image to 32: every pixel counts); one
  channel is repeated to three, three are reduced to one by tf.image.rgb_to_grayscale's luma.
  Images already of the run's shape come back unchanged, byte for byte.
  """
  x = tf.convert_to_tensor(images)
  if x.dtype != tf.uint8 or x.shape.rank not in (3, 4) or x.shape[-1] not in (1, 3):
    raise ValueError(f"transfer images must be uint8 ([N,] H, W, 1 or 3); got {x.dtype.name} "
                     f"{tuple(x.shape)}")
  if channels not in (1, 3):
    raise ValueError(f"channels={channels}: the run's input must have 1 or 3 channels")
  if tuple(x.shape[-3:]) == (size, size, channels):
    return x
  if x.shape[-1] == 3 and channels == 1:  # reduce before resizing: a third of the work
    x = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(x, tf.float32))), tf.uint8)
  hw = tf.shape(x)[-3:-1]
  side = tf.reduce_min(hw)
  y0, x0 = (hw[0] - side) // 2, (hw[1] - side) // 2
  x = x[..., y0:y0 + side, x0:x0 + side, :]
  if tuple(x.shape[-3:-1]) != (size, size):
    x = tf.image.resize(x, [size, size], method="bilinear", antialias=True)
    x = tf.cast(tf.round(tf.clip_by_value(x, 0, 255)), tf.uint8)
  if x.shape[-1] == 1 and channels == 3:  # repeat after resizing: a third of the work
    x = tf.image.grayscale_to_rgb(x)
  return tf.ensure_shape(x, x.shape[:-3] + [size, size, channels])
