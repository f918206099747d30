"""Every `config.model.backbone` name, ResNets and ViTs, and the one builder that dispatches.

The model and the config validation go through here, so a new backbone family is registered
in one place. `resnet.build_backbone` also builds ResNet names on its own, from keywords.
"""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from simlap.models import resnet
from simlap.models import vit

# name -> family.
BACKBONES: dict[str, str] = {**{name: "resnet" for name in resnet.VARIANTS},
                             **{name: "vit" for name in vit.SIZES}}
DTYPES = resnet.DTYPES  # compute dtypes every family takes; parameters stay float32
parse_dtype = resnet.parse_dtype
CONV_IMPLS = resnet.CONV_IMPLS  # ResNets only


def family(name: str) -> str:
  """"resnet" or "vit"; raises ValueError listing the names for an unknown one."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
  return BACKBONES[name]


def build_backbone(model_config: ml_collections.ConfigDict,
                   platform: str | None = None) -> nn.Module:
  """The backbone `config.model` names: apply(..., images (B, H, W, C), train=) -> (B, F) f32.

  ResNets take their fields as keywords (`resnet.build_backbone(**model_config)`); ViTs read
  dtype and freeze_patch_embed (a ViT's size is fixed by its name; it has no stem and no
  BatchNorm). `platform` is what the program is compiled for: it picks the ResNets' CPU or XLA
  forms (`resnet.resolve_conv_impl`); None = JAX's default backend.
  """
  if family(model_config.backbone) == "resnet":
    return resnet.build_backbone(**model_config, platform=platform)
  return vit.build_vit(model_config.backbone, dtype=parse_dtype(model_config.dtype),
                       freeze_patch_embed=bool(model_config.freeze_patch_embed))


def feature_dim(model_config: ml_collections.ConfigDict) -> int:
  """F, the feature width `build_backbone(model_config)` returns."""
  if family(model_config.backbone) == "resnet":
    return resnet.feature_dim(**model_config)
  return vit.SIZES[model_config.backbone].width


def check_config(model_config: ml_collections.ConfigDict, image_size: int) -> None:
  """The family-specific checks of `config_schema.validate`; ValueError naming the field.

  `model.stem` and `model.output_stride` are checked for ResNets only: a ViT has neither and
  ignores them, so a recipe that sets them (configs/in1k.py) still takes
  `--config.model.backbone=vit_s16`. `model.width` and `model.freeze_patch_embed` are refused
  where they would silently do nothing.
  """
  name = model_config.backbone
  freeze = bool(model_config.freeze_patch_embed)
  if family(name) == "resnet":
    stem = model_config.stem
    if stem not in resnet.STEMS:
      raise ValueError(f"config.model.stem={stem!r} is not one of {resnet.STEMS}")
    output_stride = model_config.output_stride
    if output_stride not in resnet.OUTPUT_STRIDES:
      raise ValueError(f"config.model.output_stride={output_stride!r} is not one of "
                       f"{resnet.OUTPUT_STRIDES} (the largest total stride; later stages dilate)")
    if freeze:
      raise ValueError(f"config.model.freeze_patch_embed=True needs a ViT backbone, not {name!r}")
    return
  if float(model_config.width) != 1.0:
    raise ValueError(f"config.model.width={model_config.width} scales ResNets only; a ViT's "
                     f"size is its name ({name!r}): leave width at 1.0")
  patch = vit.SIZES[name].patch
  if image_size % patch:
    raise ValueError(f"config.dataset.image_size={image_size} is not a multiple of {name}'s "
                     f"patch size {patch}")
