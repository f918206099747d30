"""The analyses of a restored run (`evaluation.analysis`) on its test split: gate tables from the
model, known class groups from the dataset, results.json's "analysis" section (+ PNGs).

Gates exist only where the objective trains them (`objectives.trains_gates`: simlap, or moco
with a gated term, and a non-open gate); otherwise every gate entry is null. Host-side: the test
rows are on the host already, the gate tables are small (C x D, C x C, C x C x D).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simlap import objectives
from simlap.data import fashion_mnist
from simlap.evaluation import analysis
from simlap.evaluation import geometry
from simlap.models import gates as gates_lib

FASHION_MNIST_NAMES = (fashion_mnist.NAME, "fashion_mnist")
_PAIR_GATES_MAX_CLASSES = 100  # (C, C, D) pair gates are materialised only for small C


def gate_tables(config, model, state, num_classes: int):
  """(class gates (C, D), pair sizes (C, C), pair gates (C, C, D) or None), or all None.

  BatchNorm runs in inference mode (the gate module's analysis methods), read-only.
  """
  if not objectives.get(config.objective).trains_gates(config):
    return None, None, None
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  class_gates = jax.jit(lambda v: model.apply(v, method="class_gates"))(variables)
  sizes = jax.jit(lambda v: gates_lib.pair_matrix(model, v, num_classes))(variables)
  pair = None
  if num_classes <= _PAIR_GATES_MAX_CLASSES:
    y = jnp.arange(num_classes, dtype=jnp.int32)
    pair = jax.jit(lambda v: model.apply(v, jnp.repeat(y, num_classes), jnp.tile(y, num_classes),
                                         method="pair_gates"))(variables)
    pair = np.asarray(pair).reshape(num_classes, num_classes, -1)
  return np.asarray(class_gates), np.asarray(sizes), pair


def known_groups(config, test: dict[str, np.ndarray]):
  """(groups, source) for group recovery: Fashion-MNIST's tops/footwear, CIFAR-100-style
  coarse labels when the data carry "coarse_label", else (None, None)."""
  if config.dataset.name in FASHION_MNIST_NAMES:
    return [list(g) for g in fashion_mnist.GROUPS], "fashion_mnist tops/footwear"
  if "coarse_label" in test:
    return analysis.coarse_groups(test["labels"], test["coarse_label"]), "coarse_label"
  return None, None


def analyze_test_split(config, model, state, test: dict[str, np.ndarray], *, num_classes: int,
                       class_names: Sequence[str], num_pairs: int,
                       png_dir: str | None) -> dict[str, Any]:
  """results.json's "analysis": `analysis.analyze` of the test rows ("backbone" (N, F),
  "projector" (N, D), "labels" (N,), extra label keys), plus "group_source" and, with pair
  gates, the pair-gated similarity; PNGs into `png_dir` (None: none)."""
  class_gates, pair_sizes, pair_gates = gate_tables(config, model, state, num_classes)
  groups, group_source = known_groups(config, test)
  feats = {"backbone": test["backbone"], "projector": test["projector"]}
  ana = analysis.analyze(feats, test["labels"], num_classes=num_classes, class_gates=class_gates,
                         pair_sizes=pair_sizes, gated_features="projector",
                         class_names=list(class_names), groups=groups,
                         num_pairs=num_pairs, seed=0, out_dir=png_dir)
  ana["group_source"] = group_source
  if pair_gates is not None:
    # Inter-class pairs compared in their own pair subspace g(y_i, y_j): the subspace in
    # which the loss pulls arbitrary pairs together, so a low AUROC here is by design.
    stats = geometry.intra_inter_similarity(test["projector"], test["labels"], gates=pair_gates,
                                            num_pairs=num_pairs, seed=0)
    ana["similarity"]["projector_pair_gated"] = analysis.jsonable(stats)
    if png_dir:
      from simlap.evaluation import plots as plots_lib  # noqa: PLC0415 - matplotlib only for pictures
      plots_lib.plot_intra_inter(stats, os.path.join(png_dir, "intra_inter_projector_pair_gated"
                                                     ".png"), title="projector_pair_gated")
      ana["plots"].append("intra_inter_projector_pair_gated.png")
  return ana
