"""ViT backbones (simlap/models/vit.py): published parameter counts, MoCo-v3's sin-cos position
embedding, 8 devices agree with 1, the patch-embedding stop-gradient, the bf16 precision policy,
the backbone registry and config checks, and two real train steps (replicated and FSDP).

Everything runs `vit_tiny` (patch 4, width 32, depth 2) on CPU; the big sizes are only traced
with `jax.eval_shape`.
"""
from __future__ import annotations
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from simlap import config_schema
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import train_stream
from simlap.models import backbones
from simlap.models import model as model_lib
from simlap.models import resnet
from simlap.models import vit
from test_train import tiny_config

TINY = vit.SIZES["vit_tiny"]


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")  # cheap to compile on CPU (see test_models)


def _images(batch: int, size: int, channels: int, seed: int = 0) -> jax.Array:
  return jax.random.normal(_key(seed), (batch, size, size, channels))


def _apply(net):
  return jax.jit(functools.partial(net.apply, train=False))


@pytest.fixture(scope="module")
def tiny():
  """vit_tiny float32, its params and 16 28x28x1 images, shared by the forward-pass tests."""
  net = vit.build_vit("vit_tiny")
  images = _images(16, 28, 1)
  variables = jax.jit(functools.partial(net.init, train=False))(_key(1), images)
  return net, variables, images, _apply(net)(variables, images)


# ---------------------------------------------------------------- sizes and parameter counts


def timm_count(patch: int, width: int, depth: int, channels: int = 3, tokens: int = 197) -> int:
  """Parameters of timm's VisionTransformer(num_classes=0) at 224x224 (196 patches + cls)."""
  mlp = vit.MLP_RATIO * width
  block = (2 * 2 * width  # norm1, norm2: scale and bias
           + width * 3 * width + 3 * width  # qkv
           + width * width + width  # proj
           + width * mlp + mlp + mlp * width + width)  # fc1, fc2
  return (patch * patch * channels * width + width  # patch conv
          + width  # cls token
          + tokens * width  # learned position embedding
          + depth * block + 2 * width)  # blocks, final norm


# timm's published counts with num_classes=0. S and B are the well-known 21,665,664 and
# 85,798,656; Ti and L follow from the same formula and match timm's with-head totals
# (5.72 M, 304.33 M) once the 1000-class head (W * 1000 + 1000) is added.
TIMM = {"vit_ti16": 5_524_416, "vit_s16": 21_665_664, "vit_b16": 85_798_656,
        "vit_l16": 303_301_632}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_param_counts_match_timm_without_learned_position_embedding(name):
  s = vit.SIZES[name]
  assert (s.patch, vit.MLP_RATIO) == (16, 4)
  assert timm_count(s.patch, s.width, s.depth) == TIMM[name]
  net = vit.build_vit(name)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(net.init, train=False), _key(0), x)
  # We compare timm's count minus its learned (197, W) position embedding: MoCo-v3's sin-cos
  # embedding is a fixed constant here, not a parameter. S/16: 21,665,664 - 197 * 384 =
  # 21,590,016; B/16: 85,798,656 - 197 * 768 = 85,647,360. Everything else (patch conv with
  # bias, cls token, blocks, final norm) is the same set of tensors.
  assert set(variables) == {"params"}  # no batch_stats: a ViT has no BatchNorm
  assert sum(p.size for p in jax.tree.leaves(variables)) == TIMM[name] - 197 * s.width
  out = jax.eval_shape(functools.partial(net.apply, train=False), variables, x)
  assert out.shape == (1, s.width) and out.dtype == jnp.float32


# ---------------------------------------------------------------- position embedding


def moco_v3_sincos(h: int, w: int, embed_dim: int, temperature: float = 10000.0) -> np.ndarray:
  """MoCo-v3's build_2d_sincos_position_embedding (vits.py), line by line in NumPy."""
  grid_w = np.arange(w, dtype=np.float32)
  grid_h = np.arange(h, dtype=np.float32)
  grid_w, grid_h = np.meshgrid(grid_w, grid_h, indexing="ij")  # torch.meshgrid's default
  pos_dim = embed_dim // 4
  omega = np.arange(pos_dim, dtype=np.float32) / pos_dim
  omega = 1. / (temperature ** omega)
  out_w = np.einsum("m,d->md", grid_w.flatten(), omega)
  out_h = np.einsum("m,d->md", grid_h.flatten(), omega)
  pos_emb = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
  pe_token = np.zeros([1, embed_dim], dtype=np.float32)
  return np.concatenate([pe_token, pos_emb], axis=0)


