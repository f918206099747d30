"""The authors' CIFAR-10 recipe (vitookit, the 90.86% online-probe run).

The authors' network, timm's `resnet18(stem_type="deep", output_stride=8)`: the stride-4 deep
stem (3x3 stride-2 conv, two 3x3 convs, max-pool) and dilated stages 3 and 4, feature maps 8, 4,
4, 4 on 32x32 images. 2-layer projector 512 -> 2048 -> 256, Adam lr 1e-3 with coupled L2 5e-4,
2 of 50 epochs warmup, batch 256, crops of scale (0.7, 1), RandAugment m9, repeated
augmentation x3, fixed scale 10, online linear probe on stop-gradient features. Where simlap's
recipe still differs from the authors': docs/recipes.md.
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
  c.batch_size = 256
  c.num_epochs = 50.0
  c.optimizer.name = "adam_l2"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_epochs = 2.0
  c.loss.temperature = 0.1
  c.eval_every = 5000
  c.checkpoint_every = 1000
  method, _ = config_schema.parse_config_arg(arg)
  return config_schema.apply_method(c, method)
