"""Cross-entropy: the supervised baseline. Its objective is the linear head itself, trained
through the backbone on both views (no stop-gradient, one optimizer for everything)."""
from __future__ import annotations

import jax.numpy as jnp

from simlap.objectives import base


class CrossEntropy(base.Objective):
  """CE of the linear head on both views, with the labels the objective is given."""

  probe_is_objective = True

  def validate(self, config):
    super().validate(config)
    if config.model.probe_stop_gradient:
      raise ValueError("config.objective='ce' trains through the linear head: set "
                       "config.model.probe_stop_gradient=False")

  def loss(self, params, stats, *, config, model, batch, pair_labels, gate_rng, context):
    del config, pair_labels, context
    labels = batch["label"]
    out, updates = base.both_views(params, stats, model, batch, None, gate_rng)
    ce, accuracy = base.probe_loss(out["probe_logits"], jnp.concatenate([labels, labels]))
    return ce, (ce, {"probe_loss": ce, "probe_accuracy": accuracy}, updates["batch_stats"])
