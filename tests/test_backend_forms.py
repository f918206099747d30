"""The CPU forms (cpu_conv, pooling.max_pool) are chosen for CPU compiles only.

Selected by the platform's name, so no TPU or GPU is needed to test the choice: a TPU or GPU
program built from "auto" holds plain XLA convolutions and `reduce_window` max pools.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from simlap import config_schema
from simlap.models import model as model_lib
from simlap.models import pooling
from simlap.models import resnet


@pytest.mark.parametrize("platform,expected", [
    ("cpu", "cpu"), ("tpu", "xla"), ("cuda", "xla"), ("rocm", "xla"), ("gpu", "xla")])
def test_auto_picks_the_cpu_forms_for_cpu_compiles_only(platform, expected):
  assert resnet.resolve_conv_impl("auto", platform) == expected
  for explicit in ("xla", "cpu"):  # an explicit choice is kept on every platform
    assert resnet.resolve_conv_impl(explicit, platform) == explicit


def test_auto_without_a_platform_follows_the_default_backend():
  assert resnet.resolve_conv_impl("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")


def _config(backbone="resnet_tiny", stem="imagenet"):
  config = config_schema.base_config()
  config.model.backbone, config.model.stem = backbone, stem
  config.model.projector_hidden, config.model.projector_dim = (16,), 8
  config.gate.embed_dim, config.gate.hidden_dim = 8, 8
  return config


@pytest.mark.parametrize("platform,impl", [("tpu", "xla"), ("cuda", "xla"), ("cpu", "cpu")])
def test_build_model_resolves_auto_against_the_target_platform(platform, impl):
  config = _config()
  model = model_lib.build_model(config.model, config.gate, 3, platform=platform)
  assert model.backbone.conv_impl == impl


@pytest.mark.parametrize("stem", ["imagenet", "timm_deep"])
def test_the_xla_program_has_the_xla_pool_and_the_cpu_program_the_cpu_pool(stem, monkeypatch):
  """The gradient of a pooled stem: `select_and_scatter_add` under "xla", none under "cpu"."""
  calls = []
  real = pooling.max_pool
  monkeypatch.setattr(pooling, "max_pool", lambda *a: calls.append(1) or real(*a))
  x = jnp.ones((2, 16, 16, 3))

  def grad_jaxpr(impl):
    net = resnet.ResNet(stage_sizes=(1,), widths=(4,), stem=stem, stem_width=4, conv_impl=impl)
    variables = net.init(jax.random.key(0), x, train=False)
    loss = lambda v, x: net.apply(v, x, train=False).sum()  # noqa: E731
    return str(jax.make_jaxpr(jax.grad(loss, argnums=1))(variables, x))

  calls.clear()
  xla = grad_jaxpr("xla")
  assert not calls and "select_and_scatter_add" in xla and "reduce_window_max" in xla
  calls.clear()
  cpu = grad_jaxpr("cpu")
  assert calls and "select_and_scatter_add" not in cpu and "reduce_window" not in cpu
