"""The convolutions XLA:CPU runs slowly and simlap's `model.conv_impl="cpu"` forms of them.

    .venv/bin/python -m benchmarks.conv_bench [--batch=512 --steps=5]

Markdown tables, every form checked against the lax conv before it is timed:
1. A stride-1 3x3 conv with torch-style padding (256 -> 256 channels on 4 x 4 maps, the shape of
   the authors' CIFAR network's stage 3) at dilation 1, 2 and 4: the lax conv; the same conv on
   the map's d x d phase grids (space-to-batch); `cpu_conv.dilated_conv` (live-tap regions).
2. Kernel gradients of two 3x3 convs over many pixels (the deep stem's 16 x 16 x 64 -> 128 conv
   and ResNet-50's first 56 x 56 x 64 -> 64 conv at batch 32): the lax VJP against
   `cpu_conv.batch_chunked_conv`'s sum over 2, 4, 8, ... batch chunks, down to 0.5 MiB of
   operands per chunk; the chunk count `model.conv_impl="cpu"` picks is marked.
3. The forward pass and the input gradient of the same two convs, whole and in 2 to 16 batch
   chunks.
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from simlap.runtime import platforms
from simlap.models import cpu_conv

DN = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """(B, H, W, C) x (3, 3, C, C') -> (B, H, W, C'), padding = dilation."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((dilation, dilation),) * 2,
                                      rhs_dilation=(dilation, dilation), dimension_numbers=DN)


def conv_by_phases(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """The dilated conv as an undilated one on each of the d x d phase grids of the map."""
  d = dilation
  b, h, wd, c = x.shape
  hp, wp = -(-h // d) * d, -(-wd // d) * d
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - wd), (0, 0)))
  x = x.reshape(b, hp // d, d, wp // d, d, c).transpose(0, 2, 4, 1, 3, 5)
  y = conv(x.reshape(b * d * d, hp // d, wp // d, c), w, 1)
  y = y.reshape(b, d, d, hp // d, wp // d, -1).transpose(0, 3, 1, 4, 2, 5)
  return y.reshape(b, hp, wp, -1)[:, :h, :wd]


def by_regions(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  return cpu_conv.dilated_conv(x, w, ((dilation, dilation),) * 2, (dilation, dilation))


def _ms(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def dilated_table(batch: int, steps: int) -> None:
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (batch, 4, 4, 256))
  w = jax.random.normal(kw, (3, 3, 256, 256)) / 50
  print(f"\n### Dilated 3x3 conv, batch {batch}, 4x4 maps, 256 -> 256 channels")
  print("| form | dilation | forward ms | forward + backward ms |")
  print("|---|---|---|---|")
  for dilation in (1, 2, 4):
    forms = [("lax conv", conv)]
    if dilation > 1:
      forms += [("phase grids", conv_by_phases), ("live-tap regions (cpu_conv)", by_regions)]
    for name, form in forms:
      np.testing.assert_allclose(form(x, w, dilation), conv(x, w, dilation), rtol=1e-4, atol=1e-4)
      fwd = jax.jit(lambda x, w, f=form, d=dilation: f(x, w, d))
      grad = jax.jit(jax.grad(lambda x, w, f=form, d=dilation: jnp.sum(f(x, w, d) ** 2),
                              argnums=(0, 1)))
      print(f"| {name} | {dilation} | {_ms(fwd, x, w, steps=steps):.1f} | "
            f"{_ms(grad, x, w, steps=steps):.1f} |")


_PAD = ((1, 1), (1, 1))


def _lax_conv(x: jax.Array, w: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, (1, 1), _PAD, dimension_numbers=DN)


def _chunked_conv(x: jax.Array, w: jax.Array, kernel_chunks: int, io_chunks: int) -> jax.Array:
  return cpu_conv.batch_chunked_conv(x, w, (1, 1), _PAD, DN, None, kernel_chunks, io_chunks)


def _large_convs(batch: int):
  """The authors' deep stem's 64 -> 128 conv at 2 views x batch / 2, and ResNet-50's first 3x3
  conv at 224 px, batch 32: (title, input, kernel, output gradient, MiB of input + output)."""
  for n, size, c_in, c_out in ((batch, 16, 64, 128), (32, 56, 64, 64)):
    kx, kw, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (n, size, size, c_in))
    w = jax.random.normal(kw, (3, 3, c_in, c_out)) / 30
    g = jax.random.normal(kg, (n, size, size, c_out))
    mib = (x.size + g.size) * 4 / 2**20
    yield (f"3x3 conv, batch {n}, {size}x{size} maps, {c_in} -> {c_out} channels "
           f"({mib:.0f} MiB of operands)", x, w, g, mib)


def _row_name(chunks: int, picked: int) -> str:
  name = "lax conv" if chunks == 1 else f"{chunks} chunks"
  return name + (" (cpu_conv's choice)" if chunks == picked else "")


def kernel_grad_table(batch: int, steps: int) -> None:
  """The lax kernel gradient against chunked ones, for a range of chunk sizes."""
  for title, x, w, g, mib in _large_convs(batch):
    picked = cpu_conv.kernel_grad_chunks(x.shape, g.shape, 4)
    print(f"\n### Kernel gradient of a {title}")
    print("| form | MiB per chunk | kernel gradient ms | forward + both gradients ms |")
    print("|---|---|---|---|")
    ref = None
    chunks = 1
    while chunks <= x.shape[0] and mib / chunks >= 0.5:
      form = _lax_conv if chunks == 1 else functools.partial(
          _chunked_conv, kernel_chunks=chunks, io_chunks=1)
      name = _row_name(chunks, picked)
      dw = jax.jit(lambda x, g, w, f=form: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
      full = jax.jit(jax.grad(lambda x, w, f=form: jnp.sum(f(x, w) * g), argnums=(0, 1)))
      out = dw(x, g, w)
      ref = out if ref is None else ref
      np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref).max()))
      print(f"| {name} | {mib / chunks:.1f} | {_ms(dw, x, g, w, steps=steps):.1f} | "
            f"{_ms(full, x, w, steps=steps):.1f} |", flush=True)
      chunks *= 2


def forward_table(batch: int, steps: int) -> None:
  """The forward pass and the input gradient, whole and in 2 to 16 batch chunks."""
  for title, x, w, g, mib in _large_convs(batch):
    picked = cpu_conv.io_chunks(x.shape, g.shape, 4)
    print(f"\n### Forward pass and input gradient of a {title}")
    print("| form | MiB per chunk | forward ms | input gradient ms |")
    print("|---|---|---|---|")
    ref = None
    for chunks in (1, 2, 4, 8, 16):
      form = functools.partial(_chunked_conv, kernel_chunks=1, io_chunks=chunks)
      name = _row_name(chunks, picked)
      fwd = jax.jit(form)
      dx = jax.jit(lambda x, g, w, f=form: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
      out = (fwd(x, w), dx(x, g, w))
      ref = out if ref is None else ref
      for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
      print(f"| {name} | {mib / chunks:.1f} | {_ms(fwd, x, w, steps=steps):.1f} | "
            f"{_ms(dx, x, g, w, steps=steps):.1f} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=512, help="images (2 views x batch 256)")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  platforms.skip_absent_tpu()
  print(f"# {jax.devices()[0].platform}, median of {args.steps} calls")
  dilated_table(args.batch, args.steps)
  kernel_grad_table(args.batch, args.steps)
  forward_table(args.batch, args.steps)


if __name__ == "__main__":
  main()
