"""Input pipeline on the real Fashion-MNIST builder: shapes, determinism, resume, processes, eval.

Splits are sliced to a few dozen examples so every iterator builds in well under a second.
"""
from __future__ import annotations
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from simlap.runtime import sharding
from simlap.data import fashion_mnist
from simlap.data import datasets
from simlap.data import eval_stream
from simlap.data import train_stream


@pytest.fixture(scope="module")
def mesh(num_devices):
  del num_devices  # asserts the 8 simulated devices
  return sharding.make_mesh()


def _config(data_dir, **dataset):
  c = default.get_config()
  c.dataset.data_dir = data_dir
  c.dataset.train_split = "train[:40]"  # 40 % 16 != 0: five steps cross an epoch boundary
  c.dataset.eval_split = "test[:50]"
  c.batch_size = 16
  c.eval_batch_size = 16
  c.dataset.update(dataset)
  return c


def _take(it, n):
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def _equal(a, b):
  return all(np.array_equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_fashion_mnist_info(fmnist_data_dir):
  info = datasets.get_dataset_info(_config(fmnist_data_dir, train_split="train", eval_split="test"))
  assert info.class_names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                              "Shirt", "Sneaker", "Bag", "Ankle boot")
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 60000, 10000)
  assert info.image_shape == (28, 28, 1)
  test = tfds.builder(fashion_mnist.NAME, data_dir=fmnist_data_dir).as_dataset(
      split="test", batch_size=-1)
  assert np.bincount(tfds.as_numpy(test)["label"]).tolist() == [1000] * 10


def test_missing_source_files_say_how_to_install(tmp_path, monkeypatch):
  monkeypatch.delenv(fashion_mnist.SOURCE_DIR_ENV, raising=False)
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), source_dir=str(tmp_path))
  monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, str(tmp_path / "env"))
  assert fashion_mnist.resolve_source_dir() == str(tmp_path / "env")


def test_train_batch_shapes_ranges_and_views(fmnist_data_dir, mesh):
  (batch,) = _take(train_stream.train_iterator(_config(fmnist_data_dir), mesh, seed=0), 1)
  raw = next(train_stream.train_iterator(_config(fmnist_data_dir), mesh, seed=0))
  assert raw["view1"].sharding == sharding.batch_sharding(mesh)
  assert set(batch) == {"view1", "view2", "label"}
  for k in ("view1", "view2"):
    assert batch[k].shape == (16, 28, 28, 1) and batch[k].dtype == np.float32
    assert 0 <= batch[k].min() and batch[k].max() <= 1 and batch[k].std() > 0.05
  assert batch["label"].dtype == np.int32 and ((0 <= batch["label"]) & (batch["label"] < 10)).all()
  # Independent augmentations: every row's two views differ.
  assert (np.abs(batch["view1"] - batch["view2"]).mean(axis=(1, 2, 3)) > 1e-3).all()


def test_same_seed_same_batches_other_seed_differs(fmnist_data_dir, mesh):
  c = _config(fmnist_data_dir)
  a = _take(train_stream.train_iterator(c, mesh, seed=1), 3)
  b = _take(train_stream.train_iterator(c, mesh, seed=1), 3)
  other = _take(train_stream.train_iterator(c, mesh, seed=2), 3)
  assert all(_equal(x, y) for x, y in zip(a, b))
  assert not any(np.array_equal(x["view1"], y["view1"]) for x, y in zip(a, other))
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, other))


def test_resume_yields_the_uninterrupted_batches(fmnist_data_dir, mesh):
  for extra in ({}, {"repeats": 2}):
    c = _config(fmnist_data_dir, **extra)
    # steps 0..4, epoch boundary at 2.5
    full = _take(train_stream.train_iterator(c, mesh, seed=3), 5)
    resumed = _take(train_stream.train_iterator(c, mesh, seed=3, start_step=3), 2)
    assert _equal(full[3], resumed[0]) and _equal(full[4], resumed[1])


