"""Optimizers and learning-rate schedules, all from optax; derived values computed here.

The online linear probe has its own Adam (its own learning rate), so a probe that merely
watches the representation never changes how the backbone is trained.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adam_l2", "sgd", "lars")
LR_SCALINGS = ("none", "linear")
SCHEDULES = ("cosine", "constant")


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """config.optimizer.lr, times batch/256 when the recipe scales it (`lr_scaling="linear"`)."""
  o = config.optimizer
  return o.lr * (config.batch_size / 256 if o.lr_scaling == "linear" else 1.0)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """config.num_steps if set, else num_epochs epochs of `num_train // batch_size` steps."""
  if config.num_steps > 0:
    return int(config.num_steps)
  if not config.num_epochs > 0:
    raise ValueError(f"set num_steps > 0 or num_epochs > 0 (got {config.num_epochs})")
  return max(1, math.ceil(config.num_epochs * steps_per_epoch(config.batch_size, num_train)))


def steps_per_epoch(batch_size: int, num_train: int) -> int:
  """The one definition of an epoch: num_train // batch_size steps (the ragged last batch is
  dropped), at least 1. Step counts, warm-ups and reports of epochs all go through it."""
  return max(1, num_train // batch_size)


def epochs_to_steps(config: ml_collections.ConfigDict, epochs: float, num_train: int) -> int:
  """A span given in epochs (warm-ups), in steps, rounded to the nearest."""
  return int(round(epochs * steps_per_epoch(config.batch_size, num_train)))


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int
                           ) -> optax.Schedule:
  """Linear warmup from 0 over warmup_epochs, then cosine to 0 (or constant)."""
  peak = peak_learning_rate(config)
  steps = total_steps(config, num_train)
  warmup = min(steps - 1, epochs_to_steps(config, config.optimizer.warmup_epochs, num_train))
  warmup = max(0, warmup)
  if config.optimizer.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=0.0)
  if config.optimizer.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(1, warmup)),
                                 optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"optimizer.schedule={config.optimizer.schedule!r} is not 'cosine' or "
                   "'constant'")


def decay_mask(params: Any) -> Any:
  """True for weight matrices and kernels; biases and norm scales/offsets (1-D) are exempt,
  from weight decay and from LARS's trust ratio, as in SimCLR/BYOL."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _main_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                    ) -> optax.GradientTransformation:
  o = config.optimizer
  if o.name == "adamw":
    return optax.adamw(schedule, weight_decay=o.weight_decay, mask=decay_mask)
  if o.name == "adam_l2":  # coupled L2 (torch Adam's weight_decay), the authors' CIFAR recipe
    return optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask), optax.adam(schedule))
  if o.name == "sgd":
    return optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                       optax.sgd(schedule, momentum=o.momentum, nesterov=False))
  if o.name == "lars":
    return optax.lars(schedule, weight_decay=o.weight_decay, weight_decay_mask=decay_mask,
                      trust_ratio_mask=decay_mask, momentum=o.momentum)
  raise ValueError(f"optimizer.name={o.name!r} is not one of {OPTIMIZERS}")


def make_optimizer(config: ml_collections.ConfigDict, num_train: int, *,
                   separate_probe: bool) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The train optimizer; with `separate_probe`, params["model"]["probe"] get their own Adam.

  Params are {"model": flax params, ...extra leaves such as "log_scale"}.
  """
  schedule = learning_rate_schedule(config, num_train)
  # A frozen ViT patch projection (model.freeze_patch_embed: stop-gradient in the model) also
  # gets no update at all, not even weight decay: it stays at its random init, as in MoCo-v3.
  frozen = "patch_embed" if config.model.freeze_patch_embed else None
  if separate_probe and not config.optimizer.probe_lr > 0:
    raise ValueError(f"optimizer.probe_lr must be positive, got {config.optimizer.probe_lr}")
  if not separate_probe and frozen is None:
    return _main_optimizer(config, schedule), schedule

  def labels(params):
    def label(path):
      keys = [getattr(k, "key", None) for k in path]
      if separate_probe and "probe" in keys:
        return "probe"
      return "frozen" if frozen in keys else "main"
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [label(path) for path, _ in flat])

  transforms = {"main": _main_optimizer(config, schedule), "frozen": optax.set_to_zero()}
  if separate_probe:
    transforms["probe"] = optax.adam(config.optimizer.probe_lr)
  return optax.multi_transform(transforms, labels), schedule
