"""What a dilated 3x3 convolution costs on this backend, against the undilated one and against the
same dilated conv computed on the map's phase grids (space-to-batch): a Markdown table.

    .venv/bin/python -m benchmarks.dilated_conv_bench [--batch=512 --size=4 --channels=256]

All three compute one stride-1 3x3 conv with torch-style padding; the dilated and phase forms give
the same numbers (checked here), the undilated one is the FLOP reference. The authors' CIFAR
network runs stages 3 and 4 at dilation 2 and 4 on 4 x 4 maps (docs/performance.md).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from simlap import platforms


def conv(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """(B, H, W, C) x (3, 3, C, C') -> (B, H, W, C'), padding = dilation."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((dilation, dilation),) * 2,
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


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


def _ms(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--size", type=int, default=4, help="map height and width")
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  platforms.skip_absent_tpu()
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (args.batch, args.size, args.size, args.channels))
  w = jax.random.normal(kw, (3, 3, args.channels, args.channels)) / 50
  print(f"# {jax.devices()[0].platform}, batch {args.batch}, {args.size}x{args.size} maps, "
        f"{args.channels} -> {args.channels} channels; median of {args.steps} calls")
  print("| form | dilation | forward ms | forward + backward ms |")
  print("|---|---|---|---|")
  for dilation in (1, 2, 4):
    forms = [("dilated conv" if dilation > 1 else "undilated conv", conv)]
    if dilation > 1:
      forms.append(("phase grids", conv_by_phases))
      np.testing.assert_allclose(conv_by_phases(x, w, dilation), conv(x, w, dilation),
                                 rtol=1e-4, atol=1e-4)
    for name, form in forms:
      fwd = jax.jit(lambda x, w, f=form, d=dilation: f(x, w, d))
      grad = jax.jit(jax.grad(lambda x, w, f=form, d=dilation: jnp.sum(f(x, w, d) ** 2),
                              argnums=(0, 1)))
      print(f"| {name} | {dilation} | {_ms(fwd, x, w, steps=args.steps):.1f} | "
            f"{_ms(grad, x, w, steps=args.steps):.1f} |")


if __name__ == "__main__":
  main()
