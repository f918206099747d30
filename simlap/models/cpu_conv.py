"""Convolutions in the forms XLA:CPU runs fast: the same numbers as `lax.conv_general_dilated`.

`conv_general_dilated` here is a drop-in that `nn.Conv(conv_general_dilated=...)` calls, so the
kernel keeps its (kh, kw, Cin, Cout) shape and name and checkpoints see the same network. Values
and gradients agree with the lax conv up to float summation order. Selected by `model.conv_impl
= "cpu"` ("auto" for CPU compiles). Three XLA:CPU weaknesses are worked around, every other conv
goes to the lax conv unchanged: dilated stride-1 convs on small maps (`dilated_conv`), convs over
many pixels (`batch_chunked_conv`) and 1x1 convs (`pointwise_conv`); docs/performance.md.
"""
from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]
# Largest input + output-gradient bytes of one chunk of a kernel gradient, and most chunks
# (`kernel_grad_chunks`): smaller chunks stop paying (docs/performance.md, "What moved the
# ratio"); the cap bounds the program's size.
CHUNK_BYTES = 2 * 2**20
MAX_CHUNKS = 32
# Forward passes and input gradients gain less from chunks, and only large ones (`io_chunks`).
IO_CHUNKS = 4
IO_CHUNK_MIN_BYTES = 16 * 2**20


def _is_nhwc(dimension_numbers: Any) -> bool:
  """True for NHWC x HWIO -> NHWC, as names or as the `ConvDimensionNumbers` nn.Conv passes."""
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, tuple) and all(isinstance(s, str) for s in dimension_numbers):
    return tuple(dimension_numbers) == _NHWC
  lhs, rhs, out = dimension_numbers
  return tuple(lhs) == (0, 3, 1, 2) and tuple(rhs) == (3, 2, 0, 1) and tuple(out) == (0, 3, 1, 2)


def tap_regions(size: int, kernel: int, padding: tuple[int, int],
                dilation: int) -> list[tuple[int, int, tuple[int, ...]]]:
  """One axis of a stride-1 conv as (first output, end output, live taps) intervals.

  Output position o reads input o - padding[0] + i * dilation through tap i; the tap is live for
  o when that lies in [0, size). Consecutive outputs with the same live taps form one region.
  """
  out = size + padding[0] + padding[1] - (kernel - 1) * dilation
  live = [tuple(i for i in range(kernel) if 0 <= o - padding[0] + i * dilation < size)
          for o in range(out)]
  regions, start = [], 0
  for o in range(1, out + 1):
    if o == out or live[o] != live[start]:
      regions.append((start, o, live[start]))
      start = o
  return regions


def live_fraction(rows: list[tuple[int, int, tuple[int, ...]]],
                  cols: list[tuple[int, int, tuple[int, ...]]], kernel_taps: int) -> float:
  """Multiply-adds of the region form over those of the full conv (1 = nothing skipped)."""
  total = sum((r1 - r0) * len(ti) for r0, r1, ti in rows) * sum(
      (c1 - c0) * len(tj) for c0, c1, tj in cols)
  positions = (rows[-1][1] if rows else 0) * (cols[-1][1] if cols else 0)
  return total / max(positions * kernel_taps, 1)


