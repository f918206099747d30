"""The colour stage of the augmentation (augment.second_stage) in JAX, inside the jitted step.

A streamed (ImageNet) run sends each view as its uint8 crop plus the view's drawn parameters,
packed into one float32 vector (`pack` on the host, `LAYOUT`); the step applies colour jitter,
grayscale, blur and solarize here. The ops are per-pixel arithmetic that the accelerator does
in microseconds and that cost a host core about 1.4 ms per 224 px view (docs/performance.md).
Everything is elementwise or a reduction over a few taps, in float32 on every backend: no
matmul, so the TPU's bf16 matmul passes never touch the pixels. Imports only jax and numpy.
"""
from __future__ import annotations
from collections.abc import Mapping
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's, as image_ops.LUMA
BLUR_RADIUS = 6  # 3 * the largest sigma, as augment._BLUR_RADIUS
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
# Positions in the packed vector, in order; `order` (the jitter ops' permutation) follows.
LAYOUT = {"jitter": 0, "factors": slice(1, 5), "grayscale": 5, "blur": 6, "sigma": 7,
          "solarize": 8}
ORDER_START = 9


def n_ops(channels: int) -> int:
  """Colour-jitter ops: brightness, contrast (+ saturation, hue for RGB)."""
  return 4 if channels == 3 else 2


def packed_size(channels: int) -> int:
  """Length P of one view's packed parameter vector."""
  return ORDER_START + n_ops(channels)


def _hue_maps(theta: jax.Array) -> jax.Array:
  """(B,) angles -> (B, 3, 3) row-vector RGB maps rotating the YIQ chroma plane."""
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  zero, one = jnp.zeros_like(theta), jnp.ones_like(theta)
  rot = jnp.stack([jnp.stack([one, zero, zero], -1), jnp.stack([zero, cos, -sin], -1),
                   jnp.stack([zero, sin, cos], -1)], -2)
  to_yiq, from_yiq = _RGB_TO_YIQ, np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)
  column_map = _matmul(_matmul(jnp.asarray(from_yiq)[None], rot), jnp.asarray(to_yiq)[None])
  return jnp.swapaxes(column_map, -1, -2)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B, i, j) @ (B, j, k) for tiny i, j, k as broadcast products: exact float32 everywhere."""
  return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _vecmat(v: jax.Array, m: jax.Array) -> jax.Array:
  """(B, i) @ (B, i, k) -> (B, k), as `_matmul`."""
  return jnp.sum(v[..., :, None] * m, axis=-2)


def _colour_map(mean: jax.Array, p: jax.Array, c: int, jitter: bool,
                grayscale: bool) -> tuple[jax.Array, jax.Array]:
  """Jitter (each image's ops in its order) then grayscale as one affine map per image.

  Args:
    mean: (B, C) mean colour of each input image (contrast needs the running mean luma, which
      is mean @ (maps so far) because the maps are affine). p: (B, P) packed parameters.
  Returns:
    (M (B, C, C), b (B, C)) with output pixel = pixel @ M + b; augment._colour_map's maths.
  """
  n = mean.shape[0]
  eye = jnp.broadcast_to(jnp.eye(c, dtype=jnp.float32), (n, c, c))
  luma = jnp.asarray(LUMA if c == 3 else (1.0,), jnp.float32)
  to_luma = jnp.broadcast_to(luma[:, None], (c, c))[None]  # every output channel = luma
  m, b = eye, jnp.zeros_like(mean)
  f, on = p[:, LAYOUT["factors"]], p[:, LAYOUT["jitter"]]
  order = p[:, ORDER_START:].astype(jnp.int32)
  scale = lambda v: v[:, None, None] * eye  # noqa: E731
  for slot in range(n_ops(c) if jitter else 0):
    luma_mean = jnp.sum((_vecmat(mean, m) + b) * luma, -1)
    maps = [scale(f[:, 0]), scale(f[:, 1])]  # brightness, contrast (torchvision)
    shifts = [jnp.zeros_like(luma_mean), (1 - f[:, 1]) * luma_mean]
    if c == 3:  # saturation (torchvision), hue (YIQ rotation)
      maps += [scale(f[:, 2]) + (1 - f[:, 2])[:, None, None] * to_luma,
               _hue_maps(2 * math.pi * f[:, 3])]
      shifts += [jnp.zeros_like(luma_mean)] * 2
    pick = jax.nn.one_hot(order[:, slot], len(maps), dtype=jnp.float32) * on[:, None]
    m_k = sum(pick[:, i, None, None] * maps[i] for i in range(len(maps))) + (
        1 - jnp.sum(pick, -1))[:, None, None] * eye  # the identity where jitter is off
    b_k = jnp.sum(pick * jnp.stack(shifts, -1), -1)[:, None]
    m, b = _matmul(m, m_k), _vecmat(b, m_k) + b_k
  if grayscale and c == 3:
    g = jnp.where(p[:, LAYOUT["grayscale"], None, None] > 0, to_luma, eye)
    m, b = _matmul(m, g), _vecmat(b, g)
  return m, b


def _blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """Gaussian blur of (B, H, W, C), each image with its sigma (B,), zero padding as SimCLR:
  two passes of 2 R + 1 shifted, weighted copies (elementwise, one fusion per pass)."""
  r = jnp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=jnp.float32)
  k = jnp.exp(-jnp.square(r)[None] / (2 * jnp.square(sigma))[:, None])
  k = k / jnp.sum(k, -1, keepdims=True)  # (B, K)

  def along(y, axis):
    pad = [(0, 0)] * 4
    pad[axis] = (BLUR_RADIUS, BLUR_RADIUS)
    padded, size = jnp.pad(y, pad), y.shape[axis]
    return sum(k[:, t, None, None, None] * jax.lax.slice_in_dim(padded, t, t + size, axis=axis)
               for t in range(2 * BLUR_RADIUS + 1))

  return jnp.minimum(along(along(x, 1), 2), 1.0)  # round-off


def second_stage(x: jax.Array, params: jax.Array, view: Mapping[str, Any]) -> jax.Array:
  """Colour jitter -> grayscale -> blur -> solarize, as augment.second_stage.

  Args:
    x: float32 (B, H, W, C) views in [0, 1] (the dequantised uint8 crops).
    params: float32 (B, P) packed parameters (`pack`), P = `packed_size(C)`.
    view: the view's augmentation config; ops with probability 0 are not built.
  Returns:
    float32 (B, H, W, C) in [0, 1].
  """
  c = x.shape[-1]
  jitter, gray = view["jitter_prob"] > 0, view["grayscale_prob"] > 0 and c == 3
  if jitter or gray:
    m, b = _colour_map(jnp.mean(x, axis=(1, 2)), params, c, jitter, gray)
    x = jnp.clip(sum(x[..., i:i + 1] * m[:, None, None, i, :] for i in range(c)) +
                 b[:, None, None, :], 0.0, 1.0)
  flag = lambda name: params[:, LAYOUT[name], None, None, None] > 0  # noqa: E731
  if view["blur_prob"] > 0:
    x = jnp.where(flag("blur"), _blur(x, params[:, LAYOUT["sigma"]]), x)
  if view["solarize_prob"] > 0:
    x = jnp.where(flag("solarize"), jnp.minimum(x, 1.0 - x), x)  # threshold 0.5
  return x
