"""Known class hierarchies as two-level trees (root -> group -> class) and their distances.

A tree is a tuple of (group name, class indices) nodes; it lives with its dataset's metadata
(e.g. `fashion_mnist.CLASS_TREE`). The tree distance between two classes is 0 for the same
class, 1 within a group and 2 across groups: the matrix d of "selective" class pairs
(`losses.sample_pair_labels`, `config.loss.pair_kind = "selective"`).
"""
from __future__ import annotations

import numpy as np

from simlap.data import fashion_mnist

ClassTree = tuple[tuple[str, tuple[int, ...]], ...]
# Dataset name (config.dataset.name) -> its class tree. TFDS's own "fashion_mnist" has the same
# class order as the embedded builder.
TREES: dict[str, ClassTree] = {fashion_mnist.NAME: fashion_mnist.CLASS_TREE,
                               "fashion_mnist": fashion_mnist.CLASS_TREE}


def tree_distances(tree: ClassTree, num_classes: int) -> np.ndarray:
  """(C, C) float32 tree distances: 0 same class, 1 same group, 2 otherwise.

  A class in no node is a group of its own (distance 2 to every other class). Raises if a
  class index is outside [0, C) or appears in two nodes.
  """
  group = np.arange(num_classes) + len(tree)  # ungrouped classes: a group id each, past the tree
  seen: set[int] = set()
  for g, (name, members) in enumerate(tree):
    for c in members:
      if not 0 <= c < num_classes or c in seen:
        raise ValueError(f"class tree node {name!r}: class {c} is outside [0, {num_classes}) "
                         "or in two nodes")
      seen.add(c)
      group[c] = g
  same_group = group[:, None] == group[None, :]
  d = np.where(same_group, 1.0, 2.0)
  np.fill_diagonal(d, 0.0)
  return d.astype(np.float32)


def dataset_distances(dataset_name: str, num_classes: int) -> np.ndarray:
  """(C, C) tree distances of `dataset_name`'s class tree; a clear error if it has none."""
  if dataset_name not in TREES:
    raise ValueError(f"config.loss.pair_kind='selective' needs a class tree, and dataset "
                     f"{dataset_name!r} has none (datasets with one: {sorted(TREES)})")
  return tree_distances(TREES[dataset_name], num_classes)
