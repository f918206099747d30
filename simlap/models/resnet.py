"""ResNet backbones in Flax Linen: basic-block ResNet-18/34, bottleneck ResNet-50, small CIFAR nets.

Layer for layer timm's and torchvision's `ResNet` (conv-BN-ReLU order, torch-style symmetric
padding, the bottleneck's stride on its 3x3 conv: "v1.5"), so their weights load through
`simlap.convert` and give the same outputs (tests/test_golden.py). NHWC; parameters float32,
convs in the compute `dtype`, BatchNorm and the pooled features float32. BatchNorm has no
`axis_name`: the step is one `jax.jit` over global arrays, so its statistics already cover the
whole sharded batch. Stems: `STEM_STRIDE`; per-stage strides and dilations: `stage_geometry`.
"""
from __future__ import annotations
from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simlap.models import cpu_conv
from simlap.models import pooling

Dtype = Any

# He-normal on fan-out, the torchvision ResNet default the authors trained with.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_PAD3 = ((1, 1), (1, 1))  # torch-style symmetric padding; "SAME" would pad (0, 1) at stride 2.


def _xla_max_pool(x, window, strides, padding):
  """`nn.max_pool` (`reduce_window`; its gradient is `select_and_scatter_add`): the TPU/GPU form."""
  return nn.max_pool(x, window, strides, padding)


def _conv3(conv: Callable[..., nn.Module], features: int, strides: int,
           dilation: int) -> nn.Module:
  """A 3x3 conv padded as torch pads it (`padding=dilation`): the map keeps its size at stride 1."""
  return conv(features, (3, 3), (strides, strides), padding=((dilation, dilation),) * 2,
              kernel_dilation=(dilation, dilation))


