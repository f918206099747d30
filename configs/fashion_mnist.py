"""SimLAP on the offline Fashion-MNIST, longer than the default job (about an hour on 2 CPU cores).

`--config=configs/fashion_mnist.py:ce` (or any name in simlap.config_schema.METHODS) switches the
objective and nothing else.
"""
from __future__ import annotations
import ml_collections

from simlap import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_schema.base_config()
  c.model.backbone = "resnet_small"
  c.model.projector_hidden = (1024,)
  c.model.projector_dim = 128
  c.num_epochs = 30.0
  c.optimizer.warmup_epochs = 2.0
  c.eval_every = 2000
  c.checkpoint_every = 1000
  for view in (c.augment.view1, c.augment.view2):
    view.jitter_prob = 0.0
    view.crop_scale = (0.3, 1.0)
  method, _ = config_schema.parse_config_arg(arg)
  return config_schema.apply_method(c, method)
