"""Offline TFDS builder `animal_mnist_local`: Animal-MNIST, 10,000 28x28 grayscale animal
silhouettes in 10 classes of 1,000 (MIT licence, Sina Mohammadi 2025), from the PyPI wheel
`animal-mnist` (pinned in setup.py).

The wheel's two gzipped pickles (images uint8 (10000, 28, 28), labels int64 (10000,), sorted by
class) are read directly, with an unpickler that accepts only ndarrays; the wheel's own loader
imports TensorFlow's Keras datasets. Class names: the wheel description's list, alphabetical.
No split ships: `array_builder.split_indices` makes a stratified 8,000 / 2,000 one.
"""
from __future__ import annotations
import gzip

import numpy as np
import tensorflow_datasets as tfds

from simlap.data import array_builder
from simlap.data import package_files

NAME = "animal_mnist_local"
DISTRIBUTION, VERSION = "animal-mnist", "0.4"
LICENCE = "MIT"
CLASS_NAMES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep",
               "Zebra")
NUM_EXAMPLES = 10_000
_DIR = "animal_mnist/data/Animal_MNIST"
IMAGES = package_files.PackagedFile(DISTRIBUTION, VERSION, f"{_DIR}/animal_data_version_3.gz",
                                    "aKMDRngaCYT4OUY6RhXS3suJnRzmUJG7klhjEXVKNM4")
LABELS = package_files.PackagedFile(DISTRIBUTION, VERSION, f"{_DIR}/animal_label_version_3.gz",
                                    "3sjbp8RpgwmJ-6tGglAhoIo4RwdTpRLyetqEfs7Ze1c")


def _load(f: package_files.PackagedFile) -> np.ndarray:
  return package_files.load_array_pickle(gzip.decompress(package_files.read_bytes(f)), f.path)


def read_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (10000, 28, 28, 1), labels uint8 (10000,)) from the installed wheel."""
  images, labels = _load(IMAGES), _load(LABELS)
  if images.dtype != np.uint8:
    raise ValueError(f"{IMAGES.path}: images are {images.dtype}, expected uint8")
  array_builder.check_arrays(images, labels, shape=(28, 28), num_classes=len(CLASS_NAMES),
                             where=DISTRIBUTION)
  return images[..., None], labels.astype(np.uint8)


class AnimalMnistLocal(array_builder.ArrayImageBuilder):
  """Animal-MNIST (MIT) from the `animal-mnist` wheel: 8,000 train / 2,000 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Offline builder reading the animal-mnist 0.4 wheel's pickles."}
  CLASS_NAMES = CLASS_NAMES
  IMAGE_SHAPE = (28, 28, 1)
  HOMEPAGE = "https://pypi.org/project/animal-mnist/"

  def read_source(self) -> tuple[np.ndarray, np.ndarray]:
    return read_arrays()


def prepare(data_dir: str | None = None) -> AnimalMnistLocal:
  """Returns the builder, preparing the dataset into `data_dir` first if it is not there yet."""
  return array_builder.prepare_builder(AnimalMnistLocal, data_dir)
