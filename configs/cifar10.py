"""The authors' CIFAR-10 recipe (vitookit, the 90.86% online-probe run).

The authors' network, timm's `resnet18(stem_type="deep", output_stride=8)`: the stride-4 deep
stem (3x3 stride-2 conv, two 3x3 convs, max-pool) and dilated stages 3 and 4, feature maps 8, 4,
4, 4 on 32x32 images. 2-layer projector 512 -> 2048 -> 256, Adam lr 1e-3 with coupled L2 5e-4,
crops of scale (0.7, 1), RandAugment m9, repeated augmentation x3, fixed scale 10, "pair"
reduction, CIFAR mean/std input normalisation, eval resize 36 -> center 32, online linear
probe on stop-gradient features. The authors' loss is the "weighted" logits:
`--config=configs/cifar10.py:simlap_weighted`. Their run: 50 epochs of 585 steps (an epoch
counts every repeat), 2 of them warm-up, batch 256; here the same 29,250 steps with ~1,170 of
warm-up, at batch 255 (3 copies of 85 images: simlap's batches hold whole repeats; on an
8-device mesh use 264). Every difference that remains: docs/recipes.md.
"""
from __future__ import annotations
import ml_collections

from simlap import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_schema.base_config()
  c.dataset.name = "cifar10"
  c.dataset.num_classes = 10
  c.dataset.image_size = 32
  c.dataset.channels = 3
  c.dataset.repeats = 3
  c.model.backbone = "resnet18"
  c.model.stem = "timm_deep"
  c.model.output_stride = 8
  c.model.projector_hidden = (2048,)
  c.model.projector_dim = 256
  for view in (c.augment.view1, c.augment.view2):
    view.crop_scale = (0.7, 1.0)
    view.jitter_prob = 0.0
    view.grayscale_prob = 0.0
    view.randaugment_layers = 2
    view.randaugment_magnitude = 9
  c.model.pixel_mean = (0.4914, 0.4822, 0.4465)  # the authors' transforms.Normalize
  c.model.pixel_std = (0.2470, 0.2435, 0.2616)
  c.augment.eval_crop_fraction = 32 / 36  # resize 36, center crop 32
  c.batch_size = 255
  c.num_steps = 29_250  # 50 of the authors' epochs (3 x 50,000 samples / 256)
  c.optimizer.name = "adam_l2"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_epochs = 6.0  # 6 x 196 steps ~ the authors' 2 epochs x 585
  c.loss.temperature = 0.1
  c.loss.reduction = "pair"  # vitookit's multipos_ce_loss: sum over positives / their count
  c.eval_every = 5000
  c.checkpoint_every = 1000
  method, _ = config_schema.parse_config_arg(arg)
  return config_schema.apply_method(c, method)
