"""Loss benchmark: time and temporary memory of loss + gradient, against SimCLR's nt_xent.

  python -m benchmarks.loss_bench [--sizes=256,1024,4096] [--dim=256] [--chunk=512] [--iters=10]

For each B = N it compiles value_and_grad (w.r.t. anchors, keys and gates) of
  (a) the naive cosine form that builds the (B, N, D) tensor,
  (b) simlap_loss cosine, fused (and chunked with --chunk),
  (c) simlap_loss weighted, fused (and chunked),
  (d) nt_xent,
  (e) simlap_loss_reference cosine (plain autodiff; what (b) replaces),
and prints the median step time and XLA's temporary-buffer size from the compiled memory
analysis, each with its ratio to (d). A form whose temporaries would not fit in half of this
machine's memory is compiled for its memory analysis but not run.
"""
from __future__ import annotations
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from simlap import losses
from simlap.runtime import platforms

_SIZES = flags.DEFINE_list("sizes", ["256", "1024", "4096"], "B = N values.")
_DIM = flags.DEFINE_integer("dim", 256, "Embedding dimension D.")
_CHUNK = flags.DEFINE_integer("chunk", 512, "chunk_size for (b) and (c); 0 = unchunked.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed iterations per form.")


def naive_cosine_loss(anchors, keys, gates, anchor_labels, pair_labels, key_labels, *, scale):
  """The textbook form: gate both sides, renormalise, with an explicit (B, N, D) tensor."""
  ga = gates * anchors  # (B, D)
  gk = gates[:, None, :] * keys[None, :, :]  # (B, N, D): what the two-matmul form avoids
  cos = jnp.einsum("bd,bnd->bn", ga, gk) / (
      jnp.linalg.norm(ga, axis=-1, keepdims=True) * jnp.linalg.norm(gk, axis=-1) + 1e-12)
  logits = scale * cos
  positive = key_labels[None, :] == pair_labels[:, None]
  negative = ~positive & (key_labels[None, :] != anchor_labels[:, None])
  lse = jax.nn.logsumexp(jnp.where(negative, logits, -jnp.inf), axis=1)
  per_pair = jnp.where(positive, jax.nn.softplus(lse[:, None] - logits), 0.0)
  npos = jnp.maximum(jnp.sum(positive, axis=1), 1)
  return jnp.mean(jnp.sum(per_pair, axis=1) / npos)


def make_inputs(size, dim, num_classes=1000, seed=0):
  ks = jax.random.split(jax.random.key(seed), 6)
  anchors = jax.random.normal(ks[0], (size, dim))
  keys = jax.random.normal(ks[1], (size, dim))
  gates = jax.nn.sigmoid(jax.random.normal(ks[2], (size, dim)))
  y1 = jax.random.randint(ks[3], (size,), 0, num_classes)
  y2 = losses.sample_pair_labels(ks[4], y1)
  return anchors, keys, gates, y1, y2, y1


def candidates(chunk):
  return {
      "(a) naive B×N×D cosine": lambda a, k, g, y1, y2, yk: naive_cosine_loss(
          a, k, g, y1, y2, yk, scale=10.0),
      "(b) simlap cosine": lambda a, k, g, y1, y2, yk: losses.simlap_loss(
          a, k, g, y1, y2, yk, variant="cosine", chunk_size=chunk),
      "(c) simlap weighted": lambda a, k, g, y1, y2, yk: losses.simlap_loss(
          a, k, g, y1, y2, yk, variant="weighted", chunk_size=chunk),
      "(d) nt_xent": lambda a, k, g, y1, y2, yk: losses.nt_xent(a, k, scale=10.0) + 0.0 * g[0, 0],
      "(e) reference cosine": lambda a, k, g, y1, y2, yk: losses.simlap_loss_reference(
          a, k, g, y1, y2, yk, variant="cosine"),
  }


def total_memory_bytes():
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure(fn, inputs, iters, budget_bytes):
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
  t0 = time.perf_counter()
  compiled = step.lower(*inputs).compile()
  compile_s = time.perf_counter() - t0
  temp = compiled.memory_analysis().temp_size_in_bytes
  if temp > budget_bytes:
    return compile_s, None, temp
  jax.block_until_ready(compiled(*inputs))  # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times), temp


def main(argv):
  del argv
  platforms.skip_absent_tpu()
  budget = total_memory_bytes() // 2
  dev = jax.devices()[0]
  print(f"# loss + gradient, float32, D={_DIM.value}, chunk_size={_CHUNK.value}, "
        f"backend={dev.platform} ({dev.device_kind}), {os.cpu_count()} host cores, "
        f"{platform.node()}, {time.strftime('%Y-%m-%d')}")
  header = f"| {'B = N':>6} | {'form':<24} | {'time ms':>9} | {'temp MiB':>9} | " \
           f"{'time / (d)':>10} | {'mem / (d)':>9} |"
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for size in [int(s) for s in _SIZES.value]:
    inputs = make_inputs(size, _DIM.value)
    rows = {name: measure(fn, inputs, _ITERS.value, budget)
            for name, fn in candidates(_CHUNK.value).items()}
    _, base_t, base_m = rows["(d) nt_xent"]
    for name, (_, t, m) in rows.items():
      if t is None:
        print(f"| {size:>6} | {name:<24} | {'skipped (needs ' + f'{m / 2**30:.0f} GB)':>9} | "
              f"{m / 2**20:>9.0f} | {'-':>10} | {m / base_m:>9.2f} |")
        continue
      print(f"| {size:>6} | {name:<24} | {t * 1e3:>9.2f} | {m / 2**20:>9.1f} | "
            f"{t / base_t:>10.2f} | {m / base_m:>9.2f} |")


if __name__ == "__main__":
  app.run(main)
