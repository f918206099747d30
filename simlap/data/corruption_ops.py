"""The corruptions' pixel operations, in NumPy, scipy.ndimage and Pillow (see `corruptions`).

Each follows the reference's arithmetic step by step (github.com/hendrycks/robustness, the
functions of the same names), replacing its OpenCV, scikit-image and ImageMagick calls with
equivalents: OpenCV's BORDER_REFLECT_101 is scipy's "mirror", scikit-image's `gaussian` is
`ndimage.gaussian_filter` with mode "nearest" unless the reference names one.
"""
from __future__ import annotations
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from simlap.data.corruption_tables import CIFAR, table_for

_LUMA = (0.299, 0.587, 0.114)  # the reference's cv2.COLOR_RGB2GRAY weights (snow)


def _to_float(x: np.ndarray) -> np.ndarray:
  return x / 255.0


def _to_uint8(y: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8 by truncation, as the reference's `np.uint8(corruption(x))`."""
  return (np.clip(y, 0, 1) * 255).astype(np.uint8)


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest",
              truncate: float = 4.0) -> np.ndarray:
  """skimage.filters.gaussian of (H, W[, C]) floats: spatial axes only."""
  sigmas = (sigma, sigma) + (0,) * (x.ndim - 2)
  return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
  """Zooms the centre of (H, W, C) by `factor` >= 1 (bilinear) and crops back to (H, W, C)."""
  h, w = x.shape[:2]
  ch, cw = math.ceil(h / factor), math.ceil(w / factor)
  top, left = (h - ch) // 2, (w - cw) // 2
  z = ndimage.zoom(x[top:top + ch, left:left + cw], (factor, factor, 1), order=1)
  t, lf = (z.shape[0] - h) // 2, (z.shape[1] - w) // 2
  return z[t:t + h, lf:lf + w]


