"""Vision Transformers as MoCo-v3 builds them (Chen, Xie, He 2021), in Flax Linen.

The trunk: a patch embedding (a conv with kernel = stride = patch), a class token, fixed 2-D
sin-cos position embeddings (not parameters), pre-LayerNorm blocks, a final LayerNorm; the
features are the class token's output. No dropout, drop-path or BatchNorm: the module makes no
"batch_stats" collection and `train` changes nothing. Parameters, the residual stream, every
LayerNorm and the attention softmax are float32; the patch conv and every Dense run in the
compute `dtype`, and the features come out float32.
"""
from __future__ import annotations
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


class Size(NamedTuple):
  patch: int
  width: int
  depth: int
  heads: int


# name -> size. MLP ratio 4 for all. The /16 sizes are the standard ones (Dosovitskiy et al.;
# Touvron et al. for Ti and S), the ones MoCo-v3 trains.
SIZES: dict[str, Size] = {
    "vit_tiny": Size(patch=4, width=32, depth=2, heads=2),  # tests only: 28x28 -> 7x7 patches
    "vit_ti16": Size(patch=16, width=192, depth=12, heads=3),
    "vit_s16": Size(patch=16, width=384, depth=12, heads=6),
    "vit_b16": Size(patch=16, width=768, depth=12, heads=12),
    "vit_l16": Size(patch=16, width=1024, depth=24, heads=16),
}
MLP_RATIO = 4
LN_EPS = 1e-6  # timm's and MoCo-v3's ViT LayerNorm epsilon


def sincos_position_embedding(grid_h: int, grid_w: int, width: int,
                              temperature: float = 10000.0) -> np.ndarray:
  """MoCo-v3's `build_2d_sincos_position_embedding`: (1 + grid_h * grid_w, width) float32.

  Row 0 (the class token) is zero. Patch token t = r * grid_w + c (row-major, as the patch
  conv's output is flattened) gets [sin(r w), cos(r w), sin(c w), cos(c w)], each width/4 wide,
  w_i = temperature ** -(i / (width/4)). MoCo-v3 calls the first half "w" but, through
  torch.meshgrid's "ij" indexing, fills it with the row index; on the square grids it is built
  for, this function equals it exactly, and on other grids it keeps rows and columns apart.
  """
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
  pos_dim = width // 4
  # float32 throughout, as MoCo-v3 computes it in torch, so the constants agree bit for bit.
  omega = np.arange(pos_dim, dtype=np.float32) / np.float32(pos_dim)
  omega = (np.float32(1.0) / np.float32(temperature) ** omega).astype(np.float32)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float32),
                           np.arange(grid_w, dtype=np.float32), indexing="ij")
  out_r = np.einsum("m,d->md", rows.reshape(-1), omega)
  out_c = np.einsum("m,d->md", cols.reshape(-1), omega)
  pe = np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1)
  return np.concatenate([np.zeros((1, width), np.float32), pe.astype(np.float32)], axis=0)


