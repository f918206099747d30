"""Offline TFDS builder `digits_local`: scikit-learn's bundled digits, 1,797 8x8 grayscale
handwritten digits in 10 classes (the test set of UCI's Optical Recognition of Handwritten
Digits, E. Alpaydin and C. Kaynak 1998), from the `scikit-learn` wheel (BSD-3-Clause, pinned).

`sklearn/datasets/data/digits.csv.gz` is read directly (65 integer columns a row: 64 pixels in
0..16 row by row, then the digit), as `load_digits` reads it but without importing scikit-learn.
Pixels are scaled to uint8 by round(v * 255 / 16). No split ships:
`array_builder.split_indices` makes a stratified 1,438 / 359 one.
"""
from __future__ import annotations
import gzip
import io

import numpy as np
import tensorflow_datasets as tfds

from simlap.data import array_builder
from simlap.data import package_files

NAME = "digits_local"
DISTRIBUTION, VERSION = "scikit-learn", "1.9.1"
LICENCE = "BSD-3-Clause"
CLASS_NAMES = tuple(str(d) for d in range(10))
NUM_EXAMPLES = 1_797
SOURCE_LEVELS = 16  # pixel values 0..16: on-pixels counted in a 4x4 block of a 32x32 bitmap
CSV = package_files.PackagedFile(DISTRIBUTION, VERSION, "sklearn/datasets/data/digits.csv.gz",
                                 "CfZubeve4s0rWuWeDWq7tz_CsOAYXS4ZV-nrtR4jqiI")


def to_uint8(levels: np.ndarray) -> np.ndarray:
  """Source pixel counts 0..16 -> uint8 0..255 (round half to even)."""
  return np.round(levels.astype(np.float64) * (255 / SOURCE_LEVELS)).astype(np.uint8)


def read_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (1797, 8, 8, 1), labels uint8 (1797,)) from the installed wheel."""
  text = gzip.decompress(package_files.read_bytes(CSV))
  table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
  if table.shape[1] != 65:
    raise ValueError(f"{CSV.path}: {table.shape[1]} columns, expected 64 pixels + label")
  pixels, labels = table[:, :64], table[:, 64]
  bad = pixels[(pixels < 0) | (pixels > SOURCE_LEVELS)]
  if bad.size:
    raise ValueError(f"{CSV.path}: pixel value {int(bad[0])} outside [0, {SOURCE_LEVELS}]")
  images = pixels.reshape(-1, 8, 8)
  array_builder.check_arrays(images, labels, shape=(8, 8), num_classes=len(CLASS_NAMES),
                             where=DISTRIBUTION)
  return to_uint8(images)[..., None], labels.astype(np.uint8)


class DigitsLocal(array_builder.ArrayImageBuilder):
  """scikit-learn's digits (BSD-3-Clause) from its wheel: 1,438 train / 359 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Offline builder reading scikit-learn 1.9.1's digits.csv.gz."}
  CLASS_NAMES = CLASS_NAMES
  IMAGE_SHAPE = (8, 8, 1)
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

  def read_source(self) -> tuple[np.ndarray, np.ndarray]:
    return read_arrays()


def prepare(data_dir: str | None = None) -> DigitsLocal:
  """Returns the builder, preparing the dataset into `data_dir` first if it is not there yet."""
  return array_builder.prepare_builder(DigitsLocal, data_dir)
