"""simlap against the PyTorch reference implementations, on fixtures they produced.

tests/golden/make_golden.py (run where torch, timm and torchvision are installed; see
tests/golden/README.md) saved random-init weights of reduced-width timm resnet18 (deep stem,
output stride 8), torchvision resnet50 and the authors' projector, gate and linear head, with
fixed inputs and PyTorch's outputs. Here the weights go through `simlap.convert` (no torch)
and simlap's modules must give the same eval-mode outputs, train-mode outputs and running
means, to ~1e-5.

Running variances: PyTorch updates them with the unbiased batch variance (x n/(n-1), n the
values per channel), Flax with the biased one. simlap keeps Flax's rule; the tests pin the exact
relation, so the difference is known, not drift: new_flax = m old + (new_torch - m old)(n-1)/n.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from configs import default as default_config
from simlap.interop import convert
from simlap.training import init_from
from simlap.models import gates as gates_lib
from simlap.models import heads
from simlap.models import model as model_lib
from simlap.models import resnet
from simlap.models import vit

GOLDEN = pathlib.Path(__file__).parent / "golden"
MOMENTUM = 0.9  # Flax's decay = 1 - PyTorch's momentum 0.1
TOL = 1e-5


def load(name: str) -> dict[str, np.ndarray]:
  return st_numpy.load_file(str(GOLDEN / f"{name}.safetensors"))


def part(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def assert_close(actual, expected, what: str, tol: float = TOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  # Relative to the output's scale: deep nets sum many float32 products in another order.
  err = rel_err(actual, expected)
  assert err < tol, f"{what}: max error {err:.2e} (relative to the output's scale)"


def rel_err(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected))
               / max(1.0, float(np.max(np.abs(expected)))))


def train_tol(tensors: dict[str, np.ndarray], output: str) -> float:
  """TOL, or 3x PyTorch's own float32 error against its float64 run where that is larger.

  A train-mode BatchNorm over few values per channel (the last stage of the ResNet-50 fixture
  averages 8) amplifies rounding: there PyTorch's float32 output is ~7e-5 from exact, so no
  float32 implementation can agree with it to 1e-5.
  """
  return max(TOL, 3 * rel_err(tensors[f"train/{output}"], tensors[f"train64/{output}"]))


def converted_stats(tensors: dict[str, np.ndarray], which: str) -> dict:
  """The fixture's running statistics `which` ("after/" or "count/") in simlap's layout,
  mapped by the same rules as the weights (their names replace the state dict's)."""
  sd = part(tensors, "sd/")
  for key in [k for k in sd if k.endswith(("running_mean", "running_var"))]:
    module = key.rsplit(".", 1)[0]
    if which == "after/":
      sd[key] = tensors[f"after/{key}"]
    else:
      sd[key] = np.full_like(sd[key], tensors[f"count/{module}"])
  return convert.to_simlap(sd)[1]


def check_running_stats(tensors, before, after, what, modules, tol=TOL):
  """Means equal PyTorch's; variances equal PyTorch's with the n/(n-1) factor removed.
  `before`/`after` map each of `modules` to its statistics."""
  torch_after = converted_stats(tensors, "after/")
  counts = converted_stats(tensors, "count/")
  torch_after, counts = ({m: t[m] for m in modules} for t in (torch_after, counts))
  flat = lambda t: dict(jax.tree_util.tree_leaves_with_path(t))  # noqa: E731
  old, new, ref, n = flat(before), flat(after), flat(torch_after), flat(counts)
  assert set(new) == set(ref), what
  for path in new:
    name = f"{what}{jax.tree_util.keystr(path)}"
    if path[-1].key == "mean":
      assert_close(new[path], ref[path], name, tol)
    else:
      expected = MOMENTUM * old[path] + (ref[path] - MOMENTUM * old[path]) * (n[path] - 1) / n[path]
      assert_close(new[path], expected, name, tol)


def run_backbone(name: str, **model_overrides):
  tensors = load(name)
  params, stats, modules = convert.to_simlap(part(tensors, "sd/"))
  assert modules == ["backbone"]
  config = default_config.get_config()
  config.model.update(model_overrides)
  net = resnet.build_backbone(**config.model)
  x = nhwc(tensors["input"])
  variables = {"params": params["backbone"], "batch_stats": stats["backbone"]}
  fresh = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), x)
  init_from.check_same_layout(fresh, variables, name)  # every variable mapped, none extra
  apply = jax.jit(net.apply, static_argnames="train", inline=True)
  assert_close(apply(variables, x, train=False), tensors["eval/features"], f"{name} eval")
  out, upd = jax.jit(functools.partial(net.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert_close(out, tensors["train/features"], f"{name} train", train_tol(tensors, "features"))
  # The statistics come from the same activations, with the same rounding.
  check_running_stats(tensors, {"backbone": stats["backbone"]},
                      {"backbone": upd["batch_stats"]}, name, ["backbone"],
                      train_tol(tensors, "features"))


def test_timm_resnet18_deep_stem_output_stride_8():
  run_backbone("timm_resnet18_deep_os8", backbone="resnet18", width=0.125, stem="timm_deep",
               output_stride=8)


def test_torchvision_resnet50():
  run_backbone("torchvision_resnet50", backbone="resnet50", width=0.0625, stem="imagenet")


def test_authors_projector_gate_and_head():
  tensors = load("authors_heads")
  params, stats, modules = convert.to_simlap(part(tensors, "sd/"))
  assert modules == ["gate", "probe", "projector"]
  feats = tensors["input"]
  y1, y2 = (tensors[k].astype(np.int32) for k in ("labels", "pair_labels"))
  var = lambda name: {"params": params[name], "batch_stats": stats[name]}  # noqa: E731
  projector = heads.Projector(hidden=(128,), out_dim=32)
  gate = gates_lib.GateTable(num_classes=10, dim=32, embed_dim=64, hidden_dim=128)
  probe = heads.LinearHead(10)
  assert_close(projector.apply(var("projector"), feats, train=False),
               tensors["eval/embeddings"], "projector eval")
  assert_close(gate.apply(var("gate"), y1, y2, train=False), tensors["eval/gates"], "gate eval")
  # The authors' head has no BatchNorm: simlap's probe gets one that is the identity in eval.
  assert_close(probe.apply(var("probe"), feats, train=False), tensors["eval/probe_logits"],
               "linear head eval")
  out, upd = projector.apply(var("projector"), feats, train=True, mutable=["batch_stats"])
  assert_close(out, tensors["train/embeddings"], "projector train",
               train_tol(tensors, "embeddings"))
  g, gupd = gate.apply(var("gate"), y1, y2, train=True, mutable=["batch_stats"])
  assert_close(g, tensors["train/gates"], "gate train", train_tol(tensors, "gates"))
  after = {"projector": upd["batch_stats"], "gate": gupd["batch_stats"]}
  check_running_stats(tensors, {k: stats[k] for k in after}, after, "heads", list(after))
  # The documented difference is real at this batch (64 pairs): Flax's running variance of the
  # gate's first BatchNorm is below PyTorch's by the Bessel term.
  torch_var = converted_stats(tensors, "after/")["gate"]["bn1"]["var"]
  gap = np.max(np.abs(gupd["batch_stats"]["bn1"]["var"] - torch_var) / torch_var)
  assert 1e-4 < gap < 1e-2, gap


def test_authors_whole_model_through_simlap_model():
  tensors = load("authors_simlap_tiny")
  config = default_config.get_config()
  config.dataset.channels = 1
  config.model.update(backbone="resnet18", width=0.0625, stem="timm_deep", output_stride=8,
                      projector_hidden=(64,), projector_dim=16)
  config.gate.update(embed_dim=16, hidden_dim=32)
  model = model_lib.build_model(config.model, config.gate, 10)
  x, y = nhwc(tensors["input"]), tensors["labels"].astype(np.int32)
  params, stats, modules = convert.to_simlap(part(tensors, "sd/"))
  assert modules == ["backbone", "gate", "probe", "projector"]
  variables = {"params": params, "batch_stats": stats}
  fresh = jax.eval_shape(functools.partial(model.init, train=False),
                         {"params": jax.random.key(0), "gate": jax.random.key(1)}, x, y, y)
  init_from.check_same_layout(fresh, variables, "authors_simlap_tiny")
  out = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.asarray(x), y, y)
  for name in ("features", "embeddings", "probe_logits", "gates"):
    assert_close(out[name], tensors[f"eval/{name}"], name)


def test_moco_v3_vit():
  tensors = load("moco_vit_tiny")
  sd = part(tensors, "sd/")
  config = default_config.get_config()
  config.model.backbone = "vit_tiny"
  convert.check_position_embedding(sd, config.model, 28)  # MoCo-v3's table is simlap's
  params, _, modules = convert.to_simlap(sd)
  assert modules == ["backbone"]
  net = vit.build_vit("vit_tiny")
  x = nhwc(tensors["input"])
  fresh = jax.eval_shape(net.init, jax.random.key(0), x)
  init_from.check_same_layout(fresh["params"], params["backbone"], "moco_vit_tiny")
  out = jax.jit(net.apply)({"params": params["backbone"]}, x)
  assert_close(out, tensors["eval/features"], "ViT eval")
  assert_close(out, tensors["train/features"], "ViT train")  # no BatchNorm, no dropout
  bad = dict(sd, **{"base_encoder.pos_embed": sd["base_encoder.pos_embed"] + 0.1})
  with pytest.raises(ValueError, match="not simlap's fixed sin-cos table"):
    convert.check_position_embedding(bad, config.model, 28)


def test_unmapped_and_missing_keys_are_named():
  sd = part(load("authors_heads"), "sd/")
  with pytest.raises(KeyError, match=r"'filter\.extra\.weight'"):
    convert.to_simlap({**sd, "filter.extra.weight": np.zeros((2, 2), np.float32)})
  params, stats, _ = convert.to_simlap({k: v for k, v in sd.items()
                                        if k != "filter.mlp.2.bias"})
  gate = gates_lib.GateTable(num_classes=10, dim=32, embed_dim=64, hidden_dim=128)
  fresh = jax.eval_shape(functools.partial(gate.init, train=False), jax.random.key(0),
                         np.zeros(2, np.int32), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="gate/fc1/bias: missing from the source"):
    init_from.check_same_layout(fresh["params"], params["gate"], "gate")
  del stats