def test_processes_read_disjoint_parts_covering_the_split(fmnist_data_dir, mesh):
  c = _config(fmnist_data_dir, train_split="train[:64]")
  seen = []
  for p in range(2):
    ds = train_stream.local_train_dataset(c, seed=0, process_index=p, process_count=2,
                                          with_ids=True)
    ids = np.concatenate([b["tfds_id"] for b in ds.take(4).as_numpy_iterator()])  # 1 epoch
    assert len(set(ids)) == 32  # one epoch: each of the process's examples once
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  everything = tfds.builder(fashion_mnist.NAME, data_dir=fmnist_data_dir).as_dataset(
      split="train[:64]", read_config=tfds.ReadConfig(add_tfds_id=True), batch_size=-1)
  assert seen[0] | seen[1] == set(tfds.as_numpy(everything)["tfds_id"])
  # Simulated processes: the arrays hold the process's own rows, sharded over all devices.
  batch = next(train_stream.train_iterator(c, mesh, seed=0, process_index=1, process_count=2))
  assert batch["view1"].shape == (8, 28, 28, 1)


def test_repeats_give_independent_views_of_one_image(fmnist_data_dir, mesh):
  config = _config(fmnist_data_dir, repeats=4)
  (batch,) = _take(train_stream.train_iterator(config, mesh, seed=0), 1)
  labels = batch["label"].reshape(4, 4)
  assert (labels == labels[:, :1]).all()  # rows 4i..4i+3 are copies of one image
  v = batch["view1"].reshape(4, 4, -1)
  assert np.abs(v[:, 0] - v[:, 1]).mean() > 1e-3


def test_class_balanced_sampler(fmnist_data_dir, mesh):
  c = _config(fmnist_data_dir, train_split="train[:500]", classes_per_batch=4,
              samples_per_class=4)
  for batch in _take(train_stream.train_iterator(c, mesh, seed=0), 2):
    classes, counts = np.unique(batch["label"], return_counts=True)
    assert len(classes) == 4 and (counts == 4).all()


def test_eval_counts_every_example_once(fmnist_data_dir, mesh):
  c = _config(fmnist_data_dir)
  expected = tfds.as_numpy(tfds.builder(fashion_mnist.NAME, data_dir=fmnist_data_dir).as_dataset(
      split="test[:50]", batch_size=-1))
  it = eval_stream.eval_iterator(c, mesh)
  batches = [jax.tree.map(np.asarray, b) for b in it]
  assert len(batches) == len(it) == 4 == eval_stream.num_eval_batches(c)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 50 and not mask[50:].any()
  images = np.concatenate([b["image"] for b in batches])[mask]
  np.testing.assert_allclose(images, expected["image"] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                expected["label"])
  # Two simulated processes: 25 rows each, 8-row local batches, same number of batches.
  per_process = []
  for p in range(2):
    it = eval_stream.eval_iterator(c, mesh, process_index=p, process_count=2)
    per_process.append([jax.tree.map(np.asarray, b) for b in it])
    assert len(per_process[-1]) == len(it) == 4
  labels = np.concatenate([b["label"][b["mask"]] for bs in per_process for b in bs])
  np.testing.assert_array_equal(labels, expected["label"])


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=7), r"num_classes=7 but .* has 10 classes"),
    (dict(channels=3), r"1 channels but config.dataset.channels=3"),
    (dict(batch_size=12), r"batch_size=12 does not split evenly"),
    (dict(name="cifar10"), r"'cifar10' is not prepared in .*download is False"),
    (dict(extra_label_keys=("coarse_label",)), r"no feature 'coarse_label'"),
])
def test_validation_errors(fmnist_data_dir, mesh, tmp_path, change, message):
  c = _config(fmnist_data_dir)
  if "batch_size" in change:
    c.batch_size = change.pop("batch_size")
  if change.get("name") == "cifar10":
    change["data_dir"] = str(tmp_path)  # empty: nothing prepared there
  c.dataset.update(change)
  with pytest.raises(ValueError, match=message):
    train_stream.train_iterator(c, mesh, seed=0)


def test_tensorflow_sees_no_gpu():
  import tensorflow as tf  # noqa: PLC0415
  assert not tf.config.get_visible_devices("GPU")
  assert os.environ.get("TFDS_DISABLE_GCS") == "1"