def motion_blur_kernel(radius: float, sigma: float,
                       angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ImageMagick's MotionBlurImage taps: (weights (K,), column offsets (K,), row offsets (K,)),
  K = 2 ceil(radius) + 1; output(r, c) = sum_i w_i input(r + dr_i, c + dc_i), angle in degrees."""
  width = int(2 * math.ceil(radius) + 1)
  i = np.arange(width, dtype=np.float64)
  w = np.exp(-(i * i) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
  w /= w.sum()
  px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
  norm = math.hypot(px, py)
  dc = np.ceil(i * py / norm - 0.5).astype(np.int64)
  dr = np.ceil(i * px / norm - 0.5).astype(np.int64)
  return w, dc, dr


def imagemagick_motion_blur(x: np.ndarray, radius: float, sigma: float,
                            angle: float) -> np.ndarray:
  """uint8 (H, W, C) -> uint8 (H, W, C) as ImageMagick 6.9.11 Q16's `-motion-blur RxS+A` on an
  8-bit PNG: edge pixels repeated outside, the sum rounded to 16 bits, then truncated to 8 bits."""
  w, dc, dr = motion_blur_kernel(radius, sigma, angle)
  h, wd = x.shape[:2]
  pad = len(w)
  xp = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
  acc = np.zeros(x.shape, np.float64)
  for wi, c, r in zip(w, dc, dr):
    acc += wi * xp[pad + r:pad + r + h, pad + c:pad + c + wd]
  q = np.clip(np.floor(acc * 257.0 + 0.5), 0, 65535).astype(np.int64)  # rounded to 16 bits
  return (q // 257).astype(np.uint8)  # then truncated to 8, as ImageMagick 6.9.11's PNG output


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
  """Diamond-square height map (size, size), size a power of two, wrapped, scaled to [0, 1].
  Each level adds wibble * U(-wibble, wibble); wibble starts at 100 and is divided by `decay`."""
  a = np.empty((size, size))
  a[0, 0] = 0.0
  step, wibble = size, 100.0

  def noisy_mean(total: np.ndarray) -> np.ndarray:
    return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

  while step >= 2:
    half = step // 2
    corners = a[0::step, 0::step]
    square = corners + np.roll(corners, -1, axis=0)
    a[half::step, half::step] = noisy_mean(square + np.roll(square, -1, axis=1))
    centres, corners = a[half::step, half::step], a[0::step, 0::step]
    a[0::step, half::step] = noisy_mean(centres + np.roll(centres, 1, axis=0)
                                        + corners + np.roll(corners, -1, axis=1))
    a[half::step, 0::step] = noisy_mean(centres + np.roll(centres, 1, axis=1)
                                        + corners + np.roll(corners, -1, axis=0))
    step, wibble = half, wibble / decay
  a -= a.min()
  return a / a.max()


def _disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
  """The reference's anti-aliased disk: a normalised 0/1 disk on a (2 max(8, r) + 1)^2 grid,
  blurred by a 3x3 (r <= 8) or 5x5 Gaussian of `alias_sigma` with mirrored borders (OpenCV's
  GaussianBlur, BORDER_REFLECT_101), not renormalised."""
  if radius <= 8:
    grid, ksize = np.arange(-8, 9), 3
  else:
    grid, ksize = np.arange(-radius, radius + 1), 5
  xx, yy = np.meshgrid(grid, grid)
  disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
  disk /= disk.sum()
  t = np.arange(ksize) - (ksize - 1) / 2
  g = np.exp(-t * t / (2 * alias_sigma ** 2))
  g = (g / g.sum()).astype(np.float32)  # OpenCV's float32 kernel and passes
  disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
  return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


# ---- the corruptions: uint8 (H, W, C), constants, rng -> uint8 (H, W, C) ----

def _gaussian_noise(x, c, rng):
  x = _to_float(x)
  return _to_uint8(x + rng.normal(size=x.shape, scale=c))


def _shot_noise(x, c, rng):
  return _to_uint8(rng.poisson(_to_float(x) * c) / c)


def _impulse_noise(x, c, rng):
  """skimage.util.random_noise(mode='s&p', amount=c): each value flips with probability c, to
  1 or 0 with equal odds."""
  y = _to_float(x)
  flipped = rng.random(y.shape) <= c
  salt = rng.random(y.shape) <= 0.5
  y[flipped & salt] = 1.0
  y[flipped & ~salt] = 0.0
  return _to_uint8(y)


def _defocus_blur(x, c, rng):
  del rng
  kernel = _disk_kernel(*c)
  y = _to_float(x)
  out = np.stack([ndimage.correlate(y[..., k], kernel, mode="mirror")
                  for k in range(y.shape[-1])], axis=-1)
  return _to_uint8(out)


def glass_blur(images: np.ndarray, c: tuple, rngs: list[np.random.Generator]) -> np.ndarray:
  """(N, H, W, C) uint8, one Generator per image: blur, locally shuffle, blur again.

  The shuffle walks the pixels from the bottom right and sets each to a neighbour at offset
  U{-d..d-1}^2 (the reference's `randint(-d, d)`). The reference writes `x[h, w], x[h', w'] =
  x[h', w'], x[h, w]` on RGB arrays, where the right side holds views, so the first pixel takes
  the neighbour's value and the neighbour keeps its own: a copy, not a swap (NumPy issue
  #14428). ImageNet-C and CIFAR-10-C were made that way, so this does the same, for C = 1 too.
  The loop runs once per batch, vectorised over its images."""
  n, h, w, _ = images.shape
  sigma, d, iterations = c
  rows, cols = range(h - d, d, -1), range(w - d, d, -1)
  offsets = np.stack([r.integers(-d, d, size=(iterations, len(rows), len(cols), 2))
                      for r in rngs])                      # (N, iterations, rows, cols, (dx, dy))
  x = np.stack([_to_uint8(_gaussian(_to_float(im), sigma)) for im in images])
  batch = np.arange(n)
  for it in range(iterations):
    for i, hh in enumerate(rows):
      for j, ww in enumerate(cols):
        dx, dy = offsets[:, it, i, j, 0], offsets[:, it, i, j, 1]
        x[:, hh, ww] = x[batch, hh + dy, ww + dx]
  return np.stack([_to_uint8(_gaussian(_to_float(im), sigma)) for im in x])


def _motion_blur(x, c, rng):
  radius, sigma = c
  return imagemagick_motion_blur(x, radius, sigma, rng.uniform(-45, 45))


def _zoom_blur(x, c, rng):
  del rng
  y = _to_float(x).astype(np.float32)
  out = np.zeros_like(y)
  factors = np.arange(*c)
  for f in factors:
    out += _clipped_zoom(y, f)
  return _to_uint8((y + out) / (len(factors) + 1))


def _snow(x, c, rng):
  mean, std, zoom, threshold, radius, sigma, weight = c
  y = _to_float(x).astype(np.float32)
  flakes = rng.normal(size=y.shape[:2], loc=mean, scale=std)
  flakes = _clipped_zoom(flakes[..., None], zoom)
  flakes[flakes < threshold] = 0
  flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)  # the reference's 8-bit PNG
  flakes = imagemagick_motion_blur(flakes, radius, sigma, rng.uniform(-135, -45)) / 255.0
  gray = y if y.shape[-1] == 1 else (y @ np.asarray(_LUMA, np.float32))[..., None]
  y = weight * y + (1 - weight) * np.maximum(y, gray * 1.5 + 0.5)
  return _to_uint8(y + flakes + np.rot90(flakes, k=2))


def _fog(x, c, rng):
  strength, decay = c
  h, w = x.shape[:2]
  y = _to_float(x)
  peak = y.max()
  size = 1 << (max(h, w) - 1).bit_length()
  y = y + strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
  return _to_uint8(y * peak / (peak + strength))


def _rgb_to_hsv(y: np.ndarray) -> np.ndarray:
  """(H, W, 3) RGB in [0, 1] -> HSV, with skimage.color.rgb2hsv's arithmetic (bytes match)."""
  v = y.max(-1)
  delta = np.ptp(y, axis=-1)
  safe = np.where(delta == 0, 1.0, delta)
  s = np.where(delta == 0, 0.0, delta / np.where(v == 0, 1.0, v))
  r, g, b = y[..., 0], y[..., 1], y[..., 2]
  h = np.where(b == v, 4.0 + (r - g) / safe,
               np.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
  h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
  return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Inverse of `_rgb_to_hsv`, with skimage.color.hsv2rgb's arithmetic."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = np.floor(h * 6)
  f = h * 6 - sector
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  choices = np.stack([np.stack(c, -1) for c in
                      ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
  sector = np.repeat((sector.astype(np.uint8) % 6)[..., None], 3, -1)
  return np.choose(sector, choices)


def _brightness(x, c, rng):
  """HSV value + c (clipped), hue and saturation kept. One channel is gray: V = the value."""
  del rng
  y = _to_float(x)
  if y.shape[-1] == 1:
    return _to_uint8(np.clip(y + c, 0, 1))
  hsv = _rgb_to_hsv(y)
  hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
  return _to_uint8(_hsv_to_rgb(hsv))


def _contrast(x, c, rng):
  del rng
  y = _to_float(x)
  means = y.mean(axis=(0, 1), keepdims=True)
  return _to_uint8((y - means) * c + means)


def _elastic_transform(x, c, rng):
  """Random affine (3 points jittered by U(+-jitter)), then a smooth random displacement field
  (alpha x Gaussian(sigma, reflect, truncate 3) of U(-1, 1) per axis), both bilinear."""
  h, w, ch = x.shape
  scale = max(h, w) * (1.0 if table_for(h, w) == CIFAR else 244 / 224)
  alpha, sigma, jitter = (scale * v for v in c)
  y = _to_float(x).astype(np.float32)
  # The reference builds the points from (H, W) and hands them to OpenCV as (x, y).
  centre = np.float32((h, w)) // 2
  half = min(h, w) // 3
  src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
  dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
  # cv2.warpAffine(src -> dst) samples the input at the inverse map of each output pixel.
  forward = np.linalg.solve(np.c_[src, np.ones(3)].astype(np.float64), dst.astype(np.float64)).T
  inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
  rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
  sx = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
  sy = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
  y = np.stack([ndimage.map_coordinates(y[..., k], (sy, sx), order=1, mode="mirror")
                for k in range(ch)], axis=-1)
  dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3) * alpha)
  dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3) * alpha)
  dx, dy = dx.astype(np.float32), dy.astype(np.float32)
  y = np.stack([ndimage.map_coordinates(y[..., k], (rows + dy, cols + dx), order=1,
                                        mode="reflect") for k in range(ch)], axis=-1)
  return _to_uint8(y)


def _pil(x: np.ndarray) -> Image.Image:
  return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x, mode="L" if x.shape[-1] == 1
                         else "RGB")


def _pixelate(x, c, rng):
  del rng
  h, w = x.shape[:2]
  im = _pil(x).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
  return np.asarray(im, np.uint8).reshape(x.shape)


def _jpeg_compression(x, c, rng):
  del rng
  buf = io.BytesIO()
  _pil(x).save(buf, "JPEG", quality=c)
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im, np.uint8).reshape(x.shape)


# uint8 (H, W, C), constants, Generator -> uint8 (H, W, C); glass blur runs per batch instead.
IMPLEMENTATIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur, "zoom_blur": _zoom_blur, "snow": _snow, "fog": _fog,
    "brightness": _brightness, "contrast": _contrast, "elastic_transform": _elastic_transform,
    "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
}
