"""Tests for simlap.models: backbones, heads, gate table, the assembled SimLAPModel.

Everything runs at tiny widths on CPU; big backbones are only traced with `jax.eval_shape`.
"""
from __future__ import annotations
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from simlap import config_schema
from simlap.models import gates as gates_lib
from simlap.models import heads
from simlap.models import resnet
from simlap.models import model as model_lib

C, D = 7, 16  # classes, embedding/gate dimension in the tiny test models


def _key(seed: int) -> jax.Array:
  # "rbg" keys: threefry's unrolled hash makes each parameter initialiser cost seconds of XLA
  # compile time on 2 shared CPU cores; the models are impl-agnostic (they only split/fold keys).
  return jax.random.key(seed, impl="rbg")


def _tiny_config(**gate_overrides):
  config = default_config.get_config()
  config.model.backbone = "resnet_tiny"
  config.model.projector_hidden = (32,)
  config.model.projector_dim = D
  config.gate.embed_dim = 8
  config.gate.hidden_dim = 16
  config.gate.update(gate_overrides)
  return config


def _images(batch=6, size=8, channels=1, seed=0):
  return jax.random.normal(_key(seed), (batch, size, size, channels))


def _labels(batch=6, seed=1):
  k1, k2 = jax.random.split(_key(seed))
  return (jax.random.randint(k1, (batch,), 0, C), jax.random.randint(k2, (batch,), 0, C))


def _init(model, images, y1=None, y2=None):
  rngs = {"params": _key(0), "gate": _key(1)}
  # jit: one compilation is much cheaper on 2 shared cores than eager op-by-op dispatch.
  return jax.jit(functools.partial(model.init, train=False))(rngs, images, y1, y2)


def _table(**kw):
  kw = dict(num_classes=C, dim=D, embed_dim=8, hidden_dim=16) | kw
  return gates_lib.GateTable(**kw)


def _init_table(table, batch=6):
  y1, y2 = _labels(batch)
  return table.init({"params": _key(0), "gate": _key(1)}, y1, y2,
                    train=False)


def _trained_stats(table, variables, steps=2):
  """Runs the table in training mode so batch_stats move away from their (0, 1) init."""
  for s in range(steps):
    y1, y2 = _labels(12, seed=10 + s)
    _, upd = table.apply(variables, y1, y2, train=True, mutable=["batch_stats"],
                         rngs={"gate": _key(s)})
    variables = {**variables, **upd}
  return variables


@pytest.fixture(scope="module")
def tiny():
  """The tiny SimLAPModel, its init variables and the variables after one training step.

  Shared by the model tests: each jit compilation of the full network costs seconds on 2 CPUs.
  """
  config = _tiny_config()
  model = model_lib.build_model(config.model, config.gate, C)
  x = _images()
  y1, y2 = _labels()

  @jax.jit  # init and one training step in one compilation
  def init_and_step(x, y1, y2):
    variables = model.init({"params": _key(0), "gate": _key(1)}, x, y1, y2, train=False)
    return variables, *model.apply(variables, x, y1, y2, train=True, mutable=["batch_stats"])

  init_variables, out, upd = init_and_step(x, y1, y2)
  return dict(model=model, x=x, y1=y1, y2=y2, init_variables=init_variables, out=out,
              variables={**init_variables, **upd})


# ---------------------------------------------------------------- backbones


def test_resnet_tiny_runs_cifar_deep_stem():
  # The "cifar" stem runs in the `tiny` fixture, "imagenet" in the eval_shape test below.
  config = _tiny_config()
  config.model.stem = "cifar_deep"
  net = resnet.build_backbone(**config.model)
  x = _images(size=12)

  @jax.jit
  def init_and_run(x):
    variables = net.init(_key(0), x, train=False)
    return variables, *net.apply(variables, x, train=True, mutable=["batch_stats"])

  variables, feats, upd = init_and_run(x)
  assert feats.shape == (6, resnet.feature_dim(**config.model)) == (6, 32)
  assert feats.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(feats)))
  assert set(upd) == {"batch_stats"}
  n = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert 10_000 < n < 40_000, n  # "~20k parameters"


