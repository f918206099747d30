"""Heads on top of the pooled backbone features: the SimLAP projector and the linear probe."""
from __future__ import annotations
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class Projector(nn.Module):
  """MLP projector: [Dense -> BN -> ReLU] per hidden width, Dense(D, no bias), LayerNorm.

  The same module is the momentum-encoder objective's predictor (`last_norm="none"`: MoCo-v3's
  predictor ends on its Linear) and, with `use_bias=False`, MoCo-v3's bias-free MLPs.

  LayerNorm comes last, not BatchNorm: the authors found a final BN "prevents the gate from
  closing" (BN forces every dimension to carry unit batch variance, so no dimension can be
  switched off). The hidden layers run in the compute `dtype`; the last Dense and the LayerNorm
  run in float32 so the embeddings the loss sees are float32.

  Attributes:
    hidden: widths of the hidden layers, e.g. (2048,) on CIFAR, (2048, 2048) on ImageNet.
    out_dim: D, the embedding (and gate) dimension.
    bn_momentum: BatchNorm running-average decay.
    dtype: compute dtype of the hidden layers; parameters stay float32.
    use_bias: biases in the hidden Dense layers (the BN after each makes them redundant;
      MoCo-v3 omits them).
    last_norm: "layernorm" or "none" after the last Dense.
  """
  hidden: Sequence[int] = (2048,)
  out_dim: int = 256
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  use_bias: bool = True
  last_norm: str = "layernorm"

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Features (B, F) -> embeddings (B, out_dim) float32."""
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                   name=f"dense{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                       dtype=self.dtype, param_dtype=jnp.float32, name=f"bn{i}")(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                 name="out")(x.astype(jnp.float32))
    if self.last_norm == "none":
      return x
    if self.last_norm != "layernorm":
      raise ValueError(f"last_norm must be 'layernorm' or 'none', got {self.last_norm!r}")
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32,
                        name="norm")(x)


class LinearHead(nn.Module):
  """Linear classifier (B, F) -> logits (B, num_classes), float32.

  Used as the online linear probe (on stop-gradient features) and, without the stop-gradient, as
  the classifier of the supervised cross-entropy baseline.

  With `normalize`, an affine-free BatchNorm standardises the features first (MAE's linear-probe
  head). Pooled ReLU features can be far from unit scale while Adam moves weights by about lr
  per step, so without it the probe spends its steps growing weights and online accuracy
  reports the probe's lag, not the features' quality. At inference the BN is a fixed affine
  map, so the head is still linear in the features.

  Attributes:
    num_classes: C.
    normalize: standardise features with a BatchNorm without scale or offset.
    bn_momentum: that BatchNorm's running-average decay.
  """
  num_classes: int
  normalize: bool = True
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """(B, F) -> (B, num_classes) float32; `train` uses and updates batch statistics."""
    x = x.astype(jnp.float32)
    if self.normalize:
      x = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False,
                       momentum=self.bn_momentum, epsilon=1e-5, dtype=jnp.float32,
                       param_dtype=jnp.float32, name="bn")(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                    name="fc")(x)
