"""The embedded main job: SimLAP on the offline Fashion-MNIST (Debian) in ~10 min on 2 CPU cores.

`--config=configs/default.py:METHOD` switches to a baseline (see simlap.config_schema.METHODS).
"""
import ml_collections

from simlap import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fashion-MNIST, a small ResNet, 3 epochs, kNN and online-probe evaluation at the end."""
  c = config_schema.base_config()
  c.model.backbone = "resnet_small"
  c.model.projector_hidden = (512,)
  c.model.projector_dim = 128
  c.batch_size = 256
  c.num_epochs = 3.0
  c.log_every = 100
  # Grayscale input: colour jitter would reduce to brightness/contrast; crops do the work.
  c.augment.view1.jitter_prob = 0.0
  c.augment.view2.jitter_prob = 0.0
  c.augment.view1.crop_scale = (0.3, 1.0)
  c.augment.view2.crop_scale = (0.3, 1.0)
  return config_schema.apply_method(c, arg or "simlap")
