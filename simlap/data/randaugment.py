"""RandAugment (Cubuk et al., 2020) as stateless TensorFlow ops, timm-style random signs.

Ops (magnitude m in [0, 10]): identity, autocontrast, rotate (30 deg), solarize, posterize,
color, contrast, brightness, sharpness (0.9), shear_x/y (0.3), translate_x/y (0.45 of the
side). Equalize is left out: it needs per-image histograms that have no clean TF op.
"""
from __future__ import annotations
import math

import tensorflow as tf

from simlap.data import image_ops


def _affine(x: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
  """Output pixel (u, v) <- input at matrix @ (u, v, 1), matrix 3x3 in centred coordinates."""
  h, w = x.shape[0], x.shape[1]
  to_center = tf.constant([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]], tf.float32)
  from_center = tf.constant([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], tf.float32)
  m = from_center @ matrix @ to_center
  transform = tf.reshape(m, [9])[:8][None]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform, output_shape=tf.shape(x)[:2],
      fill_value=image_ops.GRAY, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def _sharpness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Sharpness: blend with a 3x3 smoothed copy (borders kept)."""
  c = x.shape[-1]
  k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  smooth = tf.nn.depthwise_conv2d(x[None], tf.tile(k[:, :, None, None], [1, 1, c, 1]),
                                  [1, 1, 1, 1], "SAME")[0]
  inner = tf.pad(tf.ones(tf.shape(x)[:2] - 2), [[1, 1], [1, 1]])[:, :, None]
  smooth = inner * smooth + (1 - inner) * x
  return image_ops.blend(smooth, x, factor)


def _autocontrast(x: tf.Tensor) -> tf.Tensor:
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  return tf.where(hi > lo, (x - lo) / tf.maximum(hi - lo, 1e-6), x)


def _posterize(x: tf.Tensor, bits: int) -> tf.Tensor:
  step = 2.0 ** (8 - bits)
  return tf.floor(x * 255.0 / step) * step / 255.0


def randaugment(x: tf.Tensor, seed: tf.Tensor, *, layers: int, magnitude: float) -> tf.Tensor:
  """RandAugment(N=layers, M=magnitude) on float (H, W, C) in [0, 1]; ops in the module doc."""
  m = magnitude / 10.0
  side = float(x.shape[0])
  color = lambda y, f: image_ops.blend(image_ops.luma(y), y, f)  # noqa: E731  (PIL's ImageEnhance.Color)

  def signed(s, v):  # +-v with a random sign, as timm's _randomly_negate
    return tf.where(image_ops.uniform(s) < 0.5, -v, v)

  def rot(y, s):
    a = signed(s, 30.0 * m) * math.pi / 180
    return _affine(y, tf.stack([[tf.cos(a), -tf.sin(a), 0.0], [tf.sin(a), tf.cos(a), 0.0],
                                [0.0, 0.0, 1.0]]))

  def shear(y, s, axis):
    v = signed(s, 0.3 * m)
    row0 = [1.0, v, 0.0] if axis == 0 else [1.0, 0.0, 0.0]
    row1 = [0.0, 1.0, 0.0] if axis == 0 else [v, 1.0, 0.0]
    return _affine(y, tf.stack([tf.stack(row0), tf.stack(row1), tf.constant([0.0, 0.0, 1.0])]))

  def translate(y, s, axis):
    v = signed(s, 0.45 * m * side)
    t = [v, 0.0] if axis == 0 else [0.0, v]
    return _affine(y, tf.stack([tf.stack([1.0, 0.0, t[0]]), tf.stack([0.0, 1.0, t[1]]),
                                tf.constant([0.0, 0.0, 1.0])]))

  enhance = lambda s: 1.0 + signed(s, 0.9 * m)  # noqa: E731
  ops = [
      lambda y, s: y,
      lambda y, s: _autocontrast(y),
      rot,
      lambda y, s: image_ops.solarize(y, 1.0 - m),
      lambda y, s: _posterize(y, max(1, 8 - int(4 * m))),
      lambda y, s: color(y, enhance(s)),
      lambda y, s: image_ops.blend(tf.reduce_mean(image_ops.luma(y)), y, enhance(s)),
      lambda y, s: image_ops.blend(tf.zeros_like(y), y, enhance(s)),
      lambda y, s: _sharpness(y, enhance(s)),
      lambda y, s: shear(y, s, 0),
      lambda y, s: shear(y, s, 1),
      lambda y, s: translate(y, s, 0),
      lambda y, s: translate(y, s, 1),
  ]

  def layer(i, y):  # traced once, run `layers` times
    pick, op_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, i), 2))
    which = tf.random.stateless_uniform([], pick, 0, len(ops), dtype=tf.int32)
    branches = [image_ops.branch(op, y, op_seed) for op in ops]
    return i + 1, tf.ensure_shape(tf.switch_case(which, branches), y.shape)

  return tf.while_loop(lambda i, y: i < layers, layer, (0, x))[1]