def _uniform_init(limit: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def _qkv_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform for a (width, 3 * width) kernel as three (width, width) layers (MoCo-v3)."""
  fan_in, fan_out = shape
  return _uniform_init(math.sqrt(6.0 / (fan_in + fan_out // 3)))(key, shape, dtype)


def _patch_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform for a (p, p, C, width) conv kernel seen as a (p*p*C, width) matrix."""
  p_h, p_w, channels, width = shape
  return _uniform_init(math.sqrt(6.0 / (p_h * p_w * channels + width)))(key, shape, dtype)


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """Multi-head self-attention: one fused qkv Dense, scaled dot-product, output Dense.

  Attributes:
    heads: number of heads; the width must divide by it.
    dtype: compute dtype of the two Denses (and of q, k, v).
  """
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(B, T, W) -> (B, T, W) in the compute dtype."""
    b, t, w = x.shape
    if w % self.heads:
      raise ValueError(f"width {w} does not split into {self.heads} heads")
    dense = lambda n, name, init: nn.Dense(  # noqa: E731 (two layers, one place for dtypes)
        n, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=name)
    qkv = dense(3 * w, "qkv", _qkv_init)(x)
    # (B, T, 3, N, H): q, k, v outermost, as timm lays out its fused qkv, so kernels match.
    q, k, v = (a[:, :, 0] for a in jnp.split(qkv.reshape(b, t, 3, self.heads, w // self.heads),
                                             3, axis=2))
    # jax.nn.dot_product_attention (its XLA path) computes the logits with a float32
    # accumulator (preferred_element_type) and the softmax in float32 even for bfloat16 q and k,
    # then casts the probabilities to the compute dtype for the product with v: exactly the
    # policy wanted, with no mask needed, and backends that have a fused kernel can swap it in.
    y = jax.nn.dot_product_attention(q, k, v)
    return dense(w, "proj", nn.initializers.xavier_uniform())(y.reshape(b, t, w))


class Block(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); the stream stays float32.

  Attributes:
    heads: attention heads.
    mlp_ratio: MLP hidden width / model width.
    dtype: compute dtype of the Denses.
  """
  heads: int
  mlp_ratio: int = MLP_RATIO
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(B, T, W) float32 -> (B, T, W) float32."""
    w = x.shape[-1]
    x = x + Attention(self.heads, self.dtype, name="attn")(_layer_norm("norm1")(x)).astype(
        jnp.float32)
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.xavier_uniform(), name=name)
    y = dense(self.mlp_ratio * w, "fc1")(_layer_norm("norm2")(x))
    y = dense(w, "fc2")(nn.gelu(y, approximate=False))  # torch's nn.GELU is the exact one
    return x + y.astype(jnp.float32)


class ViT(nn.Module):
  """A ViT trunk returning the class token's final (LayerNorm-ed) features.

  Initialisation as MoCo-v3's `VisionTransformerMoCo`: xavier-uniform linear kernels, the qkv
  kernel's bound as if q, k, v were three (width, width) layers (`_qkv_init`), the patch kernel
  over its flattened fan (`_patch_init`: a Flax conv initialiser would count p*p*width out); zero
  biases; the class token normal(std 1e-6); LayerNorm scale 1, bias 0.

  Attributes:
    patch: side of the square patches (kernel and stride of the patch conv).
    width: token width W.
    depth: number of blocks.
    heads: attention heads per block.
    mlp_ratio: MLP hidden width / W.
    freeze_patch_embed: MoCo-v3's stop-grad-conv1: a stop-gradient on the patch conv's output,
      so its kernel and bias get exactly zero gradient; the optimizer gives them no update
      either (`optim.make_optimizer`), so they keep their random init (docs/method.md, "ViT
      backbones").
    dtype: compute dtype; parameters, LayerNorms and the softmax stay float32.
  """
  patch: int
  width: int
  depth: int
  heads: int
  mlp_ratio: int = MLP_RATIO
  freeze_patch_embed: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """Images (B, H, W, C), H and W multiples of `patch` -> features (B, width) float32."""
    del train  # no dropout or BatchNorm: training and inference compute the same function
    b, h, w, _ = x.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"image {h}x{w} is not a whole number of {self.patch}x{self.patch} "
                       "patches")
    tokens = nn.Conv(self.width, (self.patch, self.patch), (self.patch, self.patch),
                     padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_patch_init, name="patch_embed")(jnp.asarray(x, self.dtype))
    if self.freeze_patch_embed:
      tokens = jax.lax.stop_gradient(tokens)
    gh, gw = h // self.patch, w // self.patch
    tokens = tokens.reshape(b, gh * gw, self.width).astype(jnp.float32)
    # 1-D, so optim.decay_mask exempts it from weight decay like the biases (timm's
    # no_weight_decay list does the same; MoCo-v3 itself decays every parameter).
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (self.width,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), tokens], axis=1)
    # A trace-time constant (row 0, the class token's, is zero): nothing to learn or save.
    x = x + jnp.asarray(sincos_position_embedding(gh, gw, self.width))
    for i in range(self.depth):
      x = Block(self.heads, self.mlp_ratio, self.dtype, name=f"block{i}")(x)
    return _layer_norm("norm")(x)[:, 0]


def build_vit(name: str, *, dtype: Dtype = jnp.float32, freeze_patch_embed: bool = False) -> ViT:
  """The ViT of size `name` (a key of SIZES); `apply(..., images (B, H, W, C))` -> (B, W)."""
  if name not in SIZES:
    raise ValueError(f"unknown ViT {name!r}; expected one of {sorted(SIZES)}")
  s = SIZES[name]
  return ViT(patch=s.patch, width=s.width, depth=s.depth, heads=s.heads,
             freeze_patch_embed=freeze_patch_embed, dtype=dtype)
