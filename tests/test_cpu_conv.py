"""simlap.models.cpu_conv against `lax.conv_general_dilated`: values, gradients, path taken,
on one device and batch-sharded over eight, and the ResNet built on it against the lax ResNet."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap.runtime import sharding
from simlap.models import cpu_conv
from simlap.models import resnet

DN = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=1e-5, atol=1e-5)


def lax_conv(x, w, padding, dilation):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation,
                                      dimension_numbers=DN)


def fast_conv(x, w, padding, dilation):
  return cpu_conv.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation,
                                       dimension_numbers=DN)


def _inputs(h, w, kernel=(3, 3), cin=3, cout=5):
  kx, kw = jax.random.split(jax.random.key(h * 100 + w))
  return (jax.random.normal(kx, (2, h, w, cin)),
          jax.random.normal(kw, (*kernel, cin, cout)) / 3)


def _primitives(fn, *args) -> set[str]:
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


# (map h, w), kernel, padding, dilation: the authors' 4x4 maps at d = 2 and 4, non-square maps,
# asymmetric and over-wide padding, a 1-pixel map, a 5x3 kernel.
CASES = [
    ((4, 4), (3, 3), ((2, 2), (2, 2)), (2, 2)),
    ((4, 4), (3, 3), ((4, 4), (4, 4)), (4, 4)),
    ((4, 4), (3, 3), ((4, 4), (4, 4)), (2, 2)),
    ((3, 5), (3, 3), ((2, 2), (3, 3)), (2, 3)),
    ((4, 4), (3, 3), ((2, 1), (0, 3)), (2, 2)),
    ((2, 2), (3, 3), ((5, 5), (5, 5)), (1, 1)),
    ((1, 1), (3, 3), ((2, 2), (2, 2)), (2, 2)),
    ((4, 3), (5, 3), ((4, 4), (2, 2)), (2, 2)),
    ((8, 8), (3, 3), ((2, 2), (2, 2)), (2, 2)),
]


@pytest.mark.parametrize("size,kernel,padding,dilation", CASES)
def test_values_and_gradients_match_the_lax_conv(size, kernel, padding, dilation):
  x, w = _inputs(*size, kernel=kernel)
  probe = jax.random.normal(jax.random.key(7), lax_conv(x, w, padding, dilation).shape)

  @jax.jit  # one program per form: eager dispatch of each small op would dominate
  def value_and_grads(x, w, probe):
    def loss(x, w, f):
      y = f(x, w, padding, dilation)
      return jnp.sum(y * probe), y
    return [jax.grad(loss, argnums=(0, 1), has_aux=True)(x, w, f) for f in (fast_conv, lax_conv)]
  (fast_grads, fast), (ref_grads, ref) = value_and_grads(x, w, probe)
  np.testing.assert_allclose(fast, ref, **TOL)
  for a, b in zip(fast_grads, ref_grads):
    np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 2), "VALID"),
                                             ((2, 1), ((0, 0), (0, 0)))])
def test_pointwise_convs_are_matmuls_with_the_lax_values_and_gradients(strides, padding):
  """1x1 convs (ResNet-50's bottlenecks, projection shortcuts) become one matmul: no
  convolution left in the program (XLA:CPU transposes every activation for a 1x1 conv's kernel
  gradient)."""
  x, w = _inputs(5, 6, kernel=(1, 1))
  probe = jax.random.normal(jax.random.key(8), jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=DN).shape)

  def grads(conv):
    def loss(x, w):
      y = conv(x, w, strides, padding, dimension_numbers=DN)
      return jnp.sum(y * probe), y
    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  (fast_grads, fast), (ref_grads, ref) = grads(cpu_conv.conv_general_dilated), grads(
      jax.lax.conv_general_dilated)
  np.testing.assert_allclose(fast, ref, **TOL)
  for a, b in zip(fast_grads, ref_grads):
    np.testing.assert_allclose(a, b, **TOL)
  assert "conv_general_dilated" not in _primitives(
      lambda x, w: cpu_conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN),
      x, w)


def test_taps_that_read_only_padding_get_exactly_zero_gradient():
  """Dilation 4 on a 4x4 map: the fast form is the centre tap's 1x1 conv; the other 8 taps get
  0, as they do from the full conv (they multiply padding only)."""
  x, w = _inputs(4, 4)
  pad, dil = ((4, 4), (4, 4)), (4, 4)
  for f in (fast_conv, lax_conv):
    gw = jax.grad(lambda w, f=f: jnp.sum(f(x, w, pad, dil) ** 2))(w)
    off_centre = np.ones((3, 3), bool)
    off_centre[1, 1] = False
    assert np.all(np.asarray(gw)[off_centre] == 0.0)
    assert np.all(np.abs(np.asarray(gw)[1, 1]) > 0)
  np.testing.assert_allclose(fast_conv(x, w, pad, dil), jnp.einsum("bhwc,co->bhwo", x, w[1, 1]),
                             **TOL)


def test_the_fast_path_runs_where_it_skips_half_the_work_and_only_there():
  """No convolution left on the authors' 4x4 maps at dilation 2 and 4 (4/9 and 1/9 of the
  multiply-adds); the library conv on an 8x8 map at dilation 2 (69 % live), undilated, strided,
  or in another layout."""
  x4, w = _inputs(4, 4)
  for d in (2, 4):
    prims = _primitives(lambda x, w, d=d: fast_conv(x, w, ((d, d),) * 2, (d, d)), x4, w)
    assert "conv_general_dilated" not in prims and "dot_general" in prims
  x8, _ = _inputs(8, 8)
  assert "conv_general_dilated" in _primitives(
      lambda x, w: fast_conv(x, w, ((2, 2),) * 2, (2, 2)), x8, w)
  assert "conv_general_dilated" in _primitives(
      lambda x, w: fast_conv(x, w, ((1, 1),) * 2, (1, 1)), x4, w)
  strided = lambda x, w: cpu_conv.conv_general_dilated(  # noqa: E731
      x, w, (2, 2), ((2, 2),) * 2, rhs_dilation=(2, 2), dimension_numbers=DN)
  assert "conv_general_dilated" in _primitives(strided, x4, w)
  nchw = lambda x, w: cpu_conv.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), ((2, 2),) * 2, rhs_dilation=(2, 2), dimension_numbers=("NCHW", "OIHW", "NCHW"))
  assert "conv_general_dilated" in _primitives(
      nchw, jnp.transpose(x4, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1)))


def test_tap_regions_on_the_authors_maps():
  assert cpu_conv.tap_regions(4, 3, (2, 2), 2) == [(0, 2, (1, 2)), (2, 4, (0, 1))]
  assert cpu_conv.tap_regions(4, 3, (4, 4), 4) == [(0, 4, (1,))]
  rows = cpu_conv.tap_regions(4, 3, (2, 2), 2)
  assert cpu_conv.live_fraction(rows, rows, 9) == pytest.approx(4 / 9)


def test_nn_conv_keeps_its_parameters_and_output():
  """Passed to nn.Conv, the kernel keeps its name and shape, so checkpoints do not change."""
  x, _ = _inputs(4, 4)
  kwargs = dict(features=6, kernel_size=(3, 3), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2),
                use_bias=False)
  plain = nn.Conv(**kwargs)
  fast = nn.Conv(**kwargs, conv_general_dilated=cpu_conv.conv_general_dilated)
  variables = plain.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), **TOL)


def test_kernel_grad_chunks_keep_each_chunk_under_the_byte_limit():
  # 64 images of 16x16x64 in and out: 8 MiB of operands -> 4 chunks of 2 MiB.
  assert cpu_conv.kernel_grad_chunks((64, 16, 16, 64), (64, 16, 16, 64), 4) == 4
  assert cpu_conv.kernel_grad_chunks((16, 16, 16, 64), (16, 16, 16, 64), 4) == 1
  assert cpu_conv.kernel_grad_chunks((6, 256, 256, 64), (6, 256, 256, 64), 4) == 2  # 6 = 2 x 3
  # 512 images: 64 MiB -> 32 chunks of 2 MiB; 2048 images would take 128: capped at MAX_CHUNKS.
  assert cpu_conv.kernel_grad_chunks((512, 16, 16, 64), (512, 16, 16, 64), 4) == 32
  assert cpu_conv.kernel_grad_chunks((2048, 16, 16, 64), (2048, 16, 16, 64), 4) == 32


def test_io_chunks_split_only_large_convs_and_divide_the_batch():
  # 64 images of 16x16x64 in and 16x16x128 out: 12 MiB, below the 16 MiB threshold.
  assert cpu_conv.io_chunks((64, 16, 16, 64), (64, 16, 16, 128), 4) == 1
  assert cpu_conv.io_chunks((128, 16, 16, 64), (128, 16, 16, 128), 4) == 4  # 24 MiB
  assert cpu_conv.io_chunks((6, 256, 256, 64), (6, 256, 256, 64), 4) == 2  # 6 = 2 x 3
  assert cpu_conv.io_chunks((5, 256, 256, 64), (5, 256, 256, 64), 4) == 1


def _conv_grads(conv, x, w, probe, strides=(1, 1)):
  def loss(x, w):
    y = conv(x, w, strides, ((1, 1), (1, 1)), dimension_numbers=DN)
    return jnp.sum(y * probe), y
  return jax.grad(loss, argnums=(0, 1), has_aux=True)(x, w)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_chunked_kernel_gradient_matches_the_lax_conv(monkeypatch, strides):
  """With the byte limit lowered, 16 images split into 8 chunks; the kernel gradient is the sum
  of theirs, and the program holds one conv per chunk beside the forward and input-gradient
  convs."""
  monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 2 * 8 * 8 * (3 + 5) * 4)
  x, w = _inputs(8, 8)
  x = jnp.concatenate([x] * 8)  # (16, 8, 8, 3)
  x = x + jax.random.normal(jax.random.key(3), x.shape)
  out_shape = jax.eval_shape(lambda x: jax.lax.conv_general_dilated(
      x, w, strides, ((1, 1), (1, 1)), dimension_numbers=DN), x).shape
  assert cpu_conv.kernel_grad_chunks(x.shape, out_shape, 4) == 8
  probe = jax.random.normal(jax.random.key(4), out_shape)
  (grads, out) = jax.jit(lambda x, w, p: _conv_grads(cpu_conv.conv_general_dilated, x, w, p,
                                                      strides))(x, w, probe)
  (ref_grads, ref) = jax.jit(lambda x, w, p: _conv_grads(jax.lax.conv_general_dilated, x, w, p,
                                                          strides))(x, w, probe)
  np.testing.assert_allclose(out, ref, **TOL)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(a, b, **TOL)
  program = jax.jit(lambda x, w, p: _conv_grads(cpu_conv.conv_general_dilated, x, w, p,
                                                 strides)).lower(x, w, probe).as_text()
  assert program.count("stablehlo.convolution") == 2 + 8


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_chunked_forward_and_input_gradient_match_the_lax_conv(monkeypatch, strides):
  """With both byte limits lowered, 16 images take 4 chunks in the forward pass and the input
  gradient (4 + 4 convs) and 2 in the kernel gradient; all three equal the lax conv's."""
  monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 8 * 8 * 8 * (3 + 5) * 4)
  monkeypatch.setattr(cpu_conv, "IO_CHUNK_MIN_BYTES", 1)
  x = jax.random.normal(jax.random.key(8), (16, 8, 8, 3))
  _, w = _inputs(8, 8)
  out_shape = jax.eval_shape(lambda x: jax.lax.conv_general_dilated(
      x, w, strides, ((1, 1), (1, 1)), dimension_numbers=DN), x).shape
  assert cpu_conv.io_chunks(x.shape, out_shape, 4) == 4
  # Distinct rows of the probe catch chunks reassembled in the wrong batch order.
  probe = jax.random.normal(jax.random.key(9), out_shape)
  fast = jax.jit(lambda x, w, p: _conv_grads(cpu_conv.conv_general_dilated, x, w, p, strides))
  (grads, out) = fast(x, w, probe)
  (ref_grads, ref) = jax.jit(lambda x, w, p: _conv_grads(jax.lax.conv_general_dilated, x, w, p,
                                                          strides))(x, w, probe)
  np.testing.assert_allclose(out, ref, **TOL)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(a, b, **TOL)
  kernel_chunks = cpu_conv.kernel_grad_chunks(x.shape, out_shape, 4)
  assert kernel_chunks == 2
  program = fast.lower(x, w, probe).as_text()
  assert program.count("stablehlo.convolution") == 4 + 4 + kernel_chunks