@pytest.mark.parametrize("grid,width", [(14, 384), (7, 32), (8, 192)])
def test_sincos_matches_moco_v3(grid, width):
  ours = vit.sincos_position_embedding(grid, grid, width)
  assert ours.shape == (1 + grid * grid, width) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, moco_v3_sincos(grid, grid, width), rtol=0, atol=1e-6)
  assert not ours[0].any()  # the class token's row is zero


def test_position_embedding_is_used(tiny):
  # Without a position embedding a ViT is blind to where patches are: swapping two patches
  # would leave the class-token features unchanged up to round-off.
  net, variables, images, out = tiny
  p = TINY.patch
  swapped = images.at[:, :p, :p].set(images[:, -p:, -p:]).at[:, -p:, -p:].set(images[:, :p, :p])
  diff = np.abs(np.asarray(_apply(net)(variables, swapped) - out)).max()
  assert diff > 1e-2, diff


# ---------------------------------------------------------------- devices, gradients, dtypes


def test_eight_devices_match_one(tiny, num_devices):
  net, variables, images, _ = tiny
  mesh = sharding.make_mesh()
  assert images.shape[0] % num_devices == 0
  out8 = _apply(net)(jax.device_put(variables, sharding.replicated(mesh)),
                     jax.device_put(images, sharding.batch_sharding(mesh)))
  assert out8.sharding.spec == P("data")  # the batch really was split 8 ways
  one = jax.devices()[0]
  out1 = _apply(net)(jax.device_put(variables, one), jax.device_put(images, one))
  assert out1.shape == (16, TINY.width) and out1.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), rtol=1e-6, atol=1e-6)


def _grads(freeze: bool, variables, images):
  net = vit.build_vit("vit_tiny", freeze_patch_embed=freeze)
  target = jax.random.normal(_key(5), (images.shape[0], TINY.width))

  def loss(params):
    return jnp.sum(net.apply({"params": params}, images) * target)
  return jax.jit(jax.grad(loss))(variables["params"])


