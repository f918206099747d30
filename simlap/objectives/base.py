"""What every objective is made of, and the pieces they share.

An `Objective` is a few small functions that `simlap.training.step` calls in a fixed order:
`pair_labels` -> `prepare` -> `loss` (differentiated) -> `after_update`. The defaults are those
of an objective with no pair labels, no extra state and no after-update step, so a family
overrides only what it changes. `TwoViewObjective` is the family that sees both views in one
forward pass and scores the embeddings with `embedding_loss`.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simlap import losses
from simlap.data import class_trees
from simlap.models import lowrank

Config = ml_collections.ConfigDict


class Objective:
  """The interface; an instance is one registry entry (`simlap.objectives.REGISTRY`)."""

  predictor: bool = False  # the model carries MoCo-v3's query-side predictor
  probe_is_objective: bool = False  # the loss trains through the linear head (one optimizer)

  def validate(self, config: Config) -> None:
    """Raises ValueError naming the field when `config` cannot run this objective."""
    if config.gate.kind == lowrank.KIND:
      raise ValueError(f"config.gate.kind='lowrank' needs config.objective='simlap' (got "
                       f"{config.objective!r})")

  def trains_gates(self, config: Config) -> bool:
    """Whether the loss learns the gate table (evaluation reads gates only then)."""
    del config
    return False

  def pair_labels(self, config: Config, rng: jax.Array, labels: jax.Array,
                  num_classes: int) -> jax.Array | None:
    """y2 (B,) for the gates g(y, y2), or None when the loss has none; labels (B,)."""
    del config, rng, labels, num_classes
    return None

  def init_state(self, state_class: type, fields: dict[str, Any], variables: dict[str, Any]):
    """The train state at step 0 from its common `fields`; an objective with more state (the
    momentum encoder) returns its own subclass of `state_class`."""
    del variables
    return state_class(**fields)

  def reset_after_load(self, state: Any) -> Any:
    """`state` after new weights were loaded into it (config.init_from)."""
    return state

  def step_constants(self, config: Config, num_steps: int, num_train: int) -> Any:
    """Python values the step closes over (schedules); computed once per run."""
    del config, num_steps, num_train
    return None

  def prepare(self, state: Any, batch: dict[str, jax.Array], *, model, constants: Any,
              shardings: Any) -> Any:
    """What the loss needs besides the trained params, computed before the gradient."""
    del state, batch, model, constants, shardings
    return None

  def loss(self, params: dict[str, Any], stats: dict[str, Any], *, config: Config, model,
           batch: dict[str, jax.Array], pair_labels: jax.Array | None, gate_rng: jax.Array,
           context: Any) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array], Any]]:
    """(loss + probe loss, (loss, metrics, new batch_stats)), to differentiate w.r.t. params
    ({"model", maybe "log_scale"})."""
    raise NotImplementedError

  def after_update(self, new_state: Any, state: Any, context: Any, keep, shardings: Any) -> Any:
    """`new_state` with the objective's own fields updated; `keep(new, old)` picks `old` when
    the step was not finite."""
    del state, context, keep, shardings
    return new_state


class TwoViewObjective(Objective):
  """Both views in one forward pass (BatchNorm over all 2B images, as in SimCLR); the loss is
  `embedding_loss` on the two views' embeddings, plus the stop-gradient online probe."""

  def embedding_loss(self, config: Config, z1: jax.Array, z2: jax.Array, labels: jax.Array,
                     pair_labels: jax.Array | None, gates: jax.Array | None,
                     scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, diagnostics) of embeddings z1, z2 (B, D) with labels (B,)."""
    raise NotImplementedError

  def loss(self, params, stats, *, config, model, batch, pair_labels, gate_rng, context):
    del context
    labels = batch["label"]
    num = labels.shape[0]
    out, updates = both_views(params, stats, model, batch, pair_labels, gate_rng)
    z1, z2 = out["embeddings"][:num], out["embeddings"][num:]
    # The online probe evaluates the features: it learns the true labels even when the
    # objective sees random ones (dataset.random_labels; the stream then carries both).
    probe_labels = batch.get("true_label", labels)
    probe_ce, probe_acc = probe_loss(out["probe_logits"],
                                     jnp.concatenate([probe_labels, probe_labels]))
    scale = logit_scale(config, params)
    loss, metrics = self.embedding_loss(config, z1, z2, labels, pair_labels, out.get("gates"),
                                        scale)
    metrics.update(probe_loss=probe_ce, probe_accuracy=probe_acc, logit_scale=scale)
    # The probe sees stop-gradient features: adding its loss trains only the probe.
    return loss + probe_ce, (loss, metrics, updates["batch_stats"])


def both_views(params, stats, model, batch: dict[str, jax.Array], pair_labels, gate_rng):
  """The model on view 1 then view 2 in one pass (BatchNorm over all 2B images): its outputs
  (2B rows) and the new batch_stats."""
  images = jnp.concatenate([batch["view1"], batch["view2"]])
  return model.apply({"params": params["model"], "batch_stats": stats}, images, batch["label"],
                     pair_labels, train=True, mutable=["batch_stats"], rngs={"gate": gate_rng})


def logit_scale(config: Config, params: dict) -> jax.Array:
  """s = 1 / temperature, or exp(learned log s) when loss.learn_scale."""
  if config.loss.learn_scale:
    return jnp.exp(params["log_scale"])
  return jnp.asarray(1.0 / config.loss.temperature, jnp.float32)


def probe_loss(probe_logits: jax.Array, labels2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and accuracy of the linear head; probe_logits (2B, C), labels2 (2B,)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(probe_logits, labels2).mean()
  accuracy = jnp.mean(jnp.argmax(probe_logits, axis=-1) == labels2)
  return ce, accuracy


def sample_pair_labels(config: Config, rng: jax.Array, labels: jax.Array,
                       num_classes: int) -> jax.Array:
  """y2 (B,) drawn by `config.loss.pair_kind` (`losses.sample_pair_labels`); "selective"
  draws by the dataset's class-tree distances."""
  loss = config.loss
  options = {}
  if loss.pair_kind == "selective":
    options = {"distances": jnp.asarray(class_trees.dataset_distances(config.dataset.name,
                                                                      num_classes)),
               "alpha": float(loss.selective_alpha),
               "max_level": loss.selective_max_level or None}
  return losses.sample_pair_labels(rng, labels, kind=loss.pair_kind, num_classes=num_classes,
                                   **options)


