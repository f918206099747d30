"""Pixel primitives shared by the augmentations (`augment`) and RandAugment (`randaugment`).

Images are float32 (..., H, W, C) in [0, 1]; seeds are stateless TF seeds (shape [2], int64).
"""
from __future__ import annotations
import tensorflow as tf

GRAY = 0.5  # fill value for pixels that geometric ops bring in
LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights


def uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval, maxval)


def branch(op, x: tf.Tensor, seed: tf.Tensor):
  """A zero-argument branch for tf.switch_case that applies op(x, seed) and clips to [0, 1]."""
  return lambda: tf.clip_by_value(op(x, seed), 0.0, 1.0)


def luma(x: tf.Tensor) -> tf.Tensor:
  """(..., C) -> (..., 1) luma; the identity for one channel."""
  if x.shape[-1] == 1:
    return x
  return tf.reduce_sum(x * tf.constant(LUMA), axis=-1, keepdims=True)


def blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """a + factor * (b - a), clipped: factor 0 gives a, 1 gives b, > 1 extrapolates."""
  return tf.clip_by_value(a + factor * (b - a), 0.0, 1.0)


def solarize(x: tf.Tensor, threshold: float | tf.Tensor = 0.5) -> tf.Tensor:
  return tf.where(x < threshold, x, 1.0 - x)
