"""The embedded main job: SimLAP on the offline Fashion-MNIST (Debian) in ~10 min on 2 CPU cores.

`--config=configs/default.py:METHOD` switches to a baseline (see simlap.config_schema.METHODS);
every config file takes its argument the same way (`config_schema.parse_config_arg`).
"""
from __future__ import annotations
import ml_collections

from simlap import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fashion-MNIST, a small ResNet, 3 epochs, kNN and online-probe evaluation at the end."""
  c = config_schema.base_config()
  c.model.backbone = "resnet_small"  # ResNet-8: a wider one would not fit the CPU budget
  c.model.projector_hidden = (512,)
  c.model.projector_dim = 128
  # Batch 128 (256 views a step): on a small CPU a smaller step keeps its activations in cache,
  # and twice the updates per epoch help a 3-epoch run.
  c.batch_size = 128
  c.num_epochs = 3.0
  c.log_every = 100
  # A 3-epoch run wants a high LR and a short warmup.
  c.optimizer.lr = 5e-3
  c.optimizer.warmup_epochs = 0.3
  # Grayscale input: colour jitter would reduce to brightness/contrast; crops do the work.
  c.augment.view1.jitter_prob = 0.0
  c.augment.view2.jitter_prob = 0.0
  c.augment.view1.crop_scale = (0.5, 1.0)
  c.augment.view2.crop_scale = (0.5, 1.0)
  method, _ = config_schema.parse_config_arg(arg)
  return config_schema.apply_method(c, method)
