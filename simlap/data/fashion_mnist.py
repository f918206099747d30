"""Offline TFDS builder for the embedded default dataset, Fashion-MNIST.

TFDS's own `fashion_mnist` builder downloads the IDX files and checks their checksums; Debian's
`dataset-fashion-mnist` package re-compressed them, so that builder refuses them. This one reads
the same IDX files from a local directory (`resolve_source_dir`) and never touches the network;
preparation writes the 70,000 PNG-encoded 28x28x1 examples once into the TFDS data dir.
"""
from __future__ import annotations
import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

NAME = "fashion_mnist_local"
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "SIMLAP_FASHION_MNIST_DIR"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Known class groups, for checking the class relationships a model learns: tops {T-shirt/top,
# Pullover, Coat, Shirt} and footwear {Sandal, Sneaker, Ankle boot}; Trouser (1), Dress (3) and
# Bag (8) belong to no group.
GROUPS = ((0, 2, 4, 6), (5, 7, 9))
# The same groups as a two-level class tree (root -> group -> class), for selective class pairs
# (simlap/data/class_trees.py): tops, footwear, and the classes in no group as a third node.
_GROUPED = frozenset(c for g in GROUPS for c in g)
CLASS_TREE = (("tops", GROUPS[0]), ("footwear", GROUPS[1]),
              ("other", tuple(c for c in range(len(CLASS_NAMES)) if c not in _GROUPED)))
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_MAGIC = {"images": 2051, "labels": 2049}


def resolve_source_dir(source_dir: str | None = None) -> str:
  """The directory holding the four IDX .gz files, the first that is set of: `source_dir`
  (config.dataset.source_dir), $SIMLAP_FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist."""
  return source_dir or os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR


def check_source_files(source_dir: str) -> None:
  """Raises one FileNotFoundError listing what is missing and how to install it."""
  missing = [f for pair in _FILES.values() for f in pair
             if not os.path.isfile(os.path.join(source_dir, f))]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {source_dir!r} (missing: {', '.join(missing)}). "
        "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, puts them "
        f"in {DEFAULT_SOURCE_DIR}), or point ${SOURCE_DIR_ENV} or config.dataset.source_dir at a "
        "directory holding the four *-ubyte.gz files.")


def read_idx(path: str, kind: str) -> np.ndarray:
  """Reads one gzipped IDX file: images -> uint8 (N, 28, 28), labels -> uint8 (N,)."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  magic, n = np.frombuffer(data, ">i4", count=2)
  if magic != _IDX_MAGIC[kind]:
    raise ValueError(f"{path}: bad IDX magic {magic}, expected {_IDX_MAGIC[kind]} ({kind})")
  if kind == "labels":
    return np.frombuffer(data, np.uint8, offset=8).reshape(n)
  rows, cols = np.frombuffer(data, ">i4", count=2, offset=8)
  return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def read_split(source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,) uint8) of `split`, checked against the format."""
  images_file, labels_file = (os.path.join(source_dir, f) for f in _FILES[split])
  images = read_idx(images_file, "images")
  labels = read_idx(labels_file, "labels")
  if images.shape[1:] != (28, 28):
    raise ValueError(f"{images_file}: images are {images.shape[1]}x{images.shape[2]}; "
                     "Fashion-MNIST images are 28x28")
  bad = labels[labels >= len(CLASS_NAMES)]
  if bad.size:
    raise ValueError(f"{labels_file}: label {int(bad[0])} outside [0, {len(CLASS_NAMES)}) "
                     f"({bad.size} such labels)")
  if len(images) != len(labels):
    raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
  return images, labels


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Zalando, MIT licence) from local IDX files: 60k train / 10k test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Offline builder reading Debian's dataset-fashion-mnist files."}

  def __init__(self, *, source_dir: str | None = None, **kwargs):
    self.source_dir = resolve_source_dir(source_dir)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files are local.
    check_source_files(self.source_dir)
    # Read and check every split before writing any: a bad file fails here with one message
    # naming it, not deep inside TFDS's encoder (which prints the whole offending example).
    arrays = {split: read_split(self.source_dir, split) for split in _FILES}
    return {split: self._generate_examples(*arrays[split]) for split in _FILES}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images[..., None], labels.tolist())):
      yield i, {"image": image, "label": label}


def prepare(data_dir: str | None = None, source_dir: str | None = None) -> FashionMnistLocal:
  """Returns the builder, preparing the dataset into `data_dir` first if it is not there yet."""
  builder = FashionMnistLocal(data_dir=data_dir, source_dir=source_dir)
  if not builder.is_prepared():
    check_source_files(builder.source_dir)
    # No download happens (the builder reads local files); GCS metadata lookups stay off.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