def dilated_conv(lhs: jax.Array, rhs: jax.Array, padding: Padding,
                 rhs_dilation: tuple[int, int], precision: Any = None,
                 preferred_element_type: Any = None) -> jax.Array | None:
  """A stride-1 NHWC conv by live-tap regions, or None where that would not skip half the work.

  Along one axis output row o reads input row o - pad + i * d through tap i, so the taps that
  read real pixels are constant on a few intervals of rows (`tap_regions`; at dilation >= the
  map size only the centre tap is live). Each (row region, column region) block of the output
  is one matmul of its live taps' shifted maps, concatenated on the channel axis (im2col), with
  those taps' (taps * Cin, Cout) kernel, and XLA:CPU's dilated convolution is never called.

  lhs: (B, H, W, Cin); rhs: (kh, kw, Cin, Cout); padding: ((lo, hi), (lo, hi)).
  Returns (B, H', W', Cout).
  """
  kh, kw = rhs.shape[:2]
  (dh, dw), (h, w) = rhs_dilation, lhs.shape[1:3]
  rows, cols = tap_regions(h, kh, padding[0], dh), tap_regions(w, kw, padding[1], dw)
  if not rows or not cols or live_fraction(rows, cols, kh * kw) > 0.5:
    return None
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out_rows = []
  for r0, r1, row_taps in rows:
    blocks = []
    for c0, c1, col_taps in cols:
      taps = [(i, j) for i in row_taps for j in col_taps]
      if not taps:  # outputs that read padding only (padding wider than the dilated kernel)
        blocks.append(jnp.zeros((lhs.shape[0], r1 - r0, c1 - c0, rhs.shape[-1]),
                                preferred_element_type or jnp.result_type(lhs, rhs)))
        continue
      # (B, r1 - r0, c1 - c0, taps * Cin): each live tap's view of the padded input.
      patches = jnp.concatenate(
          [x[:, r0 + i * dh:r1 + i * dh, c0 + j * dw:c1 + j * dw, :] for i, j in taps], axis=-1)
      kernel = jnp.concatenate([rhs[i, j] for i, j in taps], axis=0)  # (taps * Cin, Cout)
      blocks.append(jnp.einsum("bhwk,ko->bhwo", patches, kernel, precision=precision,
                               preferred_element_type=preferred_element_type))
    out_rows.append(jnp.concatenate(blocks, axis=2))
  return jnp.concatenate(out_rows, axis=1)


def pointwise_conv(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int], precision: Any = None,
                   preferred_element_type: Any = None) -> jax.Array:
  """A 1x1 conv (no padding: "SAME" and "VALID" agree for 1x1) as the matmul it is, so that
  XLA:CPU does not transpose the activations to a batch-minor layout for its kernel gradient.

  lhs: (B, H, W, Cin); rhs: (1, 1, Cin, Cout). Returns (B, ceil(H / sh), ceil(W / sw), Cout).
  """
  x = lhs[:, ::strides[0], ::strides[1], :]
  return jnp.einsum("bhwc,co->bhwo", x, rhs[0, 0], precision=precision,
                    preferred_element_type=preferred_element_type)


def _lax_conv(lhs, rhs, strides, padding, dimension_numbers, precision):
  return jax.lax.conv_general_dilated(lhs, rhs, strides, padding,
                                      dimension_numbers=dimension_numbers, precision=precision)


