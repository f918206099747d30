"""The colour stage on the device: the same maths as the host's, and what a streamed run sends.

A streamed run sends uint8 crops and each view's packed parameters; the jitted step applies
colour jitter, grayscale, blur and solarize (simlap/data/device_colour.py). In-memory runs
(Fashion-MNIST) keep the host's colour stage and their exact numbers.
"""
from __future__ import annotations
import functools

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simlap.data import augment
from simlap.data import device_colour
from simlap.data import train_stream
from simlap.runtime import sharding
from simlap.training import step as step_lib
import test_data_augment  # tests/ is on sys.path (not a package), as pytest imports it
import test_data_mock
import test_data_uint8
import test_train

N, SIZE = 12, 20


def _view():
  """Every op drawn with probability 0.5 to 0.8, strong factors (test_data_augment's view)."""
  return test_data_augment._view(jitter_prob=0.8, grayscale_prob=0.5, blur_prob=0.5,  # noqa: SLF001
                                 solarize_prob=0.5)


def _host_batch(channels: int, view: dict):
  """N first-stage images with their drawn parameters, as tf.data batches them."""
  rng = np.random.RandomState(channels)
  images = rng.randint(0, 256, (N, 32, 28, channels)).astype(np.uint8)
  firsts = [augment.first_stage(tf.constant(im), tf.constant([i, 7], tf.int64), view, size=SIZE,
                                channels=channels) for i, im in enumerate(images)]
  return {k: tf.stack([f[k] for f in firsts]) for k in firsts[0]}


@pytest.mark.parametrize("channels", [3, 1])
def test_device_colour_equals_the_host_colour_stage(channels):
  view = _view()
  batch = _host_batch(channels, view)
  host = augment.second_stage(batch, view).numpy()
  packed = tf.stack([augment.pack_params({k: v[i] for k, v in batch.items()}, channels)
                     for i in range(N)]).numpy()
  assert packed.shape == (N, device_colour.packed_size(channels))
  on = jax.jit(functools.partial(device_colour.second_stage, view=view))
  device = np.asarray(on(batch["image"].numpy(), packed))
  # Every op is drawn on for some images and off for others, or the comparison proves less.
  for name in ("jitter", "blur", "solarize") + (("grayscale",) if channels == 3 else ()):
    assert 0 < batch[name].numpy().sum() < N, name
  assert np.abs(host - batch["image"].numpy()).mean() > 0.05  # the stage does something
  np.testing.assert_allclose(device, host, atol=2e-5)


def _stream_config(colour_stage, dtype):
  c = test_data_mock._config("imagenet2012", 1000, size=24, in_memory=False)  # noqa: SLF001
  c.augment.colour_stage, c.dataset.view_dtype = colour_stage, dtype
  return c


def test_streamed_views_cross_as_uint8_crops_and_their_parameters():
  mesh = sharding.make_mesh()
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    crossed = next(train_stream.train_iterator(_stream_config(None, None), mesh, seed=3))
    host = next(train_stream.train_iterator(_stream_config("host", "float32"), mesh, seed=3))
  p = device_colour.packed_size(3)
  for k in ("view1", "view2"):
    assert crossed[k].dtype == np.uint8 and crossed[k].shape == (16, 24, 24, 3)
    assert crossed[k + "_colour"].dtype == np.float32 and crossed[k + "_colour"].shape == (16, p)
  assert "view1_colour" not in host
  made = jax.device_get(jax.jit(functools.partial(
      step_lib.device_views, config=_stream_config(None, None)))(crossed))
  assert set(made) == set(host)  # the parameter arrays are used up
  for k in ("view1", "view2"):
    assert made[k].dtype == np.float32
    # The device colours the rounded crop, the host the exact one: round-off of 1/510 through
    # factors of at most 1.8, nothing more.
    diff = np.abs(made[k] - np.asarray(host[k]))
    assert diff.max() < 2.5 / 255 and diff.mean() < 0.5 / 255, (k, diff.max(), diff.mean())
    assert np.abs(np.asarray(crossed[k]) / 255 - np.asarray(host[k])).mean() > 0.02



def test_the_train_step_colours_streamed_views_on_the_device(fmnist_data_dir):
  # Fashion-MNIST read as a stream: uint8 crops + parameters, the jitted step colours them.
  # Plain SGD, so equal params mean equal gradients (see test_data_uint8).
  mesh = sharding.make_mesh()
  c = test_train.tiny_config(fmnist_data_dir, **{
      "dataset.in_memory": False, "optimizer.name": "sgd", "optimizer.lr": 0.1,
      "augment.view1.blur_prob": 0.5, "augment.view2.solarize_prob": 0.5})
  host = jax.device_get(next(train_stream.train_iterator(c, mesh, seed=0)))
  assert host["view1"].dtype == np.uint8 and "view1_colour" in host
  coloured = {k: v for k, v in host.items() if not k.endswith("_colour")}
  for k, view in (("view1", c.augment.view1), ("view2", c.augment.view2)):  # the reference
    coloured[k] = np.asarray(jax.jit(functools.partial(device_colour.second_stage, view=view))(
        host[k].astype(np.float32) / np.float32(255), host[k + "_colour"]))
  test_data_uint8.assert_same_first_step(c, mesh, host, coloured)