def test_chunked_kernel_gradient_on_eight_devices_matches_one(monkeypatch, num_devices):
  """Batch-sharded over 8 devices, the interleaved chunks give the single-device gradient, and
  the program moves no activations between devices: its one collective is the all-reduce of the
  kernel gradient (contiguous chunks would need collective-permutes)."""
  monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 16 * 4 * 4 * (3 + 5) * 4)
  monkeypatch.setattr(cpu_conv, "IO_CHUNK_MIN_BYTES", 1)  # forward and input gradient too
  kx, kp = jax.random.split(jax.random.key(5))
  x = jax.random.normal(kx, (64, 4, 4, 3))
  _, w = _inputs(4, 4)
  probe = jax.random.normal(kp, (64, 4, 4, 5))
  assert cpu_conv.kernel_grad_chunks(x.shape, probe.shape, 4) == 4
  assert cpu_conv.io_chunks(x.shape, probe.shape, 4) == 4
  step = jax.jit(lambda x, w, p: _conv_grads(cpu_conv.conv_general_dilated, x, w, p))
  one = step(x, w, probe)
  batch = sharding.batch_sharding(sharding.make_mesh())
  x8, probe8 = jax.device_put(x, batch), jax.device_put(probe, batch)
  eight = step(x8, w, probe8)
  ref = jax.jit(lambda x, w, p: _conv_grads(jax.lax.conv_general_dilated, x, w, p))(x, w, probe)
  for a, b, c in zip(jax.tree.leaves(eight), jax.tree.leaves(one), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, **TOL)
    np.testing.assert_allclose(a, c, **TOL)
  program = step.lower(x8, w, probe8).compile().as_text()
  collectives = set(re.findall(
      r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)\(", program))
  assert collectives == {"all-reduce"}


def test_the_authors_resnet_is_the_same_function_under_both_conv_impls(monkeypatch):
  """timm's deep stem and output stride 8 (one block per stage, 1/16 width) on 32 px: dilation 2
  and 4 on 4x4 maps and, with the byte limits lowered, chunked kernel gradients, forward passes
  and input gradients in the stem: outputs, BN statistics and parameter gradients agree with the
  lax ResNet."""
  monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 64 * 2**10)
  monkeypatch.setattr(cpu_conv, "IO_CHUNK_MIN_BYTES", 64 * 2**10)  # the three stem convs
  nets = {impl: resnet.ResNet(stage_sizes=(1, 1, 1, 1), widths=(4, 8, 16, 32), stem="timm_deep",
                              stem_width=4, output_stride=8, conv_impl=impl)
          for impl in ("xla", "cpu")}
  x = jax.random.uniform(jax.random.key(6), (8, 32, 32, 3))
  variables = jax.jit(lambda k, x: nets["xla"].init(k, x, train=False))(jax.random.key(7), x)

  def run(net):
    def loss(params):
      feats, new = net.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
      return jnp.sum(feats ** 2), (feats, new)
    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  (grads, (feats, stats)), (ref_grads, (ref_feats, ref_stats)) = run(nets["cpu"]), run(nets["xla"])
  np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-5)
  # Summation order differs (matmuls for convs), so each leaf is compared at its own scale.
  for a, b in zip(jax.tree.leaves((grads, stats)), jax.tree.leaves((ref_grads, ref_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.max(np.abs(b))) + 1e-7)
