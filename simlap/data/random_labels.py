"""The random-label control: a fixed random relabelling of the train split, class sizes kept.

    new_label[i] = label[pi(i)],   pi = `permutation`(seed, n)

over the global example index i of `config.dataset.train_split` (TFDS's unshuffled order). The
table depends on the config seed and the split's labels only, not on the process count, NumPy's
random streams or the resume step. Every process builds the whole table and takes its own slice
(`process_labels`), which is why this runs on the loaded arrays, not in the jitted step.
"""
from __future__ import annotations
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from simlap.data import datasets

_TAG = 0x52414E44  # "RAND": keeps this stream apart from other uses of the seed


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser on uint64 (wrapping arithmetic): a bijective, well-mixed hash."""
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permutation(seed: int, n: int) -> np.ndarray:
  """(n,) int64 permutation of range(n), a pure function of (seed, n): argsort of h(seed, j),
  h SplitMix64 on (seed, tag, j) in NumPy's wrapping uint64 arithmetic."""
  with np.errstate(over="ignore"):
    base = _splitmix64(np.asarray([(int(seed) << 32) ^ _TAG], np.uint64))[0]
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ base)
  return np.argsort(keys, kind="stable")


def relabel(labels: np.ndarray, seed: int) -> np.ndarray:
  """(n,) labels permuted over the examples by `permutation(seed, n)`; same dtype, same counts."""
  labels = np.asarray(labels)
  return labels[permutation(seed, len(labels))]


def process_labels(builder: Any, config: Any, process_index: int, process_count: int
                   ) -> np.ndarray:
  """The random labels of this process's slice of the train split (`split_for_jax_process`).

  Reads the whole split's labels (the arrays are cached by `datasets.load_arrays`), relabels
  them with `config.seed`, and returns rows [start, start + n_p) where start counts the
  examples of the processes before this one: even splits are contiguous and in order.
  """
  d = config.dataset
  everything = datasets.load_arrays(builder, d.train_split, d, False)["label"]
  table = relabel(everything, config.seed)
  sizes = [datasets.num_examples(builder, tfds.split_for_jax_process(
      d.train_split, process_index=p, process_count=process_count))
           for p in range(process_index + 1)]
  start = sum(sizes[:-1])
  return table[start:start + sizes[-1]]