@pytest.mark.parametrize("name,stem,width,size,expected", [
    ("resnet18", "cifar_deep", 1.0, 32, 512),
    ("resnet18", "timm_deep", 1.0, 32, 512),
    ("resnet18", "cifar", 0.5, 32, 256),
    ("resnet_tiny", "imagenet", 1.0, 32, 32),
    ("resnet34", "imagenet", 1.0, 64, 512),
    ("resnet50", "imagenet", 1.0, 64, 2048),
    ("resnet_small", "cifar", 1.0, 28, 64),
])
def test_backbone_shapes_eval_shape(name, stem, width, size, expected):
  config = _tiny_config()
  config.model.update(dict(backbone=name, stem=stem, width=width))
  net = resnet.build_backbone(**config.model)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(net.init, train=False), _key(0), x)
  out = jax.eval_shape(functools.partial(net.apply, train=False), variables, x)
  assert out.shape == (2, expected) and out.dtype == jnp.float32
  assert resnet.feature_dim(**config.model) == expected


def _stage_maps(config, size):
  """Spatial side of every block's output, in order, from shapes alone."""
  net = resnet.build_backbone(**config.model)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(net.init, train=False), _key(0), x)
  _, state = jax.eval_shape(functools.partial(net.apply, train=False,
                                              capture_intermediates=True), variables, x)
  inter = state["intermediates"]
  return {k: v["__call__"][0].shape[1] for k, v in inter.items() if k.startswith("stage")}


def test_authors_cifar_network_geometry():
  # timm resnet18(stem_type="deep", output_stride=8): stride-4 stem, stages 3-4 dilated.
  assert resnet.stage_geometry(4, 4, 8) == [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 4, 2)]
  assert resnet.stage_geometry(4, 4, 16) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 2, 1)]
  assert resnet.stage_geometry(4, 4, 32) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]
  assert resnet.stage_geometry(3, 1, 32) == [(1, 1, 1), (2, 1, 1), (2, 1, 1)]
  config = _tiny_config()
  config.model.update(dict(backbone="resnet18", stem="timm_deep", output_stride=8))
  maps = _stage_maps(config, 32)
  assert [maps[f"stage{i}_block1"] for i in (1, 2, 3, 4)] == [8, 4, 4, 4]
  config.model.update(dict(stem="cifar_deep", output_stride=32))
  maps = _stage_maps(config, 32)
  assert [maps[f"stage{i}_block1"] for i in (1, 2, 3, 4)] == [32, 16, 8, 4]


def test_authors_cifar_network_param_count():
  # timm.create_model("resnet18", stem_type="deep", output_stride=8, num_classes=0): its stem
  # is 3 -> 64 -> 64 -> 128 (timm's default stem_width 64), and block 1 of stage 1 gets a
  # 128 -> 64 projection; counted with timm 1.0.31.
  config = _tiny_config()
  config.model.update(dict(backbone="resnet18", stem="timm_deep", output_stride=8))
  net = resnet.build_backbone(**config.model)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(net.init, train=False), _key(0), x)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == 11_324_992


def test_pixel_normalisation_is_applied_before_the_backbone(tiny):
  mean, std = (0.3,), (0.5,)
  normalised = model_lib.SimLAPModel(**{f: getattr(tiny["model"], f) for f in (
      "backbone", "projector", "gate", "probe")}, pixel_mean=mean, pixel_std=std)
  x = tiny["x"]
  got = normalised.apply(tiny["init_variables"], x, method="encode")
  want = tiny["model"].apply(tiny["init_variables"], (x - 0.3) / 0.5, method="encode")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  config = _tiny_config()
  config.model.update(dict(pixel_mean=(0.1, 0.2), pixel_std=(1.0, 1.0)))  # 1-channel data
  with pytest.raises(ValueError, match="pixel_mean=.*dataset.channels=1"):
    config_schema.validate(config)


