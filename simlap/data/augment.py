"""SimCLR / BYOL style image augmentations as TensorFlow ops, keyed by explicit seeds.

Every random choice uses a `tf.random.stateless_*` op with a seed derived from the caller's
seed (shape [2], int64), so a view depends only on (image, seed): the input pipeline derives the
seed from (run seed, step, position) and a resumed run reproduces its augmentations exactly.

Images enter as uint8 (H, W, C) tensors, or as JPEG bytes (scalar string) in which case only the
crop window is decoded (`tf.image.decode_and_crop_jpeg`, as big_vision and TF SimCLR do). Views
leave as float32 (size, size, C) in [0, 1]. For C = 1 (Fashion-MNIST) the colour-only ops
(saturation, hue, grayscale, RandAugment's "color") are skipped: they are identities on gray.

View settings (config.augment.view1 / view2), fields as in configs/default.py:
  crop_scale, crop_ratio     random resized crop: area fraction and aspect-ratio ranges
  flip_prob                  horizontal flip
  jitter_prob, brightness, contrast, saturation, hue
                             colour jitter, torchvision semantics, the four in random order
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

import tensorflow as tf

_GRAY = 0.5  # fill value for pixels that geometric RandAugment ops bring in


def _uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval, maxval)


def _maybe(seed: tf.Tensor, prob: float, fn, x: tf.Tensor) -> tf.Tensor:
  """Applies `fn` with probability `prob`; p = 0 or 1 builds no branch at all."""
  if prob <= 0:
    return x
  if prob >= 1:
    return fn(x)
  return tf.cond(_uniform(seed) < prob, lambda: fn(x), lambda: x)


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
  """Any (h, w, C) -> float32 (size, size, C) in [0, 1]."""
  image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
  image = tf.image.resize(image, [size, size], method="bilinear")
  return tf.clip_by_value(image, 0.0, 1.0)


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


# ---- colour -----------------------------------------------------------------------------------

def _blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """a + factor * (b - a), clipped: factor 0 gives a, 1 gives b, > 1 extrapolates."""
  return tf.clip_by_value(a + factor * (b - a), 0.0, 1.0)


def _branch(op, x: tf.Tensor, seed: tf.Tensor):
  """A zero-argument branch for tf.switch_case that applies op(x, seed) and clips to [0, 1]."""
  return lambda: tf.clip_by_value(op(x, seed), 0.0, 1.0)


def _gray(x: tf.Tensor) -> tf.Tensor:
  return x if x.shape[-1] == 1 else tf.image.rgb_to_grayscale(x)


def color_jitter(x: tf.Tensor, seed: tf.Tensor, *, brightness: float, contrast: float,
                 saturation: float, hue: float) -> tf.Tensor:
  """torchvision ColorJitter: factors ~ U[1 - s, 1 + s], hue shift ~ U[-h, h], random order."""
  seeds = tf.random.experimental.stateless_split(seed, 5)
  ops = [
      lambda y, s: y * _uniform(s, 1 - brightness, 1 + brightness),
      lambda y, s: _blend(tf.reduce_mean(_gray(y)), y, _uniform(s, 1 - contrast, 1 + contrast)),
  ]
  if x.shape[-1] == 3:  # saturation and hue are identities on one channel
    ops += [
        lambda y, s: tf.image.adjust_saturation(
            y, _uniform(s, 1 - saturation, 1 + saturation)),
        lambda y, s: tf.image.adjust_hue(y, _uniform(s, -hue, hue)),
    ]
  order = tf.random.experimental.stateless_shuffle(tf.range(len(ops)), seeds[4])
  # A loop rather than an unrolled sequence: the branches are traced once, not once per slot.
  body = lambda i, y: (i + 1, tf.switch_case(  # noqa: E731
      order[i], [_branch(op, y, seeds[j]) for j, op in enumerate(ops)]))
  return tf.while_loop(lambda i, y: i < len(ops), body, (0, x))[1]


def grayscale(x: tf.Tensor) -> tf.Tensor:
  return tf.tile(_gray(x), [1, 1, x.shape[-1]])


def gaussian_blur(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """SimCLR blur: sigma ~ U[0.1, 2], kernel 10% of the side, separable depthwise conv."""
  size = x.shape[0]
  radius = max(size // 20, 1)
  sigma = _uniform(seed, 0.1, 2.0)
  k = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=tf.float32)) / (2 * sigma**2))
  k /= tf.reduce_sum(k)
  c = x.shape[-1]
  kh = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, c, 1])
  kw = tf.reshape(kh, [1, -1, c, 1])
  y = tf.nn.depthwise_conv2d(x[None], kh, [1, 1, 1, 1], "SAME")
  y = tf.nn.depthwise_conv2d(y, kw, [1, 1, 1, 1], "SAME")
  return y[0]


def solarize(x: tf.Tensor, threshold: float | tf.Tensor = 0.5) -> tf.Tensor:
  return tf.where(x < threshold, x, 1.0 - x)


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
  color = (lambda y, f: tf.image.adjust_saturation(y, f)) if x.shape[-1] == 3 else (
      lambda y, f: y)

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
      lambda y, s: _blend(tf.reduce_mean(_gray(y)), y, enhance(s)),
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


# ---- a whole training view --------------------------------------------------------------------

def train_view(image: tf.Tensor, seed: tf.Tensor, view: Mapping[str, Any], *, size: int,
               channels: int) -> tf.Tensor:
  """One augmented view: crop -> flip -> RandAugment -> jitter -> grayscale -> blur -> solarize.

  Args:
    image: uint8 (H, W, C) or scalar string JPEG bytes.
    seed: int (2,) stateless seed; the view is a pure function of (image, seed, view).
    view: one of config.augment.view1 / view2.
    size: output side. channels: C.
  Returns:
    float32 (size, size, channels) in [0, 1].
  """
  s = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
  window = random_crop_window(s[0], _image_hw(image), tuple(view["crop_scale"]),
                              tuple(view["crop_ratio"]))
  x = _resize(_crop(image, window, channels), size)
  x.set_shape([size, size, channels])
  x = _maybe(s[1], view["flip_prob"], tf.image.flip_left_right, x)
  if view["randaugment_layers"] > 0:
    x = randaugment(x, s[2], layers=view["randaugment_layers"],
                    magnitude=view["randaugment_magnitude"])
  jitter = lambda y: color_jitter(  # noqa: E731
      y, s[3], brightness=view["brightness"], contrast=view["contrast"],
      saturation=view["saturation"], hue=view["hue"])
  x = _maybe(s[4], view["jitter_prob"], jitter, x)
  if channels == 3:
    x = _maybe(s[5], view["grayscale_prob"], grayscale, x)
  x = _maybe(s[6], view["blur_prob"], lambda y: gaussian_blur(y, s[7]), x)
  # Solarize draws its coin from the blur seed's sibling so the two stay independent.
  x = _maybe(tf.random.experimental.stateless_fold_in(s[7], 1), view["solarize_prob"],
             solarize, x)
  # Hue/blur round-off can leave values a few ulp outside [0, 1].
  return tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0), [size, size, channels])