def kernel_grad_chunks(lhs_shape: Sequence[int], out_shape: Sequence[int], itemsize: int) -> int:
  """How many batch chunks keep a kernel gradient's operands under CHUNK_BYTES (a power of 2
  that divides the batch, at most MAX_CHUNKS; 1 = no chunking)."""
  batch = lhs_shape[0]
  per_image = (int(np.prod(lhs_shape[1:])) + int(np.prod(out_shape[1:]))) * itemsize
  chunks = 1
  while (chunks < MAX_CHUNKS and batch % (2 * chunks) == 0
         and batch * per_image // chunks > CHUNK_BYTES):
    chunks *= 2
  return chunks


def io_chunks(lhs_shape: Sequence[int], out_shape: Sequence[int], itemsize: int) -> int:
  """How many batch chunks a conv's forward pass and input gradient take: IO_CHUNKS (or the
  largest power of 2 below it that divides the batch) from IO_CHUNK_MIN_BYTES of input + output,
  else 1."""
  total = (int(np.prod(lhs_shape)) + int(np.prod(out_shape))) * itemsize
  if total < IO_CHUNK_MIN_BYTES:
    return 1
  chunks = 1
  while chunks < IO_CHUNKS and lhs_shape[0] % (2 * chunks) == 0:
    chunks *= 2
  return chunks


def _split(a: jax.Array, chunks: int) -> jax.Array:
  """(B, ...) -> (B / c, c, ...): chunk k = [:, k] holds images k, k + c, ...; a batch-sharded
  leading axis stays sharded, so each device reads only its own images."""
  return a.reshape(a.shape[0] // chunks, chunks, *a.shape[1:])


def _by_chunks(fn, chunks: int, *arrays: jax.Array) -> jax.Array:
  """fn over interleaved batch chunks of `arrays`, reassembled in batch order."""
  if chunks == 1:
    return fn(*arrays)
  split = [_split(a, chunks) for a in arrays]
  out = jnp.stack([fn(*(a[:, k] for a in split)) for k in range(chunks)], axis=1)
  return out.reshape(-1, *out.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def batch_chunked_conv(lhs, rhs, strides, padding, dimension_numbers, precision, chunks,
                       io_chunks):
  """The lax conv (NHWC) over `io_chunks` interleaved batch chunks; its input gradient takes the
  same chunks, its kernel gradient sums `chunks` of them.

  XLA:CPU's convs slow down per pixel once their operands outgrow the caches, the kernel
  gradient most. Chunk k holds images k, k + c, k + 2c, ..., so a batch-sharded input splits on
  every device alike, without moving data between devices."""
  conv = functools.partial(_lax_conv, strides=strides, padding=padding,
                           dimension_numbers=dimension_numbers, precision=precision)
  return _by_chunks(lambda x: conv(x, rhs), io_chunks, lhs)


def _chunked_fwd(lhs, rhs, strides, padding, dimension_numbers, precision, chunks, io_chunks):
  out = batch_chunked_conv(lhs, rhs, strides, padding, dimension_numbers, precision, chunks,
                           io_chunks)
  return out, (lhs, rhs)


def _chunked_bwd(strides, padding, dimension_numbers, precision, chunks, io_chunks, residuals,
                 g):
  lhs, rhs = residuals
  conv = functools.partial(_lax_conv, strides=strides, padding=padding,
                           dimension_numbers=dimension_numbers, precision=precision)
  d_lhs = _by_chunks(lambda x, g: jax.vjp(lambda x: conv(x, rhs), x)[1](g)[0], io_chunks, lhs, g)
  lhs_c, g_c = _split(lhs, chunks), _split(g, chunks)
  d_rhs = sum(jax.vjp(lambda w, k=k: conv(lhs_c[:, k], w), rhs)[1](g_c[:, k])[0]
              for k in range(chunks))
  return d_lhs, d_rhs


batch_chunked_conv.defvjp(_chunked_fwd, _chunked_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`, by `pointwise_conv`, `dilated_conv` or
  `batch_chunked_conv` where they apply.

  lhs: (B, H, W, Cin); rhs: (kh, kw, Cin, Cout); padding: ((lo, hi), (lo, hi)). Returns
  (B, H', W', Cout). Any other form goes to `lax.conv_general_dilated` as given.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  plain = (_is_nhwc(dimension_numbers) and lhs.ndim == 4
           and tuple(lhs_dilation or (1, 1)) == (1, 1) and feature_group_count == 1
           and batch_group_count == 1)
  if plain and rhs.shape[:2] == (1, 1) and (
      padding in ("SAME", "VALID") or not any(p for pair in padding for p in pair)):
    return pointwise_conv(lhs, rhs, tuple(window_strides), precision, preferred_element_type)
  if not plain or isinstance(padding, str):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  rhs_dilation = tuple(int(d) for d in rhs_dilation or (1, 1))
  strides = tuple(int(s) for s in window_strides)
  if max(rhs_dilation) > 1 and strides == (1, 1):
    out = dilated_conv(lhs, rhs, padding, rhs_dilation, precision, preferred_element_type)
    if out is not None:
      return out
  lax_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, **args)  # noqa: E731
  if max(rhs_dilation) > 1 or preferred_element_type is not None:
    return lax_conv(lhs, rhs)
  out_shape = jax.eval_shape(lax_conv, lhs, rhs).shape
  itemsize = jnp.dtype(lhs.dtype).itemsize
  chunks = kernel_grad_chunks(lhs.shape, out_shape, itemsize)
  n_io = io_chunks(lhs.shape, out_shape, itemsize)
  if chunks == 1 and n_io == 1:
    return lax_conv(lhs, rhs)
  return batch_chunked_conv(lhs, rhs, strides, padding, _NHWC, precision, chunks, n_io)
