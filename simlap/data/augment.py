"""SimCLR / BYOL style image augmentations as TensorFlow ops, keyed by explicit seeds.

Every random choice uses a `tf.random.stateless_*` op with a seed derived from the caller's
seed (shape [2], int64), so a view depends only on (image, seed): the input pipeline derives the
seed from (run seed, step, position) and a resumed run reproduces its augmentations exactly.

A view is made in two stages so that the pixel-heavy colour work runs on whole batches:
  1. `first_stage`, per image: random resized crop (JPEG bytes: only the window is decoded,
     `tf.image.decode_and_crop_jpeg`, as big_vision and TF SimCLR do), flip, RandAugment, and
     the draw of every later random choice as small tensors (`sample_params`).
  2. `second_stage`, per batch: colour jitter, grayscale, Gaussian blur, solarize, each image
     with its own parameters. `train_view` runs both stages on one image.
Views are float32 (size, size, C) in [0, 1]. For C = 1 (Fashion-MNIST) the colour-only ops
(saturation, hue, grayscale) are skipped: they are identities on gray.

Colour jitter follows torchvision's ColorJitter (factors ~ U[1 - s, 1 + s], the four ops in a
random order per image): brightness = scale, contrast = blend with the mean luma, saturation =
blend with the luma image. Two deliberate differences make the colour stage ~6x cheaper on CPU
(~0.6 instead of ~3.7 ms per 224 px image and core):
  * hue rotates the chroma plane in YIQ space by 2 pi * U[-h, h], a linear stand-in for the
    HSV hue shift (grays stay gray, as with HSV);
  * so every jitter op and grayscale is an affine map of RGB, and each image's sequence is
    composed into one 3x3 map + offset applied in one pass, clipped to [0, 1] once at the end
    instead of after every op (values that leave [0, 1] mid-sequence may come back).
Blur follows SimCLR (sigma ~ U[0.1, 2], zero padding) with the kernel cut at 3 sigma_max =
6 px instead of 10% of the side (the weights beyond are < 0.3% of the centre's). Solarize uses
the 0.5 threshold. Blur and solarize touch only the images that drew them.

View settings (config.augment.view1 / view2), fields as in configs/default.py:
  crop_scale, crop_ratio     random resized crop: area fraction and aspect-ratio ranges
  flip_prob                  horizontal flip
  jitter_prob, brightness, contrast, saturation, hue
  grayscale_prob, blur_prob, solarize_prob
  randaugment_layers, randaugment_magnitude
                             RandAugment (0 layers = off), applied after crop/flip, before jitter

RandAugment ops implemented (magnitude m in [0, 10], signs random as in timm):
identity, autocontrast, rotate (30 deg), solarize, posterize, color, contrast, brightness,
sharpness (0.9), shear_x/y (0.3), translate_x/y (0.45 of the side). Equalize is left out: it
needs per-image histograms that have no clean TF op.
"""
from collections.abc import Mapping
import math
from typing import Any

import numpy as np
import tensorflow as tf

_GRAY = 0.5  # fill value for pixels that geometric RandAugment ops bring in
_LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_BLUR_SIGMA = (0.1, 2.0)
_BLUR_RADIUS = 6  # 3 * max sigma


def _uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval, maxval)


def _branch(op, x: tf.Tensor, seed: tf.Tensor):
  """A zero-argument branch for tf.switch_case that applies op(x, seed) and clips to [0, 1]."""
  return lambda: tf.clip_by_value(op(x, seed), 0.0, 1.0)


def _luma(x: tf.Tensor) -> tf.Tensor:
  """(..., C) -> (..., 1) luma; the identity for one channel."""
  if x.shape[-1] == 1:
    return x
  return tf.reduce_sum(x * tf.constant(_LUMA), axis=-1, keepdims=True)


def _blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """a + factor * (b - a), clipped: factor 0 gives a, 1 gives b, > 1 extrapolates."""
  return tf.clip_by_value(a + factor * (b - a), 0.0, 1.0)


def solarize(x: tf.Tensor, threshold: float | tf.Tensor = 0.5) -> tf.Tensor:
  return tf.where(x < threshold, x, 1.0 - x)


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


# ---- RandAugment ------------------------------------------------------------------------------

def _affine(x: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
  """Output pixel (u, v) <- input at matrix @ (u, v, 1), matrix 3x3 in centred coordinates."""
  h, w = x.shape[0], x.shape[1]
  to_center = tf.constant([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]], tf.float32)
  from_center = tf.constant([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], tf.float32)
  m = from_center @ matrix @ to_center
  transform = tf.reshape(m, [9])[:8][None]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform, output_shape=tf.shape(x)[:2],
      fill_value=_GRAY, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def _sharpness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Sharpness: blend with a 3x3 smoothed copy (borders kept)."""
  c = x.shape[-1]
  k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  smooth = tf.nn.depthwise_conv2d(x[None], tf.tile(k[:, :, None, None], [1, 1, c, 1]),
                                  [1, 1, 1, 1], "SAME")[0]
  inner = tf.pad(tf.ones(tf.shape(x)[:2] - 2), [[1, 1], [1, 1]])[:, :, None]
  smooth = inner * smooth + (1 - inner) * x
  return _blend(smooth, x, factor)


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
  color = lambda y, f: _blend(_luma(y), y, f)  # noqa: E731  (PIL's ImageEnhance.Color)

  def signed(s, v):  # +-v with a random sign, as timm's _randomly_negate
    return tf.where(_uniform(s) < 0.5, -v, v)

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
      lambda y, s: solarize(y, 1.0 - m),
      lambda y, s: _posterize(y, max(1, 8 - int(4 * m))),
      lambda y, s: color(y, enhance(s)),
      lambda y, s: _blend(tf.reduce_mean(_luma(y)), y, enhance(s)),
      lambda y, s: _blend(tf.zeros_like(y), y, enhance(s)),
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
    return i + 1, tf.ensure_shape(tf.switch_case(which, [_branch(op, y, op_seed) for op in ops]),
                                  y.shape)

  return tf.while_loop(lambda i, y: i < layers, layer, (0, x))[1]


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
  luma = tf.constant(_LUMA if c == 3 else (1.0,))
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


def second_stage(batch: Mapping[str, tf.Tensor], view: Mapping[str, Any]) -> tf.Tensor:
  """Colour jitter -> grayscale -> blur -> solarize on float (B, H, W, C) `batch["image"]`.

  `batch` also holds each image's `sample_params` and its mean colour `mean` (B, C). Ops with
  probability 0 in `view` are not built at all. Returns float32 (B, H, W, C) in [0, 1].
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
    x = tf.cond(_uniform(s[1]) < view["flip_prob"], lambda: tf.image.flip_left_right(x),
                lambda: x)
  if view["randaugment_layers"] > 0:
    x = randaugment(x, s[2], layers=view["randaugment_layers"],
                    magnitude=view["randaugment_magnitude"])
  # The mean colour (for contrast) costs little here, with the image still in cache.
  return {"image": x, "mean": tf.reduce_mean(x, axis=[0, 1]),
          **sample_params(s[3], view, channels)}


def train_view(image: tf.Tensor, seed: tf.Tensor, view: Mapping[str, Any], *, size: int,
               channels: int) -> tf.Tensor:
  """One augmented view of one image: float32 (size, size, C) in [0, 1]; see `first_stage`."""
  first = first_stage(image, seed, view, size=size, channels=channels)
  return second_stage({k: v[None] for k, v in first.items()}, view)[0]
