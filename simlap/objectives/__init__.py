"""The training objectives, one registry: `get(config.objective)` is all the trainer asks.

An objective is an `objectives.base.Objective`; its family module holds everything it needs.
Adding a method is one module (or a variant of an existing family) plus one line below.
"""
from __future__ import annotations

from simlap.objectives import base
from simlap.objectives import ce
from simlap.objectives import contrastive
from simlap.objectives import momentum

REGISTRY: dict[str, base.Objective] = {
    "simlap": contrastive.SimLAP(),
    "simclr": contrastive.SimCLR(),
    "simclr_cross_view": contrastive.SimCLR(same_view_negatives=False),  # MoCo-v3's negatives
    "supcon": contrastive.SupCon(),
    "xclr": contrastive.XCLR(),
    "ce": ce.CrossEntropy(),
    "moco": momentum.Momentum(),  # MoCo-v3 and, with moco.beta > 0, Hydra-MoCo
}
OBJECTIVES = tuple(REGISTRY)


def get(name: str) -> base.Objective:
  """The objective registered as `name` (config.objective)."""
  if name not in REGISTRY:
    raise ValueError(f"config.objective={name!r} is not one of {OBJECTIVES}")
  return REGISTRY[name]
