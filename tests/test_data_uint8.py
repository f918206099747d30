"""uint8 views to the device: the dtype that crosses, the quantisation, and an unchanged step.

Streamed (disk) datasets send uint8 views by default and the jitted step divides by 255; the
in-memory default (Fashion-MNIST) keeps float32 views, bit for bit as before. Where the colour
stage runs (host or device) is tests/test_device_colour.py's subject.
"""
from __future__ import annotations
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from simlap import config_schema
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import train_stream
import test_data_mock  # tests/ is on sys.path (not a package), as pytest imports it
import test_train


@pytest.fixture(scope="module")
def mesh(num_devices):
  del num_devices
  return sharding.make_mesh()


def test_streamed_imagenet_sends_uint8_equal_to_rounded_float(mesh):
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    c = test_data_mock._config("imagenet2012", 1000, size=24, in_memory=False)  # noqa: SLF001
    c.augment.colour_stage = "host"  # the default for uint8 is the device: test_device_colour
    crossed = next(train_stream.train_iterator(c, mesh, seed=3))
    assert crossed["view1"].dtype == crossed["view2"].dtype == np.uint8  # the device arrays
    c.dataset.view_dtype = "float32"
    floats = next(train_stream.train_iterator(c, mesh, seed=3))
  assert floats["view1"].dtype == np.float32
  for k in ("view1", "view2"):
    u, f = np.asarray(crossed[k]), np.asarray(floats[k])
    np.testing.assert_array_equal(u, np.round(f * 255).astype(np.uint8))  # same views, rounded
    assert u.std() > 10


def test_in_memory_default_stays_float32(fmnist_data_dir, mesh):
  c = test_train.tiny_config(fmnist_data_dir)
  assert next(train_stream.train_iterator(c, mesh, seed=0))["view1"].dtype == np.float32


@pytest.mark.slow  # two compilations of the tiny model, ~30 s on 2 cores
def test_step_on_uint8_views_equals_step_on_their_float32_values(fmnist_data_dir, mesh):
  # Plain SGD: params after one step are p - lr * grad, so equal params mean equal gradients
  # (Adam's first step is ~lr * sign(grad), which round-off flips where grad ~ 0).
  c = test_train.tiny_config(fmnist_data_dir, **{"dataset.view_dtype": "uint8",
                                                 "optimizer.name": "sgd", "optimizer.lr": 0.1})
  host = jax.device_get(next(train_stream.train_iterator(c, mesh, seed=0)))
  assert host["view1"].dtype == np.uint8
  as_float = {**host, **{k: host[k].astype(np.float32) / np.float32(255)
                         for k in ("view1", "view2")}}
  # The two programs fuse the conversion differently (into the first conv): float32 round-off
  # only. BatchNorm makes the step almost scale-invariant: dividing by 256 instead of 255 shows
  # in the gradients (1.6e-4), hence plain SGD and the params check.
  assert_same_first_step(c, mesh, host, as_float)


def assert_same_first_step(config, mesh, batch_a, batch_b):
  """One step from the same init on each batch: the same loss and params, up to round-off."""
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  results = []
  for batch in (batch_a, batch_b):
    state, metrics = trainer.step_fn(trainer.init_fn(),
                                     jax.device_put(batch, sharding.batch_sharding(mesh)))
    results.append(jax.device_get((metrics["loss"], state.params)))
  (loss_a, params_a), (loss_b, params_b) = results
  assert np.isfinite(loss_a)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)


def test_a_bad_view_dtype_is_rejected_before_any_data_is_read():
  c = test_train.tiny_config("/nonexistent", **{"dataset.view_dtype": "int8"})
  with pytest.raises(ValueError, match=r"config.dataset.view_dtype='int8' is not one of"):
    config_schema.validate(c)
