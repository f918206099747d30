"""`python -m simlap.convert` end to end: an authors'-format checkpoint -> a workdir that
`simlap.evaluate` scores and `--config.init_from` trains from.

The source is tests/golden/authors_simlap_tiny.safetensors: the authors' SimLAP model (timm
resnet18, deep stem, output stride 8, at 1/16 width on 1 channel; projector; gate; linear head)
with random weights, written by tests/golden/make_golden.py.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from unittest import mock

import jax
import numpy as np
import pytest
from absl import flags
from safetensors import numpy as st_numpy

from simlap import config_schema
from simlap import convert
from simlap.interop import convert as convert_lib
from simlap import evaluate
from simlap.training import init_from
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from test_compare import REPO
from test_compare import tiny_overrides

FIXTURE = pathlib.Path(__file__).parent / "golden" / "authors_simlap_tiny.safetensors"
# The fixture's model, on configs/default.py's Fashion-MNIST (1 channel, 10 classes).
MODEL_OVERRIDES = ["--config.model.backbone=resnet18", "--config.model.width=0.0625",
                   "--config.model.stem=timm_deep", "--config.model.output_stride=8",
                   "--config.model.projector_hidden=(64,)", "--config.model.projector_dim=16",
                   "--config.gate.embed_dim=16", "--config.gate.hidden_dim=32"]



def parse(argv, define, **kw):
  fv = flags.FlagValues()
  define(fv, **kw)
  fv(argv)
  return fv


def convert_argv(data_dir, source, workdir):
  # tiny_overrides' own model fields give way to the fixture's (one flag per field).
  mine = {flag.split("=")[0] for flag in MODEL_OVERRIDES}
  tiny = [flag for flag in tiny_overrides(data_dir) if flag.split("=")[0] not in mine]
  return ["simlap.convert", f"--config={REPO}/configs/default.py", f"--source={source}",
          f"--workdir={workdir}", *tiny, *MODEL_OVERRIDES]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
  """The fixture's state dict alone: a checkpoint file as the authors' code saves it."""
  path = str(tmp_path_factory.mktemp("source") / "authors_simlap.safetensors")
  tensors = st_numpy.load_file(str(FIXTURE))
  st_numpy.save_file({k.removeprefix("sd/"): v for k, v in tensors.items()
                      if k.startswith("sd/")}, path)
  return path


@pytest.fixture(scope="module")
def converted(fmnist_data_dir, source, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("convert") / "authors")
  argv = convert_argv(fmnist_data_dir, source, workdir)
  fv = parse(argv, convert.define_flags, sys_argv=argv)
  meta = convert.main(["simlap.convert"], fv)
  return workdir, fv.config, meta, source


def test_converted_checkpoint_evaluates(converted):
  workdir, _, meta, _ = converted
  assert meta["converted"] == ["backbone", "gate", "probe", "projector"]
  fv = parse(["simlap.evaluate", f"--workdir={workdir}", "--linear_epochs=2", "--noplots"],
             evaluate.define_flags)
  res = evaluate.main(["simlap.evaluate"], fv)
  assert res["step"] == 0 and os.path.exists(os.path.join(workdir, "eval", "results.json"))
  s = res["summary"]
  for key in ("knn_20", "linear", "few_shot_5", "online_probe"):
    assert 0.0 <= s[key] <= 1.0, (key, s[key])
  assert res["analysis"]["gates"]["dim"] == 16


def test_init_from_loads_the_converted_modules_with_a_fresh_optimizer(converted):
  workdir, config, _, source = converted
  config = config.copy_and_resolve_references()
  config.init_from = workdir
  config.seed = 1  # the fresh init differs from the converter's, so loading is visible
  mesh = sharding.make_mesh(config.mesh)
  info = datasets.info_from_config(config, num_train=2048)
  fresh = train.make_trainer(config, mesh, info).init_fn()
  state = init_from.maybe_load(config, fresh)
  params, stats, _ = convert_lib.to_simlap(convert_lib.read_state_dict(source))
  for module in ("backbone", "projector", "gate"):
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params["model"][module]),
                                 jax.tree.leaves(params[module])):
      np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
  np.testing.assert_array_equal(np.asarray(state.batch_stats["gate"]["bn1"]["var"]),
                                stats["gate"]["bn1"]["var"])
  assert int(state.step) == 0
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state)
             if np.issubdtype(np.asarray(x).dtype, np.floating))
  # The sharding of every leaf is the fresh state's: the step's in_shardings accept it.
  assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(state),
                                                      jax.tree.leaves(fresh)))


def test_init_from_starts_the_key_encoder_from_the_loaded_weights(converted):
  workdir, config, _, _ = converted
  config = config_schema.apply_method(config.copy_and_resolve_references(), "hydra")
  config.init_from = workdir
  config.model.predictor_hidden = (16,)
  fresh = train.make_trainer(config, sharding.make_mesh(config.mesh),
                             datasets.info_from_config(config, num_train=2048)).init_fn()
  state = init_from.maybe_load(config, fresh)
  for part in ("backbone", "projector"):  # EMA = query side at step 0, as when training starts
    for got, want in zip(jax.tree.leaves((state.momentum["params"][part],
                                          state.momentum["batch_stats"].get(part, {}))),
                         jax.tree.leaves((state.params["model"][part],
                                          state.batch_stats.get(part, {})))):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert not np.array_equal(jax.tree.leaves(fresh.momentum["params"]["backbone"])[0],
                            jax.tree.leaves(state.momentum["params"]["backbone"])[0])


def test_init_from_names_what_does_not_fit(converted):
  workdir, config, _, source = converted
  config = config.copy_and_resolve_references()
  config.init_from = workdir
  config.model.projector_dim = 32  # the source's projector and gate are 16 wide
  config.gate.embed_dim = 16
  fresh = train.make_trainer(config, sharding.make_mesh(config.mesh),
                             datasets.info_from_config(config, num_train=2048)).init_fn()
  with pytest.raises(ValueError, match=r"params/gate/fc2/kernel: source shape \(32, 16\) "
                                       r"!= model shape \(32, 32\)"):
    init_from.maybe_load(config, fresh)


def test_train_starts_from_init_from(converted, tmp_path):
  workdir, config, _, source = converted
  config = config.copy_and_resolve_references()
  config.init_from = workdir
  config.num_steps = 1
  with mock.patch.object(init_from, "load", wraps=init_from.load) as load:
    summary = train.train_and_evaluate(config, str(tmp_path / "finetune"))
  load.assert_called_once()
  assert load.call_args.args[0] == workdir and summary["step"] == 1


def test_pickled_checkpoint_without_torch_says_what_to_do(tmp_path):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed here")
  path = tmp_path / "model.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match="torch is not installed.*safetensors"):
    convert_lib.read_state_dict(str(path))


def test_npz_source_equals_safetensors(source, tmp_path):
  sd = convert_lib.read_state_dict(source)
  np.savez(tmp_path / "m.npz", **{f"module.{k}": v for k, v in sd.items()})  # DDP names
  a = convert_lib.to_simlap(sd)
  b = convert_lib.to_simlap(convert_lib.read_state_dict(str(tmp_path / "m.npz")))
  assert a[2] == b[2]
  for x, y in zip(jax.tree.leaves(a[:2]), jax.tree.leaves(b[:2])):
    np.testing.assert_array_equal(x, y)
