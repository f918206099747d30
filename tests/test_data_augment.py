"""Augmentation ops: stateless determinism, ranges, JPEG decode-and-crop, eval crop, 1 channel."""
from __future__ import annotations
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from simlap.data import augment
from simlap.data import randaugment

RNG = np.random.RandomState(0)
IMAGE = RNG.randint(0, 256, (40, 30, 3)).astype(np.uint8)


def _view(**changes):
  v = default.get_config().augment.view1.to_dict()
  v.update(jitter_prob=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
           grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.2)
  v.update(changes)
  return v


def _seed(*s):
  return tf.constant(s, tf.int64)


@pytest.mark.parametrize("channels", [3, 1])
def test_train_view_is_a_pure_function_of_the_seed(channels):
  image, view = tf.constant(IMAGE[..., :channels]), _view(randaugment_layers=2)
  fn = tf.function(lambda s: augment.train_view(image, s, view, size=24, channels=channels))
  a, b, c = fn(_seed(1, 2)).numpy(), fn(_seed(1, 2)).numpy(), fn(_seed(1, 3)).numpy()
  assert a.shape == (24, 24, channels) and a.dtype == np.float32
  assert 0 <= a.min() and a.max() <= 1
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).mean() > 1e-3


def test_jpeg_decode_and_crop_matches_decoded_crop():
  # A smooth photo-like image: libjpeg's chroma upsampling differs slightly at crop edges, which
  # per-pixel noise would exaggerate.
  yy, xx = np.mgrid[:60, :50]
  smooth = np.stack([yy * 4, xx * 5, 128 + 60 * np.sin(yy / 7 + xx / 9)], -1).astype(np.uint8)
  jpeg = tf.image.encode_jpeg(smooth, quality=95)
  decoded = tf.image.decode_jpeg(jpeg)
  view = _view(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
  for s in range(3):
    from_bytes = augment.train_view(jpeg, _seed(s, 0), view, size=16, channels=3)
    from_pixels = augment.train_view(decoded, _seed(s, 0), view, size=16, channels=3)
    assert np.abs(from_bytes - from_pixels).mean() < 2 / 255  # same window, same flip


def test_eval_view_is_the_center_square():
  out = augment.eval_view(tf.constant(IMAGE), size=30, channels=3, crop_fraction=1.0)
  np.testing.assert_allclose(out, IMAGE[5:35] / 255.0, atol=1e-6)
  jpeg = tf.image.encode_jpeg(IMAGE, quality=95)
  small = augment.eval_view(jpeg, size=12, channels=3, crop_fraction=0.875)
  assert small.shape == (12, 12, 3)
  batch = augment.eval_view(tf.constant(IMAGE[None, 5:33, :28]), size=28, channels=3)
  np.testing.assert_allclose(batch, IMAGE[None, 5:33, :28] / 255.0, atol=1e-6)


def _second(x, **params):
  """second_stage on a batch of one float image with the given parameters."""
  view = _view(jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5)
  p = augment.sample_params(_seed(0, 0), view, x.shape[-1])
  p.update(jitter=False, grayscale=False, blur=False, solarize=False, image=x,
           mean=tf.reduce_mean(x, axis=[0, 1]))
  p.update(params)
  return augment.second_stage({k: tf.convert_to_tensor(v)[None] for k, v in p.items()},
                              view)[0].numpy()


def test_colour_and_blur_ops():
  x = tf.constant(IMAGE / 255.0, tf.float32)
  np.testing.assert_allclose(_second(x), x, atol=1e-6)  # everything off: identity
  g = _second(x, grayscale=True)
  np.testing.assert_allclose(g[..., 0], g[..., 2], atol=1e-6)
  np.testing.assert_allclose(g[..., 0], tf.image.rgb_to_grayscale(x)[..., 0], atol=1e-3)
  np.testing.assert_allclose(_second(x, solarize=True), np.minimum(x, 1 - x), atol=1e-6)
  blurred = _second(x, blur=True, sigma=1.5)
  assert blurred[5:-5, 5:-5].std() < 0.5 * x.numpy()[5:-5, 5:-5].std()
  # Jitter: brightness alone scales; hue 0 and factors 1 are the identity; hue keeps grays.
  ones = [1.0, 1.0, 1.0, 0.0]
  np.testing.assert_allclose(_second(x, jitter=True, factors=[0.5, 1, 1, 0.0]), x * 0.5,
                             atol=1e-5)
  np.testing.assert_allclose(_second(x, jitter=True, factors=ones), x, atol=1e-5)
  gray = tf.tile(x[..., :1], [1, 1, 3])
  np.testing.assert_allclose(_second(gray, jitter=True, factors=[1, 1, 1, 0.3]), gray,
                             atol=1e-4)
  # Saturation 0 is the luma image; contrast 0 the mean luma.
  np.testing.assert_allclose(_second(x, jitter=True, factors=[1, 1, 0, 0.0]), g, atol=1e-5)
  flat = _second(x, jitter=True, factors=[1, 0, 1, 0.0])
  np.testing.assert_allclose(flat, np.full_like(flat, g.mean()), atol=1e-4)
  one = _second(x[..., :1], jitter=True, factors=[1.2, 0.8, 1, 0.0], blur=True)
  assert one.shape == (40, 30, 1)


def test_randaugment_changes_images_and_keeps_the_range():
  x = tf.constant(IMAGE[:28, :28] / 255.0, tf.float32)
  outs = [randaugment.randaugment(x, _seed(i, 9), layers=2, magnitude=9).numpy() for i in range(6)]
  assert all(o.shape == (28, 28, 3) and 0 <= o.min() and o.max() <= 1 for o in outs)
  assert sum(np.abs(o - x.numpy()).mean() > 1e-3 for o in outs) >= 4