def test_freeze_patch_embed_zeroes_only_the_patch_gradient():
  images = _images(4, 32, 3)  # RGB CIFAR size: 8x8 patches
  variables = jax.jit(functools.partial(vit.build_vit("vit_tiny").init, train=False))(
      _key(2), images)
  frozen, free = _grads(True, variables, images), _grads(False, variables, images)
  for name in ("kernel", "bias"):
    assert not np.asarray(frozen["patch_embed"][name]).any()
    assert np.abs(np.asarray(free["patch_embed"][name])).max() > 1e-6
  rest = {k: v for k, v in frozen.items() if k != "patch_embed"}
  for path, g in jax.tree_util.tree_flatten_with_path(rest)[0]:
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def _eqns(jaxpr):
  """Every equation of a jaxpr, nested ones (jit, custom_jvp, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _eqns(sub)


def test_bf16_compute_keeps_layernorm_and_softmax_float32(tiny):
  net, variables, images, out32 = tiny
  bf16 = vit.build_vit("vit_tiny", dtype=jnp.bfloat16)
  eqns = list(_eqns(jax.make_jaxpr(functools.partial(bf16.apply, train=False))(
      variables, images).jaxpr))
  f32 = np.dtype(np.float32)

  def dtypes(prim):
    return [e.invars[0].aval.dtype for e in eqns if e.primitive.name == prim]
  # exp occurs only in the softmax (GELU is erf), rsqrt only in LayerNorm: all float32.
  assert len(dtypes("exp")) == TINY.depth and set(dtypes("exp")) == {f32}
  assert len(dtypes("rsqrt")) == 2 * TINY.depth + 1 and set(dtypes("rsqrt")) == {f32}
  dots = [e for e in eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
  assert all(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots)  # every matmul is bf16
  tokens = 1 + (28 // TINY.patch) ** 2
  # The attention logits: the products whose result has both token axes, (B, heads, T, T) up to
  # the layout (dot_product_attention adds a grouped-query axis: (B, heads, T, 1, T)).
  logits = [e for e in dots if list(e.outvars[0].aval.shape).count(tokens) == 2]
  assert len(logits) == TINY.depth and {e.outvars[0].aval.dtype for e in logits} == {f32}
  out16 = _apply(bf16)(variables, images)
  assert out16.dtype == jnp.float32
  err = np.abs(np.asarray(out16) - np.asarray(out32)).max()
  assert 0 < err < 0.1, err  # bf16 rounding (~1e-2 on unit-scale LayerNorm output), no more


# ---------------------------------------------------------------- registry and config


def test_registry_and_config_checks():
  assert set(backbones.BACKBONES) == set(resnet.VARIANTS) | set(vit.SIZES)
  config = config_schema.base_config()
  config.model.update(backbone="vit_tiny", stem="imagenet")  # a ViT ignores the ResNet stem
  config_schema.validate(config)
  assert backbones.feature_dim(config.model) == TINY.width
  assert isinstance(model_lib.build_model(config.model, config.gate, 10).backbone, vit.ViT)
  for field, value, message in [
      ("model.width", 2.0, "width=2.0 scales ResNets only"),
      ("dataset.image_size", 30, "image_size=30 is not a multiple of vit_tiny's patch size 4"),
      ("model.backbone", "vit_h14", r"is not one of \(.*'vit_b16'"),
  ]:
    bad = config.copy_and_resolve_references()
    bad.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
      config_schema.validate(bad)
  bad = config_schema.base_config()
  bad.model.freeze_patch_embed = True  # resnet18
  with pytest.raises(ValueError, match="freeze_patch_embed=True needs a ViT"):
    config_schema.validate(bad)
  bad.model.update(freeze_patch_embed=False, stem="nope")
  with pytest.raises(ValueError, match=r"config.model.stem='nope' is not one of \('imagenet'"):
    config_schema.validate(bad)
  bad.model.update(stem="timm_deep", output_stride=4)
  with pytest.raises(ValueError, match=r"output_stride=4 is not one of \(8, 16, 32\)"):
    config_schema.validate(bad)
  config.model.output_stride = 4  # a ViT ignores it, as it ignores the stem
  config_schema.validate(config)


# ---------------------------------------------------------------- the real trainer


@pytest.fixture(scope="module")
def trained(fmnist_data_dir):
  """{mode: (trainer, state before, state after 2 steps, losses, learning rates)}."""
  out, host_batches = {}, None
  for mode in ("replicated", "fsdp"):
    # fsdp_min_size 16 so the tiny ViT's kernels are really split over the 8 devices.
    config = tiny_config(fmnist_data_dir, **{
        "model.backbone": "vit_tiny", "model.freeze_patch_embed": True, "num_steps": 2,
        "optimizer.weight_decay": 0.1, "sharding.params": mode, "sharding.fsdp_min_size": 16})
    config_schema.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    if host_batches is None:  # the same two real batches for both modes
      batches = train_stream.train_iterator(config, mesh, seed=0)
      host_batches = [jax.device_get(next(batches)) for _ in range(2)]
    trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
    state = trainer.init_fn()
    before = jax.device_get(state)
    losses, lrs = [], []
    for batch in host_batches:
      state, metrics = trainer.step_fn(state, jax.device_put(batch,
                                                             sharding.batch_sharding(mesh)))
      losses.append(float(metrics["loss"]))
      lrs.append(float(metrics["learning_rate"]))
    out[mode] = trainer, before, state, losses, lrs
  return out


def test_vit_trains_with_the_real_trainer(trained):
  _, before, state, losses, lrs = trained["replicated"]
  assert int(state.step) == 2 and int(state.nonfinite) == 0 and np.all(np.isfinite(losses))
  # The trainer's batch_stats hold the heads' BatchNorms only: the ViT contributes none.
  assert "backbone" not in state.batch_stats and "projector" in state.batch_stats
  old, new = before.params["model"]["backbone"], jax.device_get(state.params["model"]["backbone"])
  assert np.abs(new["block0"]["attn"]["qkv"]["kernel"] - old["block0"]["attn"]["qkv"]["kernel"]
                ).max() > 1e-5
  # freeze_patch_embed: zero gradient, and the optimizer leaves the patch projection alone (no
  # weight decay either): kernel and bias stay exactly at their init, as in MoCo-v3.
  assert max(lrs) > 0  # so weight decay would have moved the kernel
  np.testing.assert_array_equal(new["patch_embed"]["kernel"], old["patch_embed"]["kernel"])
  np.testing.assert_array_equal(new["patch_embed"]["bias"], old["patch_embed"]["bias"])


def test_vit_fsdp_step_matches_replicated(trained):
  _, _, _, loss_r, _ = trained["replicated"]
  trainer, _, state, loss_f, _ = trained["fsdp"]
  np.testing.assert_allclose(loss_f, loss_r, rtol=1e-5)
  specs = {jax.tree_util.keystr(path): leaf.sharding.spec for path, leaf in
           jax.tree_util.tree_flatten_with_path(state.params["model"]["backbone"])[0]}
  assert specs["['block0']['attn']['qkv']['kernel']"] == P(None, "data")  # (32, 96): split 96
  assert specs["['block1']['fc1']['kernel']"] == P(None, "data")
  assert sum(s != P() for s in specs.values()) >= 10
  assert jax.tree.leaves(state.params) and all(
      leaf.sharding == want for leaf, want in
      zip(jax.tree.leaves(state), jax.tree.leaves(trainer.state_sharding)))
