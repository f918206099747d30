"""Input pipeline on mocked TFDS datasets (cifar10/100, imagenet2012 JPEGs) and a tiny custom one.

`tfds.testing.mock_data` fakes examples from the builders' feature specs, offline; its
download_and_prepare is a no-op, so these configs set download=True (nothing is fetched).
"""
from __future__ import annotations
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from simlap.runtime import sharding
from simlap.data import datasets
from simlap.data import eval_stream
from simlap.data import train_stream

NUM_EXAMPLES = 48  # every mocked split; batch 16 -> an epoch is 3 steps


@pytest.fixture(scope="module")
def mesh(num_devices):
  del num_devices
  return sharding.make_mesh()


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _config(name, num_classes, size=32, **dataset):
  c = default.get_config()
  c.dataset.update(dict(name=name, num_classes=num_classes, image_size=size, channels=3,
                        download=True))
  c.dataset.update(dataset)
  c.batch_size = 16
  c.eval_batch_size = 32
  # The full SimCLR recipe (view 2 as in BYOL: solarize, rarer blur).
  for view in (c.augment.view1, c.augment.view2):
    view.update(dict(crop_scale=(0.08, 1.0), jitter_prob=0.8, brightness=0.8, contrast=0.8,
                     saturation=0.8, hue=0.2, grayscale_prob=0.2, blur_prob=1.0))
  c.augment.view2.update(dict(blur_prob=0.1, solarize_prob=0.2))
  return c


def _take(it, n):
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def _check_views(batch, size, dtype=np.float32):
  """float32 views in [0, 1]; uint8 views (streamed datasets' default) in [0, 255]."""
  top = 255 if dtype == np.uint8 else 1
  for k in ("view1", "view2"):
    assert batch[k].shape == (16, size, size, 3) and batch[k].dtype == dtype
    assert 0 <= batch[k].min() and batch[k].max() <= top
  diff = np.abs(batch["view1"].astype(np.float32) - batch["view2"]) / top
  assert (diff.mean(axis=(1, 2, 3)) > 1e-3).all()


def test_cifar10_and_cifar100_coarse_labels(mock_tfds, mesh):
  c = _config("cifar10", 10)
  c.augment.view2.randaugment_layers = 2  # as in the authors' CIFAR recipe
  (batch,) = _take(train_stream.train_iterator(c, mesh, seed=0), 1)
  _check_views(batch, 32)
  c = _config("cifar100", 100, extra_label_keys=("coarse_label",))
  info = datasets.get_dataset_info(c)
  assert info.num_classes == 100 and info.extra_label_keys == ("coarse_label",)
  (batch,) = _take(train_stream.train_iterator(c, mesh, seed=0), 1)
  assert batch["coarse_label"].dtype == np.int32 and batch["coarse_label"].shape == (16,)
  assert ((0 <= batch["coarse_label"]) & (batch["coarse_label"] < 20)).all()


@pytest.mark.parametrize("in_memory", [None, False])  # JPEG bytes in memory / streamed
def test_imagenet_jpegs_determinism_and_resume(mock_tfds, mesh, in_memory):
  c = _config("imagenet2012", 1000, size=24, in_memory=in_memory)
  assert datasets.get_dataset_info(c).image_shape == (None, None, 3)
  full = _take(train_stream.train_iterator(c, mesh, seed=5), 5)  # crosses two epoch boundaries
  _check_views(full[0], 24, np.uint8 if in_memory is False else np.float32)
  # A fresh iterator at step 4 reproduces step 4: same seed, same batch, across an epoch edge.
  resumed = _take(train_stream.train_iterator(c, mesh, seed=5, start_step=4), 1)
  other = _take(train_stream.train_iterator(c, mesh, seed=6), 1)
  assert all(np.array_equal(full[4][k], resumed[0][k]) for k in full[4])
  assert not np.array_equal(full[0]["view1"], other[0]["view1"])


@pytest.mark.parametrize("in_memory", [None, False])
def test_imagenet_eval_center_crop(mock_tfds, mesh, in_memory):
  c = _config("imagenet2012", 1000, size=24, in_memory=in_memory)
  c.augment.eval_crop_fraction = 0.875
  it = eval_stream.eval_iterator(c, mesh, "validation")
  batches = [jax.tree.map(np.asarray, b) for b in it]
  assert len(batches) == len(it) == 2  # 48 examples, batches of 32
  assert batches[0]["image"].shape == (32, 24, 24, 3)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == NUM_EXAMPLES and not mask[NUM_EXAMPLES:].any()


class BadData(tfds.core.GeneratorBasedBuilder):
  """8x8 images, plain integer labels with one out of range, and a rank-2 'flat' image."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        "flat": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(), "test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(16):
      yield i, {"image": np.full((8, 8, 1), i, np.uint8), "flat": np.zeros((8, 8), np.uint8),
                "label": 12 if i == 5 else i % 10}


def test_bad_labels_and_image_rank(tmp_path, mesh):
  BadData(data_dir=str(tmp_path)).download_and_prepare()
  c = _config("bad_data", 10, size=8, data_dir=str(tmp_path), channels=1)
  with pytest.raises(ValueError, match=r"label 12 outside \[0, 10\)"):
    train_stream.train_iterator(c, mesh, seed=0)
  with pytest.raises(ValueError, match=r"label 12 outside \[0, 10\)"):
    list(eval_stream.eval_iterator(c, mesh))
  c.dataset.image_key = "flat"
  with pytest.raises(ValueError, match=r"'flat' has shape \(8, 8\) \(rank 2\)"):
    train_stream.train_iterator(c, mesh, seed=0)
