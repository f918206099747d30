"""Transfer targets: the package-data builders read the real files (counts, shapes, dtypes,
labels), their splits are disjoint, stratified and fixed, images convert to a run's input
without losing content, and each target's licence is recorded and matches its package."""
from __future__ import annotations
import hashlib
import importlib.util
import os
import pathlib
import pickle
import sys

import numpy as np
import pytest

from simlap.data import animal_mnist
from simlap.data import array_builder
from simlap.data import digits
from simlap.data import package_files
from simlap.data import transfer

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Per-class sizes of scikit-learn's digits (load_digits), digits 0..9.
DIGITS_CLASS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# SHA-256 of the test split's source ids (int64 bytes): the split rule's output, pinned.
TEST_IDS_SHA256 = {
    "animal_mnist": "a3fa4ebf439c0066798fa9caaedc39777cee6299e606170565f17c9b849c6e19",
    "digits": "15a78015228c1d7d104e0b976d05d7fcca8086ab7b862f5a4a246c70deeccc1b",
}
# SHA-256 of scikit-learn 1.9.1's `load_digits()`: `to_uint8(images)` and `target` as uint8
# bytes. scikit-learn is installed off sys.path (setup.py's DATA_PACKAGES), so its loader is not
# importable here; these digests were computed with it.
LOAD_DIGITS_SHA256 = {
    "images": "b41ca9fd335466eee997366c2e6f6bbe0a1b4582afe091fc4eba35f4a254182f",
    "target": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """Both package-data targets prepared once (about 1 s on 2 cores)."""
  path = str(tmp_path_factory.mktemp("tfds_transfer"))
  for name in ("animal_mnist", "digits"):
    transfer.prepared_builder(name, path)
  return path


def _split(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
  builder = transfer.prepared_builder(name, data_dir)
  import tensorflow_datasets as tfds  # noqa: PLC0415 (TF is already loaded by transfer)
  return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, batch_size=-1))


def test_animal_mnist_reads_the_wheel_files():
  images, labels = animal_mnist.read_arrays()
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (10_000,) and labels.dtype == np.uint8
  assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
  # Silhouettes: white shapes on black, the whole 0..255 range used.
  assert images.min() == 0 and images.max() == 255
  assert 0.5 < (images == 0).mean() < 0.7
  assert len(animal_mnist.CLASS_NAMES) == 10 and animal_mnist.CLASS_NAMES[-1] == "Zebra"


def test_digits_reads_the_wheel_file_as_load_digits_does():
  images, labels = digits.read_arrays()
  assert images.shape == (1_797, 8, 8, 1) and images.dtype == np.uint8
  assert labels.dtype == np.uint8 and np.bincount(labels).tolist() == DIGITS_CLASS_SIZES
  assert hashlib.sha256(images.tobytes()).hexdigest() == LOAD_DIGITS_SHA256["images"]
  assert hashlib.sha256(labels.tobytes()).hexdigest() == LOAD_DIGITS_SHA256["target"]
  assert digits.to_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]


@pytest.mark.parametrize("name", ["animal_mnist", "digits"])
def test_prepared_splits_are_disjoint_stratified_and_hold_the_source(name, data_dir):
  t = transfer.target(name)
  source_images, source_labels = (animal_mnist if name == "animal_mnist" else digits).read_arrays()
  splits = {s: _split(name, s, data_dir) for s in (t.train_split, t.test_split)}
  train, test = splits[t.train_split], splits[t.test_split]
  assert len(train["id"]) + len(test["id"]) == len(source_labels)
  assert not set(train["id"].tolist()) & set(test["id"].tolist())
  # No image is in both splits, duplicates included (kNN would find its own copy).
  assert not {a.tobytes() for a in train["image"]} & {a.tobytes() for a in test["image"]}
  for split in (train, test):
    assert split["image"].dtype == np.uint8 and split["image"].shape[1:] == t.image_shape
    assert split["label"].min() >= 0 and split["label"].max() < t.num_classes
    np.testing.assert_array_equal(split["image"], source_images[split["id"]])
    np.testing.assert_array_equal(split["label"], source_labels[split["id"]])
  sizes = np.bincount(source_labels)
  np.testing.assert_array_equal(np.bincount(test["label"], minlength=t.num_classes),
                                np.round(0.2 * sizes))
  features = transfer.prepared_builder(name, data_dir).info.features
  assert tuple(features["label"].names) == (
      animal_mnist.CLASS_NAMES if name == "animal_mnist" else digits.CLASS_NAMES)


@pytest.mark.parametrize("module", [animal_mnist, digits], ids=["animal_mnist", "digits"])
def test_split_is_fixed_and_independent_of_source_order(module):
  images, labels = module.read_arrays()
  test_ids = array_builder.split_indices(images, labels)["test"]
  name = "animal_mnist" if module is animal_mnist else "digits"
  assert hashlib.sha256(test_ids.astype(np.int64).tobytes()).hexdigest() == TEST_IDS_SHA256[name]
  order = np.random.default_rng(1).permutation(len(labels))
  shuffled_test = array_builder.split_indices(images[order], labels[order])["test"]
  np.testing.assert_array_equal(np.sort(order[shuffled_test]), test_ids)