def test_resnet50_param_count():
  # torchvision's ResNet-50 trunk without fc has 23,508,032 parameters.
  config = _tiny_config()
  config.model.update(dict(backbone="resnet50", stem="imagenet"))
  net = resnet.build_backbone(**config.model)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(net.init, train=False), _key(0), x)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == 23_508_032


def test_unknown_backbone_and_stem_raise():
  config = _tiny_config()
  config.model.backbone = "resnet9000"
  with pytest.raises(ValueError):
    resnet.build_backbone(**config.model)
  config.model.backbone, config.model.stem = "resnet_tiny", "nope"
  with pytest.raises(ValueError):
    resnet.build_backbone(**config.model).init(_key(0), _images(), train=False)


def test_last_bn_gamma_zero_in_every_block(tiny):
  params = tiny["init_variables"]["params"]["backbone"]
  blocks = [k for k in params if k.startswith("stage")]
  assert len(blocks) == 3
  for b in blocks:
    np.testing.assert_array_equal(params[b]["BatchNorm_1"]["scale"], 0.0)  # last BN of branch
    np.testing.assert_array_equal(params[b]["BatchNorm_0"]["scale"], 1.0)
  # The bottleneck block's last BN is checked in test_block_is_identity_at_init.


@pytest.mark.parametrize("block_cls,features,last_bn", [(resnet.BasicBlock, 4, "BatchNorm_1"),
                                                         (resnet.BottleneckBlock, 1,
                                                          "BatchNorm_2")])
def test_block_is_identity_at_init(block_cls, features, last_bn):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  block = block_cls(features, conv=conv, norm=norm)
  x = jax.random.normal(_key(0), (2, 5, 5, 4))

  @jax.jit
  def init_and_run(x):
    variables = block.init(_key(1), x)
    return variables, block.apply(variables, x)

  variables, y = init_and_run(x)
  assert "proj_conv" not in variables["params"]  # identity shortcut
  np.testing.assert_array_equal(variables["params"][last_bn]["scale"], 0.0)
  np.testing.assert_array_equal(variables["params"]["BatchNorm_0"]["scale"], 1.0)
  # Zero last-BN gamma (and beta): the residual branch is 0, the identity shortcut passes x.
  np.testing.assert_allclose(y, jax.nn.relu(x), atol=1e-6)


def test_bfloat16_params_float32_outputs_close(tiny):
  config16 = _tiny_config()
  config16.model.dtype = "bfloat16"
  m16 = model_lib.build_model(config16.model, config16.gate, C)
  variables = tiny["init_variables"]
  assert jax.tree.leaves(jax.eval_shape(  # bf16 init still makes float32 variables
      functools.partial(m16.init, train=False), {"params": _key(0)}, tiny["x"], tiny["y1"],
      tiny["y2"])) == jax.tree.leaves(jax.eval_shape(lambda: variables))
  o16, u16 = jax.jit(functools.partial(m16.apply, train=True, mutable=["batch_stats"]))(
      variables, tiny["x"], tiny["y1"], tiny["y2"])
  o32 = tiny["out"]  # same variables and inputs, float32 compute
  for key in ("features", "embeddings", "probe_logits"):
    assert o16[key].dtype == jnp.float32, key
    rel = jnp.linalg.norm(o16[key] - o32[key]) / jnp.linalg.norm(o32[key])
    assert 0 < rel < 0.05, (key, float(rel))  # bf16 keeps ~3 significant digits
  # The gate table ignores the compute dtype: label -> gate is float32 end to end.
  np.testing.assert_array_equal(o16["gates"], o32["gates"])
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(u16))


# ---------------------------------------------------------------- heads


def test_projector_layernorm_last():
  proj = heads.Projector(hidden=(32, 32), out_dim=D)
  f = jax.random.normal(_key(0), (5, 12)) * 3 + 1

  @jax.jit
  def init_and_run(f):
    variables = proj.init(_key(1), f, train=False)
    return variables, proj.apply(variables, f, train=True, mutable=["batch_stats"])[0]

  variables, z = init_and_run(f)
  assert set(variables["params"]) == {"dense0", "bn0", "dense1", "bn1", "out", "norm"}
  assert "bias" not in variables["params"]["out"]
  assert z.shape == (5, D) and z.dtype == jnp.float32
  # LayerNorm output (default scale 1, bias 0): zero mean, unit variance per row.
  np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.var(-1), 1.0, atol=1e-3)


