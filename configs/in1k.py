"""The authors' ImageNet-1k "paper recipe": ResNet-50, batch 1024, 1000 epochs, LARS.

LARS lr 0.2 (absolute, not scaled), momentum 0.9, weight decay 1e-4, 40 warmup epochs then
cosine to 0; projector 2048 -> 2048 -> 2048 -> 256; T = 0.1; SimCLR augmentations; synchronized
BatchNorm (automatic: the step is one jit over the global batch); bfloat16 compute with float32
parameters, norms, gates and loss.

`--config=configs/in1k.py:hydra` (or `:moco`) switches to the authors' ResNet-50 momentum-encoder
recipe (MoCo-v3's): batch 4096, 300 epochs, LARS lr 0.3 x batch/256, weight decay 1.5e-6, 10
warm-up epochs, T = 0.15, momentum 0.99 -> 1, projector 4096 -> 4096 -> 256 and predictor
4096 -> 256 without biases, crops from 0.2, BYOL's asymmetric blur and solarization.

`--config=configs/in1k.py:METHOD,smoke` (every config file takes `:METHOD`, from
simlap.config_schema.METHODS, plus its own variants) runs a few steps of a tiny model (tests
use it under `tfds.testing.mock_data`). The dataset needs the ImageNet tars in `dataset.manual_dir`
(see docs/usage.md, "Training datasets").
"""
from __future__ import annotations
import ml_collections

from simlap import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  method, variants = config_schema.parse_config_arg(arg, variants=("smoke",))
  smoke = "smoke" in variants
  c = config_schema.base_config()
  c.dataset.name = "imagenet2012"
  c.dataset.num_classes = 1000
  c.dataset.image_size = 224
  c.dataset.channels = 3
  c.dataset.eval_split = "validation"
  c.dataset.shuffle_buffer = 50_000
  c.model.backbone = "resnet50"
  c.model.stem = "imagenet"
  c.model.dtype = "bfloat16"
  c.model.projector_hidden = (2048, 2048)
  c.model.projector_dim = 256
  for view in (c.augment.view1, c.augment.view2):
    view.crop_scale = (0.08, 1.0)
    view.jitter_prob = 0.8
    view.brightness, view.contrast, view.saturation, view.hue = 0.4, 0.4, 0.4, 0.1
    view.grayscale_prob = 0.2
    view.blur_prob = 0.5
  c.augment.eval_crop_fraction = 0.875
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.num_epochs = 1000.0
  c.optimizer.name = "lars"
  c.optimizer.lr = 0.2
  c.optimizer.lr_scaling = "none"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 40.0
  c.optimizer.probe_lr = 1e-3
  c.loss.temperature = 0.1
  c.log_every = 100
  c.eval_every = 25_000
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 3
  if method in ("hydra", "moco"):
    momentum_encoder_recipe(c)

  if smoke:
    smoke_variant(c)
  return config_schema.apply_method(c, method)


def momentum_encoder_recipe(c: ml_collections.ConfigDict) -> None:
  """MoCo-v3's ResNet-50 recipe, which the authors' v1 (Hydra-MoCo) trains: in place."""
  c.model.projector_hidden = (4096, 4096)
  c.model.predictor_hidden = (4096,)
  c.model.projector_bias = False
  c.batch_size = 4096
  c.num_epochs = 300.0
  c.optimizer.lr = 0.3
  c.optimizer.lr_scaling = "linear"
  c.optimizer.weight_decay = 1.5e-6
  c.optimizer.warmup_epochs = 10.0
  c.loss.temperature = 0.15
  c.moco.momentum = 0.99
  for view in (c.augment.view1, c.augment.view2):
    view.crop_scale = (0.2, 1.0)
    view.saturation = 0.2
  # BYOL's asymmetric views: always blur the first, rarely blur and sometimes solarize the second.
  c.augment.view1.blur_prob, c.augment.view1.solarize_prob = 1.0, 0.0
  c.augment.view2.blur_prob, c.augment.view2.solarize_prob = 0.1, 0.2


def smoke_variant(c: ml_collections.ConfigDict) -> None:
  """`:smoke`: a few steps of a tiny model on (mocked) data, wiring not learning; in place."""
  c.model.backbone = "resnet_tiny"
  c.model.dtype = "float32"
  c.model.projector_hidden = (32,)
  c.model.projector_dim = 16
  c.gate.embed_dim = 16
  c.gate.hidden_dim = 32
  c.dataset.image_size = 32
  c.dataset.shuffle_buffer = 64
  c.augment.eval_crop_fraction = 1.0
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_steps = 3
  c.optimizer.warmup_epochs = 0.0
  c.log_every = 1
  c.checkpoint_every = 2
