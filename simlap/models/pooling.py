"""Max pooling whose gradient is elementwise work instead of XLA:CPU's slow
`select_and_scatter_add` (docs/performance.md, "What moved the ratio").

The pool is the maximum of the window's k*k strided views of the padded input, and the gradient
goes to the *first* view (row-major window order) that holds the maximum: the element
`select_and_scatter_add` and PyTorch's max-pool pick, so the gradients are identical, ties
included (tests/test_pooling.py). For XLA:CPU only (`model.conv_impl`): on a TPU the views and
masks would be materialised, many times the HBM traffic (docs/tpu.md).
"""
from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp


def _views(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> list[jax.Array]:
  """The k*k strided views (B, H', W', C) of x padded with -inf, one per window offset."""
  (kh, kw), (sh, sw) = window, strides
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_h = (xp.shape[1] - kh) // sh + 1
  out_w = (xp.shape[2] - kw) // sw + 1
  return [xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return functools.reduce(jnp.maximum, _views(x, window, strides, padding))


def _max_pool_fwd(x, window, strides, padding):
  out = _max_pool(x, window, strides, padding)
  return out, (x, out)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, out = residuals
  views, views_vjp = jax.vjp(lambda x: _views(x, window, strides, padding), x)
  taken = jnp.zeros(out.shape, bool)
  per_view = []
  for view in views:  # the first view holding the maximum takes the gradient
    first = (view == out) & ~taken
    per_view.append(jnp.where(first, g, jnp.zeros_like(g)))
    taken = taken | first
  return views_vjp(per_view)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[Sequence[int]]) -> jax.Array:
  """`nn.max_pool(x, window, strides, padding)` for NHWC x with explicit padding.

  x: (B, H, W, C) floating. window, strides: (kh, kw), (sh, sw); padding: ((lo, hi), (lo, hi)).
  Returns (B, H', W', C); its gradient is `nn.max_pool`'s exactly.
  """
  return _max_pool(x, tuple(int(k) for k in window), tuple(int(s) for s in strides),
                   tuple((int(lo), int(hi)) for lo, hi in padding))