def test_probe_head_standardises_features():
  """The probe's affine-free BN: training logits ignore the features' scale and offset (so a
  probe on tiny pooled features learns as fast as on unit-scale ones), and at inference the head
  is one fixed affine map of the features, i.e. still a linear probe."""
  head = heads.LinearHead(C)
  f = jax.random.normal(_key(0), (16, 12))

  @jax.jit
  def run(f):
    variables = head.init(_key(1), f)
    logits, updates = head.apply(variables, f, train=True, mutable=["batch_stats"])
    return variables, logits, updates["batch_stats"]

  variables, logits, stats = run(f)
  assert set(variables["params"]) == {"fc"} and "bn" in variables["batch_stats"]
  for scale, offset in ((0.1, 5.0), (30.0, -2.0)):  # (BN's eps 1e-5 bounds how small)
    np.testing.assert_allclose(run(scale * f + offset)[1], logits, rtol=1e-3, atol=2e-3)
  # Inference: logits(a * f1 + (1 - a) * f2) is the same combination of the two logits.
  infer = jax.jit(lambda x: head.apply({**variables, "batch_stats": stats}, x))
  f2 = jax.random.normal(_key(2), (16, 12))
  np.testing.assert_allclose(infer(0.3 * f + 0.7 * f2), 0.3 * infer(f) + 0.7 * infer(f2),
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(infer(f), head.apply(variables, f))  # the running statistics are used


# ---------------------------------------------------------------- gates


@pytest.mark.parametrize("train", [False, True])
def test_mean_fuse_is_symmetric(train):
  table = _table()
  variables = _trained_stats(table, _init_table(table))
  y1, y2 = _labels(9, seed=3)
  g = lambda a, b: table.apply(variables, a, b, train=train, mutable=["batch_stats"])[0]  # noqa
  gab, gba = g(y1, y2), g(y2, y1)
  assert gab.shape == (9, D) and gab.dtype == jnp.float32
  np.testing.assert_allclose(gab, gba, rtol=1e-6, atol=1e-6)
  assert not np.allclose(gab, g(y1, y1))  # and it does depend on the pair


def test_open_gate_is_all_ones_without_params():
  table = _table(kind="open")
  variables = _init_table(table)
  assert not jax.tree.leaves(variables)
  y1, y2 = _labels()
  g = table.apply(variables, y1, y2, train=True)
  np.testing.assert_array_equal(g, np.ones((6, D), np.float32))
  np.testing.assert_array_equal(table.apply(variables, method="class_gates"), 1.0)
  np.testing.assert_array_equal(gates_lib.pair_matrix(table, variables, chunk_size=3), D)


def test_product_fuse_is_product_of_class_sigmoids():
  table = _table(fuse="product")
  variables = _trained_stats(table, _init_table(table))
  y1, y2 = _labels(9, seed=4)
  emb = variables["params"]["embedding"]

  def per_class(y):  # sigma(f(E[y])) with BatchNorm in inference mode
    return jax.nn.sigmoid(table.apply(variables, emb[y], train=False, method="logits"))

  g = table.apply(variables, y1, y2, train=False)
  np.testing.assert_allclose(g, per_class(y1) * per_class(y2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(table.apply(variables, method="class_gates"),
                             per_class(jnp.arange(C)) ** 2, rtol=1e-5, atol=1e-6)


def test_gate_penalty_values():
  np.testing.assert_allclose(gates_lib.gate_penalty(jnp.full((3, 4), 0.5)), np.log(2.0),
                             rtol=1e-6)
  binary = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  assert float(gates_lib.gate_penalty(binary)) < 1e-4
  grad = jax.grad(gates_lib.gate_penalty)(jnp.array([0.2, 0.5, 0.9]))
  # dH/dg = log((1 - g) / g) / N: pushes g < 0.5 down and g > 0.5 up.
  np.testing.assert_allclose(grad, np.log([4.0, 1.0, 1 / 9]) / 3, rtol=1e-5, atol=1e-7)


def test_gate_penalty_has_gradient_through_model(tiny):
  model, variables = tiny["model"], tiny["variables"]

  def penalty(params):  # the same GateTable call as the "gates" output of __call__
    g, _ = model.apply({**variables, "params": params}, tiny["y1"], tiny["y2"], train=True,
                       method="gates", mutable=["batch_stats"])
    return gates_lib.gate_penalty(g)

  grads = jax.jit(jax.grad(penalty))(variables["params"])
  for path in (("embedding",), ("fc1", "kernel"), ("fc2", "kernel")):
    leaf = functools.reduce(lambda t, k: t[k], path, grads["gate"])
    assert float(jnp.abs(leaf).max()) > 0, path


def test_analysis_leaves_batch_stats_untouched(tiny):
  model, variables, y1, y2 = tiny["model"], tiny["variables"], tiny["y1"], tiny["y2"]
  before = jax.tree.map(np.asarray, variables["batch_stats"])
  # Sanity: a training-mode gate call *does* move the gate statistics, so the checks below
  # can fail.
  _, moved = model.apply(variables, y2, y1, train=True, method="gates",
                         mutable=["batch_stats"])
  assert not np.allclose(moved["batch_stats"]["gate"]["bn1"]["mean"],
                         before["gate"]["bn1"]["mean"])

  cg, after = model.apply(variables, method="class_gates", mutable=["batch_stats"])
  assert cg.shape == (C, D)
  jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], before)
  pg, after = model.apply(variables, y1, y2, method="pair_gates", mutable=["batch_stats"])
  assert pg.shape == (6, D)
  jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], before)
  # Without `mutable` any write would raise; pair_matrix must work read-only.
  gates_lib.pair_matrix(model, variables, chunk_size=4)
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], before)


