"""The authors' ViT recipe on ImageNet-1k (MoCo-v3's, which their v1 "Hydra-MoCo" trains).

ViT-B/16 (or S/16) with a frozen random patch projection, a momentum encoder (0.99 -> 1) and a
predictor; projector 4096 -> 4096 -> 256 and predictor 4096 -> 256 without biases; AdamW lr
1.5e-4 x batch/256, weight decay 0.1, batch 4096, 300 epochs with 40 warm-up, T = 0.2; bfloat16
compute with float32 LayerNorm, softmax, gates and loss; BYOL's asymmetric augmentations.

    --config=configs/in1k_vit.py            ViT-B/16, hydra (the gated loss, beta = 1)
    --config=configs/in1k_vit.py:moco,s16   ViT-S/16, MoCo-v3 alone (beta = alpha = 0)
    --config=configs/in1k_vit.py:hydra,smoke  a few steps of a tiny ViT (tests, mocked data)

Only the momentum-encoder methods (`hydra`, `moco`) belong to this recipe. The dataset needs the
ImageNet tars in `dataset.manual_dir` (see docs/usage.md, "Training datasets").
"""
from __future__ import annotations
import importlib.util
import os

import ml_collections

from simlap import config_schema


def _in1k():
  """configs/in1k.py, loaded by path: config files are not a package (--config=PATH)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "in1k.py")
  spec = importlib.util.spec_from_file_location("simlap_config_in1k", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

SIZES = {"s16": "vit_s16", "b16": "vit_b16"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t for t in (arg or "").split(",") if t.strip()]
  if not any(t.strip() in config_schema.METHODS for t in tokens):
    tokens.append("hydra")
  method, variants = config_schema.parse_config_arg(",".join(tokens),
                                                    variants=("smoke", *SIZES))
  if method not in ("hydra", "moco"):
    raise ValueError(f"configs/in1k_vit.py is the momentum-encoder recipe: method 'hydra' or "
                     f"'moco', got {method!r}")
  sizes = [SIZES[v] for v in variants if v in SIZES]
  if len(sizes) > 1:
    raise ValueError(f"config argument {arg!r}: choose one ViT size of {sorted(SIZES)}")
  in1k = _in1k()
  c = in1k.get_config(method)  # ImageNet data, augmentations, the momentum-encoder recipe
  c.model.backbone = sizes[0] if sizes else "vit_b16"
  c.model.freeze_patch_embed = True  # MoCo-v3's stop-grad-conv1: a fixed random projection
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1.5e-4
  c.optimizer.lr_scaling = "linear"
  c.optimizer.weight_decay = 0.1
  c.optimizer.warmup_epochs = 40.0
  c.num_epochs = 300.0
  c.batch_size = 4096
  c.loss.temperature = 0.2

  if "smoke" in variants:  # a few steps of a tiny ViT on (mocked) data: wiring, not learning
    in1k.smoke_variant(c)
    c.model.backbone = "vit_tiny"
  return c
