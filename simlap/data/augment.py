"""SimCLR / BYOL style image augmentations as TensorFlow ops, keyed by explicit seeds.

Every random choice is a `tf.random.stateless_*` op seeded from the caller's seed (shape [2],
int64), so a view depends only on (image, seed) and a resumed run reproduces its augmentations.
A view is made in two stages so that the pixel-heavy colour work runs on whole batches:
`first_stage` per image (crop, flip, RandAugment, the draw of every later choice), then
`second_stage` per batch (colour jitter, grayscale, blur, solarize), on the host or, for a
streamed run, inside the jitted step (`pack_params` sends the choices, `device_colour` applies
them). Views are float32 (size, size, C) in [0, 1]. Departures from torchvision and SimCLR:
docs/method.md, "Augmentations".

The public transforms branch in Python only on static values and with tf.cond on tensors, so
they are marked `do_not_convert`: tf.data traces them as written, without AutoGraph's
source-to-source conversion, which took about 1 s of each process's start-up.
"""
from __future__ import annotations
from collections.abc import Mapping
import math
from typing import Any

import numpy as np
import tensorflow as tf

from simlap.data import device_colour
from simlap.data import image_ops
from simlap.data import randaugment as randaugment_lib

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_BLUR_SIGMA = (0.1, 2.0)
_BLUR_RADIUS = 6  # 3 * max sigma


# ---- crops ------------------------------------------------------------------------------------

def _image_hw(image: tf.Tensor) -> tf.Tensor:
  """(2,) int32 height and width of a decoded image or of JPEG bytes (header only)."""
  if image.dtype == tf.string:
    return tf.image.extract_jpeg_shape(image)[:2]
  return tf.shape(image)[:2]


def _crop(image: tf.Tensor, window: tf.Tensor, channels: int) -> tf.Tensor:
  """Crops window [y, x, h, w]; JPEG bytes are decoded inside the window only."""
  if image.dtype == tf.string:
    return tf.image.decode_and_crop_jpeg(image, window, channels=channels)
  return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def random_crop_window(seed: tf.Tensor, hw: tf.Tensor, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tf.Tensor:
  """Inception-style crop window [y, x, h, w] covering `scale` of the area at aspect `ratio`.

  Falls back to the whole image when 10 attempts fail, as TF's sampler (and SimCLR) do.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([hw, [1]], 0), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 ([N,] h, w, C) -> float32 ([N,] size, size, C) in [0, 1].

  Scaling after the resize touches size^2 pixels rather than the (often larger) crop; the clip
  removes the round-off of the bilinear weights (a few ulp above 1).
  """
  return tf.clip_by_value(tf.image.resize(image, [size, size], method="bilinear") / 255, 0, 1)


@tf.autograph.experimental.do_not_convert
def eval_view(image: tf.Tensor, *, size: int, channels: int,
              crop_fraction: float = 1.0) -> tf.Tensor:
  """Evaluation transform: center square of side crop_fraction * short side, resized to size.

  Equals "resize the short side to size / crop_fraction, center crop size" (ImageNet: 0.875).
  `image` is JPEG bytes (scalar string), uint8 (H, W, C) or a uint8 batch (N, H, W, C): fixed-size
  in-memory datasets transform whole batches at once. Returns float32 ([N,] size, size, C) in
  [0, 1].
  """
  if image.dtype == tf.string:
    hw = _image_hw(image)
  elif image.shape[-3:-1] == (size, size) and crop_fraction == 1:
    return tf.image.convert_image_dtype(image, tf.float32)  # already the eval view
  else:
    hw = tf.shape(image)[-3:-1]
  side = tf.cast(tf.round(tf.cast(tf.reduce_min(hw), tf.float32) * crop_fraction), tf.int32)
  y, x = (hw[0] - side) // 2, (hw[1] - side) // 2
  if image.dtype == tf.string:
    image = tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, side, side]), channels=channels)
  else:
    image = image[..., y:y + side, x:x + side, :]
  out = _resize(image, size)
  return tf.ensure_shape(out, out.shape[:-3] + [size, size, channels])


# ---- stage 2: colour and blur on batches ---------------------------------------------------