@pytest.mark.parametrize("fuse", ["mean", "product"])
def test_chunked_pair_matrix_matches_unchunked(fuse):
  table = _table(fuse=fuse)
  variables = _trained_stats(table, _init_table(table))
  i, j = np.meshgrid(np.arange(C), np.arange(C), indexing="ij")
  full = table.apply(variables, i.ravel(), j.ravel(), method="pair_gates")  # (C*C, D)
  expected = np.asarray(full.sum(-1)).reshape(C, C)
  for chunk in (3, C):  # 3 does not divide C: exercises the padding
    got = gates_lib.pair_matrix(table, variables, chunk_size=chunk)
    assert got.shape == (C, C)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  frac = gates_lib.pair_matrix(table, variables, chunk_size=3,
                               stat=lambda g: jnp.mean(g > 0.5, axis=-1))
  np.testing.assert_allclose(frac, np.asarray((full > 0.5).mean(-1)).reshape(C, C))
  if fuse == "mean":
    np.testing.assert_allclose(expected, expected.T, rtol=1e-5)
  # Diagonal = class gates.
  np.testing.assert_allclose(np.diag(expected),
                             table.apply(variables, method="class_gates").sum(-1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["gumbel", "stochastic"])
def test_noisy_gates(kind):
  table = _table(kind=kind, tau=2.0)
  variables = _trained_stats(table, _init_table(table))
  y1, y2 = _labels(9, seed=5)

  def train_gates(seed):
    out, _ = table.apply(variables, y1, y2, train=True, mutable=["batch_stats"],
                         rngs={"gate": _key(seed)})
    return out

  g0, g0b, g1 = train_gates(0), train_gates(0), train_gates(1)
  for g in (g0, g1):
    assert g.dtype == jnp.float32 and bool(jnp.all((g >= 0) & (g <= 1)))
  np.testing.assert_array_equal(g0, g0b)  # same key, same noise
  assert not np.allclose(g0, g1)  # different keys, different noise
  # Eval: no rng needed, deterministic, and the documented noise-free formula.
  e0 = table.apply(variables, y1, y2, train=False)
  e1 = table.apply(variables, y1, y2, train=False, rngs={"gate": _key(7)})
  np.testing.assert_array_equal(e0, e1)
  emb = variables["params"]["embedding"]
  logits = table.apply(variables, (emb[y1] + emb[y2]) / 2, train=False, method="logits")
  expected = jax.nn.sigmoid(logits / 2.0) if kind == "gumbel" else jnp.clip(logits + 0.5, 0, 1)
  np.testing.assert_allclose(e0, expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(g0, e0)


def test_unknown_gate_kind_raises():
  with pytest.raises(ValueError):
    _init_table(_table(kind="bogus"))
  with pytest.raises(ValueError):
    _init_table(_table(fuse="bogus"))


# ---------------------------------------------------------------- SimLAPModel


def test_build_model_reads_config():
  config = _tiny_config(kind="stochastic", fuse="product", tau=0.5, noise_std=0.25)
  config.model.probe_stop_gradient = False
  model = model_lib.build_model(config.model, config.gate, C)
  assert (model.gate.kind, model.gate.fuse, model.gate.tau) == ("stochastic", "product", 0.5)
  assert model.gate.noise_std == 0.25 and model.predictor is None
  assert (model.gate.dim, model.gate.embed_dim, model.gate.hidden_dim) == (D, 8, 16)
  assert model.projector.hidden == (32,) and model.projector.out_dim == D
  assert model.backbone.widths == (8, 16, 32) and not model.probe_stop_gradient
  assert model.probe.num_classes == C == model.num_classes


@pytest.mark.parametrize("section,field", [("gate", "noise_std"), ("model", "dtype"),
                                           ("model", "stem"), ("model", "predictor_hidden")])
def test_a_missing_field_fails_naming_it(section, field):
  # The schema holds every default: the model builds nothing from a fallback of its own.
  config = _tiny_config()
  del config[section][field]
  with pytest.raises((KeyError, AttributeError, TypeError), match=field):
    model_lib.build_model(config.model, config.gate, C, predictor=True)


def test_model_outputs(tiny):
  model, variables, x = tiny["model"], tiny["variables"], tiny["x"]
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"backbone", "projector", "gate", "probe"}
  shapes = {k: (v.shape, v.dtype) for k, v in tiny["out"].items()}
  assert shapes == {"features": ((6, 32), jnp.float32), "embeddings": ((6, D), jnp.float32),
                    "probe_logits": ((6, C), jnp.float32), "gates": ((6, D), jnp.float32)}
  assert bool(jnp.all((tiny["out"]["gates"] > 0) & (tiny["out"]["gates"] < 1)))
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert set(out) == {"features", "embeddings", "probe_logits"}  # no labels, no gates
  feats = jax.eval_shape(functools.partial(model.apply, method="encode"), variables, x)
  assert (feats.shape, feats.dtype) == ((6, 32), jnp.float32)
  np.testing.assert_array_equal(
      model.apply(variables, tiny["y1"], tiny["y2"], train=False, method="gates"),
      model.apply(variables, tiny["y1"], tiny["y2"], method="pair_gates"))


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_probe_stop_gradient(tiny, stop_gradient):
  config = _tiny_config()
  config.model.probe_stop_gradient = stop_gradient
  model = model_lib.build_model(config.model, config.gate, C)
  x, y1, variables = tiny["x"], tiny["y1"], tiny["variables"]

  def probe_loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    logp = jax.nn.log_softmax(out["probe_logits"])
    return -jnp.mean(jnp.take_along_axis(logp, y1[:, None], axis=1))

  grads = jax.jit(jax.grad(probe_loss))(variables["params"])
  backbone_max = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["backbone"]))
  if stop_gradient:
    assert backbone_max == 0.0
  else:
    assert backbone_max > 0.0
  assert float(jnp.abs(grads["probe"]["fc"]["kernel"]).max()) > 0.0
