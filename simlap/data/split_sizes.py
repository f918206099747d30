"""The train and eval split sizes of the datasets simlap knows, for tools that take shapes from
the config alone (the compile-only fit check, `simlap.aot`) and read no dataset.

No TensorFlow here: a lookup must not pay for importing it.
"""
from __future__ import annotations

from typing import NamedTuple


class SplitSizes(NamedTuple):
  train: int
  eval: int


SIZES: dict[str, SplitSizes] = {
    "imagenet2012": SplitSizes(1_281_167, 50_000),
    "imagenette": SplitSizes(9_469, 3_925),
    "cifar10": SplitSizes(50_000, 10_000),
    "cifar100": SplitSizes(50_000, 10_000),
    "fashion_mnist": SplitSizes(60_000, 10_000),
    "fashion_mnist_local": SplitSizes(60_000, 10_000),
    "mnist": SplitSizes(60_000, 10_000),
}