def sample_params(seed: tf.Tensor, view: Mapping[str, Any],
                  channels: int) -> dict[str, tf.Tensor]:
  """One image's random choices for `second_stage`, as small tensors that batch."""
  # One draw for all choices: a dozen tiny random ops per image would cost more than the math.
  u = tf.random.stateless_uniform([13], seed)
  spread = lambda i, v: 1 - v + 2 * v * u[i]  # noqa: E731  U[1 - v, 1 + v]
  n_ops = 4 if channels == 3 else 2  # saturation and hue are identities on one channel
  return {
      "jitter": u[0] < view["jitter_prob"],
      "factors": tf.stack([spread(1, view["brightness"]), spread(2, view["contrast"]),
                           spread(3, view["saturation"]), view["hue"] * (2 * u[4] - 1)]),
      "grayscale": u[5] < view["grayscale_prob"],
      "blur": u[6] < view["blur_prob"],
      "sigma": _BLUR_SIGMA[0] + (_BLUR_SIGMA[1] - _BLUR_SIGMA[0]) * u[7],
      "solarize": u[8] < view["solarize_prob"],
      "order": tf.argsort(u[9:9 + n_ops]),  # a uniformly random permutation
  }


def pack_params(params: Mapping[str, tf.Tensor], channels: int) -> tf.Tensor:
  """One image's `sample_params` as the float32 (P,) vector that `device_colour` unpacks:
  device_colour.LAYOUT's fields in its (positional) order, then `order`."""
  parts = [tf.reshape(tf.cast(params[name], tf.float32), [-1])
           for name in (*device_colour.LAYOUT, "order")]
  return tf.ensure_shape(tf.concat(parts, 0), [device_colour.packed_size(channels)])


def _hue_matrices(theta: tf.Tensor) -> tf.Tensor:
  """(B,) angles -> (B, 3, 3) row-vector RGB maps rotating the YIQ chroma plane."""
  cos, sin, zero, one = tf.cos(theta), tf.sin(theta), tf.zeros_like(theta), tf.ones_like(theta)
  rot = tf.stack([tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1),
                  tf.stack([zero, sin, cos], -1)], -2)
  to_yiq = tf.constant(_RGB_TO_YIQ)
  column_map = tf.linalg.inv(to_yiq)[None] @ rot @ to_yiq[None]
  return tf.linalg.matrix_transpose(column_map)


def _colour_map(mean: tf.Tensor, p: Mapping[str, tf.Tensor], c: int, jitter: bool,
                grayscale: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """Each image's jitter (its ops in its order) then grayscale, composed into one affine map.

  Args:
    mean: (B, C) mean colour of each input image; contrast needs the mean luma of the image it
      is applied to, which is mean @ (maps so far), exact because the maps are affine.
    p: batched `sample_params`. c: channels. jitter, grayscale: whether the view uses them.
  Returns:
    (M (B, C, C), b (B, C)) with output pixel = pixel @ M + b.
  """
  n = tf.shape(mean)[0]
  eye = tf.eye(c, batch_shape=[n])
  luma = tf.constant(image_ops.LUMA if c == 3 else (1.0,))
  to_luma = tf.tile(luma[:, None], [1, c])[None]  # (1, C, C): every output channel = luma
  m, b = eye, tf.zeros_like(mean)
  f = p["factors"]
  scale = lambda v: v[:, None, None] * eye  # noqa: E731
  for slot in range(p["order"].shape[-1] if jitter else 0):
    luma_mean = tf.reduce_sum((tf.einsum("bc,bcd->bd", mean, m) + b) * luma, -1)
    maps = [scale(f[:, 0]), scale(f[:, 1])]  # brightness, contrast (torchvision)
    shifts = [tf.zeros_like(luma_mean), (1 - f[:, 1]) * luma_mean]
    if c == 3:  # saturation (torchvision), hue (YIQ rotation)
      maps += [scale(f[:, 2]) + (1 - f[:, 2])[:, None, None] * to_luma,
               _hue_matrices(2 * math.pi * f[:, 3])]
      shifts += [tf.zeros_like(luma_mean)] * 2
    pick = tf.one_hot(p["order"][:, slot], len(maps)) * tf.cast(p["jitter"], tf.float32)[:, None]
    m_k = tf.einsum("bk,kbij->bij", pick, tf.stack(maps)) + (
        1 - tf.reduce_sum(pick, -1))[:, None, None] * eye  # identity where jitter is off
    b_k = tf.reduce_sum(pick * tf.stack(shifts, -1), -1)[:, None]
    m, b = m @ m_k, tf.einsum("bc,bcd->bd", b, m_k) + b_k
  if grayscale and c == 3:
    g = tf.where(p["grayscale"][:, None, None], to_luma, eye)
    m, b = m @ g, tf.einsum("bc,bcd->bd", b, g)
  return m, b


def _where_on(x: tf.Tensor, on: tf.Tensor, fn, *args: tf.Tensor) -> tf.Tensor:
  """x with fn(x[on], *args[on]) written back; fn never runs on the other images."""
  def apply():
    idx = tf.where(on)
    return tf.tensor_scatter_nd_update(
        x, idx, fn(tf.gather_nd(x, idx), *[tf.gather_nd(a, idx) for a in args]))
  return tf.cond(tf.reduce_any(on), apply, lambda: x)


def _blur(x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
  """Gaussian blur of (n, H, W, C), each image with its sigma, all in one depthwise conv."""
  n, h, w, c = tf.unstack(tf.shape(x))
  r = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
  k = tf.exp(-tf.square(r)[None] / (2 * tf.square(sigma))[:, None])
  k = tf.repeat(k / tf.reduce_sum(k, -1, keepdims=True), c, axis=0)  # (n*C, K)
  # Images become channels of one image (1, H, W, n*C), one kernel per channel: vectorises
  # across images, where C = 3 channels alone would not. Zero padding ("SAME") as SimCLR.
  y = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, n * c])
  y = tf.nn.depthwise_conv2d(y, tf.transpose(k)[:, None, :, None], [1, 1, 1, 1], "SAME")
  y = tf.nn.depthwise_conv2d(y, tf.transpose(k)[None, :, :, None], [1, 1, 1, 1], "SAME")
  return tf.minimum(tf.transpose(tf.reshape(y, [h, w, n, c]), [2, 0, 1, 3]), 1.0)  # round-off


