"""Offline TFDS builders for small labelled image sets held as arrays, and their train/test split.

The transfer targets that ship inside Python packages (Animal-MNIST, scikit-learn's digits) come
as one array of images and one of labels, with no split; `split_indices` fixes one, the same on
every machine. A builder subclass supplies `read_source()`; the base writes the two splits, each
example with its index in the source arrays (`id`), so provenance and disjointness can be checked.
"""
from __future__ import annotations
import abc
import hashlib

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SALT = b"simlap-transfer-split-v1"
TEST_FRACTION = 0.2


def split_indices(images: np.ndarray, labels: np.ndarray, test_fraction: float = TEST_FRACTION
                  ) -> dict[str, np.ndarray]:
  """{"train", "test"}: sorted int64 indices into `images` (N, ...) / `labels` (N,), disjoint,
  covering all N.

  - stratified: each class puts round(test_fraction * its size) images in test;
  - by content, not by position or RNG stream: a class's distinct images are ranked by
    SHA-256(SPLIT_SALT + image bytes) and test takes them in that order, so the split is the
    same on every machine, NumPy version and file order;
  - identical images stay together: a duplicate in both splits would let kNN "recognise" a test
    image it has stored.
  """
  keys = [hashlib.sha256(SPLIT_SALT + image.tobytes()).digest() for image in images]
  test: list[int] = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    groups: dict[bytes, list[int]] = {}
    for i in members:
      groups.setdefault(keys[i], []).append(int(i))
    want, taken = int(round(test_fraction * len(members))), 0
    for key in sorted(groups):
      if taken + len(groups[key]) <= want:
        test += groups[key]
        taken += len(groups[key])
  is_test = np.zeros(len(labels), bool)
  is_test[test] = True
  return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


class ArrayImageBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """Base of the package-data builders: uint8 (H, W, 1) images, class labels, source ids.
  Abstract (read_source), so TFDS registers only the concrete subclasses."""

  CLASS_NAMES: tuple[str, ...] = ()
  IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 1)
  HOMEPAGE = ""

  @abc.abstractmethod
  def read_source(self) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 1), labels uint8 (N,)) from the package files, checked."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            "id": np.int64,  # index in the source arrays
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files ship in an installed package.
    images, labels = self.read_source()  # read and checked before any split is written
    splits = split_indices(images, labels)
    return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices.tolist():
      yield i, {"image": images[i], "label": int(labels[i]), "id": i}


def prepare_builder(cls: type[ArrayImageBuilder], data_dir: str | None) -> ArrayImageBuilder:
  """The builder of `cls`, its dataset prepared into `data_dir` first if it is not there yet."""
  builder = cls(data_dir=data_dir)
  if not builder.is_prepared():
    builder.read_source()  # a missing or wrong package file fails here with one clear line
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def check_arrays(images: np.ndarray, labels: np.ndarray, *, shape: tuple[int, ...],
                 num_classes: int, where: str) -> None:
  """Raises ValueError naming what in the source arrays does not fit the dataset."""
  if images.ndim != 3 or images.shape[1:] != shape[:2]:
    raise ValueError(f"{where}: images have shape {images.shape}, expected (N, {shape[0]}, "
                     f"{shape[1]})")
  if labels.shape != (len(images),):
    raise ValueError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{where}: label {int(bad[0])} outside [0, {num_classes}) "
                     f"({bad.size} such labels)")