def test_identical_images_stay_in_one_split():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
  images[20:] = images[:20]  # every image twice, in one class
  splits = array_builder.split_indices(images, np.zeros(40, np.uint8))
  assert len(splits["test"]) == 8
  test = {images[i].tobytes() for i in splits["test"]}
  assert not test & {images[i].tobytes() for i in splits["train"]}
  # Nine copies of one image and one other: test wants 2, the nine cannot go, whatever the
  # hash order; one copy in test would be found by kNN in the train bank.
  images = np.repeat(images[:1], 10, axis=0)
  images[7] = 255 - images[7]
  splits = array_builder.split_indices(images, np.zeros(10, np.uint8))
  assert splits["test"].tolist() == [7]


def _bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of half-pixel-centre bilinear upsampling, edges clamped."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi, frac = np.minimum(lo + 1, n_in - 1), src - lo
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w


def test_to_run_input_upsamples_digits_bilinearly():
  image = np.zeros((2, 8, 8, 1), np.uint8)
  image[0, :, :4] = 255  # left half white
  image[1] = digits.read_arrays()[0][0]  # a real digit
  out = transfer.to_run_input(image, size=28, channels=1).numpy()
  assert out.shape == (2, 28, 28, 1) and out.dtype == np.uint8
  assert (out[0, :, :12] == 255).all() and (out[0, :, 16:] == 0).all()
  w = _bilinear_1d(8, 28)
  for i in range(2):
    reference = w @ image[i, ..., 0].astype(float) @ w.T
    np.testing.assert_allclose(out[i, ..., 0], reference, atol=0.51)


def test_to_run_input_converts_channels():
  gray = animal_mnist.read_arrays()[0][:3]
  rgb = transfer.to_run_input(gray, size=32, channels=3).numpy()
  assert rgb.shape == (3, 32, 32, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb, np.repeat(
      transfer.to_run_input(gray, size=32, channels=1).numpy(), 3, axis=-1))
  red = np.zeros((5, 5, 3), np.uint8)
  red[..., 0] = 255
  assert (transfer.to_run_input(red, size=5, channels=1).numpy() == 76).all()  # 0.2989 * 255
  same = transfer.to_run_input(gray, size=28, channels=1).numpy()
  assert same.tobytes() == gray.tobytes()


def test_to_run_input_takes_the_centre_square_and_keeps_the_mean_when_shrinking():
  wide = np.zeros((28, 40, 1), np.uint8)
  wide[:, 6:34] = 200  # the centre 28x28 square
  out = transfer.to_run_input(wide, size=28, channels=1).numpy()
  assert out.shape == (28, 28, 1) and (out == 200).all()
  big = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
  small = transfer.to_run_input(big, size=32, channels=3).numpy()
  # 3x3 block means, the antialiased filter's target, up to the triangle filter's spread.
  blocks = big.reshape(32, 3, 32, 3, 3).mean(axis=(1, 3))
  assert abs(small.astype(float).mean() - big.mean()) < 1.0
  assert np.corrcoef(small.ravel(), blocks.ravel())[0, 1] > 0.8
  with pytest.raises(ValueError, match="uint8"):
    transfer.to_run_input(big.astype(np.float32), size=32, channels=3)


def test_licences_are_recorded_and_match_the_packages():
  animal, dig = transfer.target("animal_mnist"), transfer.target("digits")
  assert animal.licence == "MIT" == package_files.distribution_metadata("animal-mnist")["License"]
  assert dig.licence == "BSD-3-Clause" == (
      package_files.distribution_metadata("scikit-learn")["License-Expression"])
  licence_file = package_files.distribution("animal-mnist").locate_file(
      "animal_mnist-0.4.dist-info/licenses/LICENSE")
  assert pathlib.Path(licence_file).read_text().startswith("MIT License")
  setup_py, docs = (ROOT / "setup.py").read_text(), (ROOT / "docs/datasets.md").read_text()
  for module in (animal_mnist, digits):
    pin = f"{module.DISTRIBUTION}=={module.VERSION}"
    assert f'"{pin}"' in setup_py and pin in docs and module.LICENCE in docs
    assert package_files.distribution_metadata(module.DISTRIBUTION)["Version"] == module.VERSION
  assert animal.offline and dig.offline and not transfer.target("cifar10").offline


def test_data_packages_are_read_off_sys_path():
  """scripts/setup.sh installs the data-only distributions where nothing imports them: Keras
  imports an importable scikit-learn at every TensorFlow import (1.3 s per process)."""
  import tensorflow as tf  # noqa: PLC0415, F401 (imports Keras)
  assert "sklearn" not in sys.modules and importlib.util.find_spec("sklearn") is None
  for name in ("animal-mnist", "scikit-learn"):
    where = os.fspath(package_files.distribution(name).locate_file(""))
    assert os.path.samefile(where, package_files.packages_dir()), (name, where)


def test_bad_package_files_fail_with_one_clear_line(tmp_path):
  missing = package_files.PackagedFile("no-such-dist", "1.0", "x/y.gz", "0")
  with pytest.raises(FileNotFoundError, match="pip install --no-deps --upgrade --target .*"
                                               "share/simlap/packages no-such-dist==1.0"):
    package_files.read_bytes(missing)
  wrong = package_files.PackagedFile("animal-mnist", "0.4", animal_mnist.LABELS.path, "abc")
  with pytest.raises(ValueError, match="is not the pinned abc"):
    package_files.read_bytes(wrong)
  with pytest.raises(ValueError, match="refusing to load collections.OrderedDict"):
    package_files.load_array_pickle(pickle.dumps(__import__("collections").OrderedDict()), "x")
  with pytest.raises(ValueError, match="unknown transfer target 'mnist'; known: animal_mnist"):
    transfer.target("mnist")
  with pytest.raises(ValueError, match="tfds build cifar10"):
    transfer.prepared_builder("cifar10", str(tmp_path))
