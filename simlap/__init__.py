"""simlap: SimLAP contrastive learning from arbitrary class pairs, in JAX/Flax."""
__version__ = "0.1.0"