class BasicBlock(nn.Module):
  """Two 3x3 convs; the second BN's gamma starts at zero so the block is identity at init.

  Attributes:
    features: output channels.
    strides: stride of the first conv (and of the projection shortcut).
    dilation: dilation of the 3x3 convs.
    first_dilation: dilation of the first 3x3 conv (timm: the previous stage's, in the first
      block of a dilated stage); None = `dilation`.
  """
  features: int
  strides: int = 1
  dilation: int = 1
  first_dilation: int | None = None
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, Cin) -> (B, H/s, W/s, features)."""
    residual = x
    first = self.first_dilation or self.dilation
    y = _conv3(self.conv, self.features, self.strides, first)(x)
    y = nn.relu(self.norm()(y))
    y = _conv3(self.conv, self.features, 1, self.dilation)(y)
    # Zero gamma: the residual branch outputs 0 at init, so deep nets start as shallow ones
    # (Goyal et al. 2017; the authors' ResNet-50 recipe uses it).
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(residual)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, as torchvision "v1.5") -> 1x1 x4 expansion; last BN gamma zero.

  The one 3x3 conv runs at `first_dilation or dilation` (timm's Bottleneck).
  """
  features: int
  strides: int = 1
  dilation: int = 1
  first_dilation: int | None = None
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, Cin) -> (B, H/s, W/s, 4 * features)."""
    residual = x
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = _conv3(self.conv, self.features, self.strides, self.first_dilation or self.dilation)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * 4, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(residual)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """A ResNet trunk with global average pooling.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    widths: channels of each stage (before the bottleneck expansion).
    block: "basic" or "bottleneck".
    stem: one of `STEMS` (see `STEM_STRIDE`).
    stem_width: the stem's width w (its output has 2w channels for "timm_deep", else w).
    output_stride: 8, 16 or 32, the largest total stride; later stages dilate instead.
    bn_momentum: running-average decay of BatchNorm (0.9 for short runs; 0.99 lags).
    dtype: compute dtype; parameters and BN statistics stay float32.
    conv_impl: "xla" (`lax.conv_general_dilated`, `nn.max_pool`: what TPUs and GPUs run) or
      "cpu" (`cpu_conv` and `pooling.max_pool`: the same numbers in the forms XLA:CPU runs fast,
      and which cost a TPU HBM; the parameters are the same).
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: str = "basic"
  stem: str = "cifar"
  stem_width: int = 64
  output_stride: int = 32
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Images (B, H, W, C) -> pooled features (B, F) float32, F = widths[-1] (x4 bottleneck)."""
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {self.stage_sizes} and widths {self.widths} differ in length")
    if self.conv_impl not in ("xla", "cpu"):
      raise ValueError(f"unknown conv_impl {self.conv_impl!r}; expected xla | cpu")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_conv_init,
                             conv_general_dilated=(cpu_conv.conv_general_dilated
                                                   if self.conv_impl == "cpu" else None))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32)
    max_pool = pooling.max_pool if self.conv_impl == "cpu" else _xla_max_pool
    x = jnp.asarray(x, self.dtype)

    if self.stem == "imagenet":
      x = conv(self.stem_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = max_pool(x, (3, 3), (2, 2), _PAD3)
    elif self.stem == "cifar":
      x = conv(self.stem_width, (3, 3), padding=_PAD3, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    elif self.stem == "timm_deep":
      w = self.stem_width
      for i, (width, s) in enumerate(((w, 2), (w, 1), (2 * w, 1))):
        x = conv(width, (3, 3), (s, s), padding=_PAD3, name=f"stem_conv{i}")(x)
        x = nn.relu(norm(name=f"stem_bn{i}")(x))
      x = max_pool(x, (3, 3), (2, 2), _PAD3)
    elif self.stem == "cifar_deep":
      half = max(self.stem_width // 2, 1)
      for i, w in enumerate((half, half, self.stem_width)):
        x = conv(w, (3, 3), padding=_PAD3, name=f"stem_conv{i}")(x)
        x = nn.relu(norm(name=f"stem_bn{i}")(x))
    else:
      raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")

    if self.block == "basic":
      block_cls = BasicBlock
    elif self.block == "bottleneck":
      block_cls = BottleneckBlock
    else:
      raise ValueError(f"unknown block {self.block!r}; expected basic | bottleneck")
    for i, (n, w, (strides, dilation, first_dilation)) in enumerate(zip(
        self.stage_sizes, self.widths, stage_geometry(len(self.stage_sizes), STEM_STRIDE[self.stem],
                                                      self.output_stride))):
      for j in range(n):
        x = block_cls(w, strides if j == 0 else 1, dilation=dilation,
                      first_dilation=first_dilation if j == 0 else dilation, conv=conv,
                      norm=norm, name=f"stage{i + 1}_block{j + 1}")(x)
    # Pool in float32: the mean over H*W is a reduction bf16 would round badly.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# name -> (stage_sizes, base widths, block, base stem width). Widths are multiplied by `width`.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], str, int]] = {
    # ~20k parameters: for tests only.
    "resnet_tiny": ((1, 1, 1), (8, 16, 32), "basic", 8),
    # He et al.'s CIFAR ResNet-6n+2 family (3 stages, 16/32/64).
    "resnet14": ((2, 2, 2), (16, 32, 64), "basic", 16),
    "resnet20": ((3, 3, 3), (16, 32, 64), "basic", 16),
    # ResNet-8, the default Fashion-MNIST backbone: the depth configs/default.py's CPU budget
    # allows (step times: docs/performance.md, "Train step").
    "resnet_small": ((1, 1, 1), (16, 32, 64), "basic", 16),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), "basic", 64),
    "resnet34": ((3, 4, 6, 3), (64, 128, 256, 512), "basic", 64),
    "resnet50": ((3, 4, 6, 3), (64, 128, 256, 512), "bottleneck", 64),
}


# stem -> its stride (the resolution it divides the image by). With w the variant's stem width:
#   "imagenet":   7x7 stride-2 conv (3 -> w), BN, ReLU, 3x3 stride-2 max-pool.
#   "timm_deep":  timm's `stem_type="deep"`: 3x3 stride-2 conv (3 -> w), BN, ReLU, 3x3 conv
#                 (w -> w), BN, ReLU, 3x3 conv (w -> 2w), BN, ReLU, 3x3 stride-2 max-pool; the
#                 first block gets a 1x1 projection shortcut (2w -> w), as in timm.
#   "cifar":      one 3x3 stride-1 conv, no pool.
#   "cifar_deep": three 3x3 stride-1 convs (w/2, w/2, w), each with BN and ReLU, no pool (in
#                 neither timm nor torchvision).
STEM_STRIDE = {"imagenet": 4, "timm_deep": 4, "cifar": 1, "cifar_deep": 1}
STEMS = tuple(STEM_STRIDE)
OUTPUT_STRIDES = (8, 16, 32)


def stage_geometry(num_stages: int, stem_stride: int,
                   output_stride: int = 32) -> list[tuple[int, int, int]]:
  """(stride, dilation, first_dilation) of each stage, by timm's `make_blocks` rule.

  Stage 1 keeps the resolution and each later one halves it while the total stride is below
  `output_stride`; past it a stage keeps the resolution and doubles the dilation instead. The
  first block's first 3x3 conv runs at the previous stage's dilation (`first_dilation`), the
  rest at the stage's.
  """
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"output_stride {output_stride} is not one of {OUTPUT_STRIDES}")
  out, net_stride, dilation, previous = [], stem_stride, 1, 1
  for i in range(num_stages):
    stride = 1 if i == 0 else 2
    if net_stride >= output_stride:
      dilation, stride = dilation * stride, 1
    else:
      net_stride *= stride
    out.append((stride, dilation, previous))
    previous = dilation
  return out


DTYPES = ("float32", "bfloat16", "float16")  # compute dtypes; parameters stay float32
# "auto": "cpu" where the program is compiled for a CPU, "xla" for every other platform (TPU,
# GPU): the CPU forms are workarounds for XLA:CPU and cost a TPU HBM (docs/tpu.md).
CONV_IMPLS = ("auto", "xla", "cpu")


def resolve_conv_impl(name: str, platform: str | None = None) -> str:
  """"auto" -> "cpu" when `platform` is "cpu", else "xla"; "xla" and "cpu" as given.

  Args:
    name: `config.model.conv_impl`.
    platform: the platform the program is compiled for, as `jax.Device.platform` names it
      ("cpu", "tpu", "cuda", "rocm", ...); None = JAX's default backend. A compile for TPU
      devices from a CPU host passes "tpu".
  """
  if name not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {name!r}; expected one of {CONV_IMPLS}")
  if name == "auto":
    return "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"
  return name


def parse_dtype(name: str | Dtype) -> Dtype:
  """Maps "float32" / "bfloat16" / "float16" (or a dtype) to a jnp dtype."""
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f"unsupported compute dtype {name!r}")
    return jnp.dtype(name)
  return name


def build_backbone(*, backbone: str, stem: str, width: float, output_stride: int,
                   bn_momentum: float, dtype: str | Dtype, conv_impl: str,
                   platform: str | None = None, **other_model_fields: Any) -> ResNet:
  """ResNet from the `config.model` fields, as `build_backbone(**config.model)`.

  A missing field is a TypeError naming it; the model's other fields (projector, probe, ...)
  are not the backbone's and pass unread.

  Args:
    backbone, stem, width, output_stride, bn_momentum, dtype, conv_impl: the `config.model`
      fields of the same names (config_schema.py describes them).
    platform: what the program is compiled for (`resolve_conv_impl`); None = the default backend.

  Returns:
    An unbound `ResNet`; `apply(..., images (B, H, W, C), train=...)` gives (B, F) float32.
  """
  del other_model_fields
  if backbone not in VARIANTS:
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(VARIANTS)}")
  stages, widths, block, stem_width = VARIANTS[backbone]
  scale = lambda w: max(1, int(round(w * float(width))))  # noqa: E731
  return ResNet(
      stage_sizes=stages,
      widths=tuple(scale(w) for w in widths),
      block=block,
      stem=stem,
      stem_width=scale(stem_width),
      output_stride=int(output_stride),
      bn_momentum=float(bn_momentum),
      dtype=parse_dtype(dtype),
      conv_impl=resolve_conv_impl(conv_impl, platform),
  )


def feature_dim(*, backbone: str, width: float, **other_model_fields: Any) -> int:
  """F, the pooled feature width `build_backbone(**config.model)` returns."""
  del other_model_fields
  _, widths, block, _ = VARIANTS[backbone]
  w = max(1, int(round(widths[-1] * float(width))))
  return w * 4 if block == "bottleneck" else w
