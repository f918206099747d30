"""simlap.models.pooling.max_pool against nn.max_pool: equal outputs and gradients, with ties."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap.models import pooling


def _with_ties(shape):
  """ReLU'd normals (many zero ties) with positive values repeated inside windows."""
  x = np.array(jax.nn.relu(jax.random.normal(jax.random.key(0), shape)))
  x[:, 2, 2, :] = x[:, 3, 1, :] = x[:, 1, 3, :] = 5.0  # one value at 3 places of one 3x3 window
  x[:, 0, 0, :] = x[:, 0, 1, :] = 7.0  # a tie that two overlapping windows see
  return jnp.asarray(x)


@pytest.mark.parametrize("window,strides,padding,size", [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (7, 8)),  # the timm/torchvision stem pool
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (6, 6)),
    ((3, 2), (1, 2), ((1, 0), (0, 1)), (5, 6)),
])
def test_output_and_gradient_equal_nn_max_pool(window, strides, padding, size):
  x = _with_ties((2, *size, 3))
  probe = jax.random.normal(jax.random.key(1), nn.max_pool(x, window, strides, padding).shape)

  @jax.jit
  def both(x, probe):
    def loss(x, pool):
      y = pool(x)
      return jnp.sum(y * probe), y
    return [jax.grad(loss, has_aux=True)(x, pool) for pool in (
        lambda x: pooling.max_pool(x, window, strides, padding),
        lambda x: nn.max_pool(x, window, strides, padding))]

  (grad, out), (ref_grad, ref_out) = both(x, probe)
  np.testing.assert_array_equal(out, ref_out)
  # Ties: the gradient goes to the first maximum of each window, as nn.max_pool sends it; a pool
  # that split it between the tied elements would differ at the repeated 5.0 and 7.0.
  np.testing.assert_array_equal(grad, ref_grad)


def test_ties_take_the_first_maximum():
  x = jnp.zeros((1, 3, 3, 1)).at[0, 0, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)
  grad = jax.grad(lambda x: jnp.sum(pooling.max_pool(x, (3, 3), (1, 1), ((0, 0), (0, 0)))))(x)
  assert grad[0, 0, 2, 0] == 1.0 and grad[0, 2, 0, 0] == 0.0