@tf.autograph.experimental.do_not_convert
def second_stage(batch: Mapping[str, tf.Tensor], view: Mapping[str, Any]) -> tf.Tensor:
  """Colour jitter -> grayscale -> blur -> solarize on float (B, H, W, C) `batch["image"]`.

  `batch` also holds each image's `sample_params` and its mean colour `mean` (B, C). Ops with
  probability 0 in `view` are not built at all, nor, for C = 1, saturation, hue and grayscale
  (identities on gray). Returns float32 (B, H, W, C) in [0, 1].
  """
  x = batch["image"]
  jitter, gray = view["jitter_prob"] > 0, view["grayscale_prob"] > 0
  if jitter or (gray and x.shape[-1] == 3):
    shape, c = tf.shape(x), x.shape[-1]
    m, b = _colour_map(batch["mean"], batch, c, jitter, gray)
    x = tf.reshape(tf.clip_by_value(tf.reshape(x, [shape[0], -1, c]) @ m + b[:, None], 0.0, 1.0),
                   shape)
  if view["blur_prob"] > 0:
    x = _where_on(x, batch["blur"], _blur, batch["sigma"])
  if view["solarize_prob"] > 0:
    x = _where_on(x, batch["solarize"], lambda y: tf.minimum(y, 1.0 - y))  # threshold 0.5
  return x


# ---- stage 1 and a whole view ---------------------------------------------------------------

@tf.autograph.experimental.do_not_convert
def first_stage(image: tf.Tensor, seed: tf.Tensor, view: Mapping[str, Any], *, size: int,
                channels: int) -> dict[str, tf.Tensor]:
  """Crop -> resize -> flip -> RandAugment of one image, plus its `sample_params`.

  Args:
    image: uint8 (H, W, C) or scalar string JPEG bytes.
    seed: int (2,) stateless seed; the result is a pure function of (image, seed, view).
    view: one of config.augment.view1 / view2.
    size: output side. channels: C.
  Returns:
    {"image": float32 (size, size, C) in [0, 1], "mean": (C,), **sample_params(...)}.
  """
  s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  window = random_crop_window(s[0], _image_hw(image), tuple(view["crop_scale"]),
                              tuple(view["crop_ratio"]))
  x = tf.ensure_shape(_resize(_crop(image, window, channels), size), [size, size, channels])
  if 0 < view["flip_prob"]:
    x = tf.cond(image_ops.uniform(s[1]) < view["flip_prob"], lambda: tf.image.flip_left_right(x),
                lambda: x)
  if view["randaugment_layers"] > 0:
    x = randaugment_lib.randaugment(x, s[2], layers=view["randaugment_layers"],
                    magnitude=view["randaugment_magnitude"])
  # The mean colour (for contrast) costs little here, with the image still in cache.
  return {"image": x, "mean": tf.reduce_mean(x, axis=[0, 1]),
          **sample_params(s[3], view, channels)}


@tf.autograph.experimental.do_not_convert
def train_view(image: tf.Tensor, seed: tf.Tensor, view: Mapping[str, Any], *, size: int,
               channels: int) -> tf.Tensor:
  """One augmented view of one image: float32 (size, size, C) in [0, 1]; see `first_stage`."""
  first = first_stage(image, seed, view, size=size, channels=channels)
  return second_stage({k: v[None] for k, v in first.items()}, view)[0]