def check_selective(config: Config) -> None:
  """Selective pairs need alpha >= 0, an integer max_level >= 0 and the dataset's class tree."""
  loss = config.loss
  if loss.pair_kind != "selective":
    return
  alpha, level = loss.selective_alpha, loss.selective_max_level
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
      math.isfinite(alpha) and alpha >= 0):
    raise ValueError(f"config.loss.selective_alpha must be a number >= 0, got {alpha!r}")
  if isinstance(level, bool) or not isinstance(level, int) or level < 0:
    raise ValueError(f"config.loss.selective_max_level must be an integer >= 0 (0 = no "
                     f"cut-off, 1 = identical pairs only), got {level!r}")
  if config.dataset.name not in class_trees.TREES:
    raise ValueError(f"config.loss.pair_kind='selective' needs a class tree, and "
                     f"config.dataset.name={config.dataset.name!r} has none (datasets with one: "
                     f"{sorted(class_trees.TREES)})")


def simlap_loss_options(config: Config, scale: jax.Array) -> dict[str, Any]:
  """`losses.simlap_loss` keyword arguments from config.loss (SimLAP and the momentum
  objective's gated term)."""
  loss = config.loss
  return dict(scale=scale, variant=loss.variant, reduction=loss.reduction,
              chunk_size=loss.chunk_size or None)
