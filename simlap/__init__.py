"""simlap: SimLAP contrastive learning from arbitrary class pairs, in JAX/Flax."""
from __future__ import annotations
__version__ = "0.1.0"
