"""FSDP (ZeRO-3) state sharding: the layout rule, per-device memory, the same step as replicated
training, a compiled step that gathers weights and never activations, bitwise resume,
checkpoints moving between modes and meshes, evaluation of a sharded state, and the mesh and
mode set from the command line.

Everything runs on the 8 test devices with test_train's tiny model. `fsdp_min_size` is 16
elements there (the default, 2**16, would leave every leaf of a ~20k-parameter model replicated)
so that params, optimizer state and BatchNorm statistics each have sharded *and* replicated
leaves, and the tests check they really do.
"""
from __future__ import annotations

import os
import re

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from simlap.runtime import checkpointing
from simlap import config_schema
from simlap.evaluation import bank as bank_lib
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.runtime import workdir as workdir_lib
from simlap.data import datasets
from simlap.data import train_stream
from test_reliability import assert_trees_equal
from test_train import tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))
MIN_SIZE = 16  # elements: the tiny model's 8-channel BatchNorm vectors stay replicated


def config_for(data_dir: str, mode: str, **overrides) -> ml_collections.ConfigDict:
  # Plain SGD at lr 0.1 (momentum starts at zero): after one step p - lr * grad, so params
  # compare gradients directly, with no Adam normalisation to blow up round-off in tiny grads.
  return tiny_config(data_dir, **{"optimizer.name": "sgd", "optimizer.lr": 0.1,
                                  "sharding.params": mode, "sharding.fsdp_min_size": MIN_SIZE,
                                  **overrides})


def is_sharded(leaf) -> bool:
  return leaf.sharding.spec != P()


def device0_bytes(tree) -> int:
  """Bytes the first device holds for `tree` (its own shard, or a whole replicated leaf)."""
  device = jax.devices()[0]
  return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
             if s.device == device)


def restore(config, directory: str, devices=None):
  """(state, trainer) of the newest checkpoint in `directory`, laid out as `config` says, on a
  mesh over `devices` (default all)."""
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  ckpt = checkpointing.Checkpointer(directory, every_steps=1, keep=9)
  try:
    state, _, _ = ckpt.restore(trainer.abstract_state)
  finally:
    ckpt.close()
  return state, trainer


# ------------------------------------------------------------------------------------------------
# The layout rule.
# ------------------------------------------------------------------------------------------------
def test_fsdp_rule_shards_large_leaves_along_their_largest_divisible_dim(num_devices):
  mesh = sharding.make_mesh()
  spec = lambda shape, min_size=0: sharding.fsdp_spec(shape, mesh, min_size)  # noqa: E731
  assert spec((3, 3, 64, 128)) == P(None, None, None, "data")  # largest dim, divisible by 8
  assert spec((36, 24, 16)) == P(None, "data")  # 36 is larger but does not split over 8
  assert spec((16, 16)) == P(None, "data")  # a tie goes to the last (output) dimension
  assert spec((3, 3, 64, 128), min_size=73_729) == P()  # 73,728 elements: under the threshold
  assert spec((3, 3, 64, 128), min_size=73_728) == P(None, None, None, "data")  # at it: split
  assert spec((10, 7)) == spec((3, 3, 1, 1)) == spec((4,)) == P()  # nothing divisible by 8
  assert spec(()) == P()  # scalars
  # Over every mesh axis at once, exactly as the batch is split.
  mesh2 = sharding.make_mesh((("data", 2), ("x", 4)))
  assert sharding.fsdp_spec((16, 12), mesh2, 0) == P(("data", "x")) == sharding.batch_spec(mesh2)

  tree = {"w": jax.ShapeDtypeStruct((512, 256), np.float32),
          "b": jax.ShapeDtypeStruct((256,), np.float32),
          "step": jax.ShapeDtypeStruct((), np.int32)}
  replicated = sharding.state_shardings(tree, mesh, "replicated", 0)
  assert all(s.spec == P() for s in jax.tree.leaves(replicated))
  fsdp = sharding.state_shardings(tree, mesh, "fsdp", 2**16)  # the default threshold
  assert fsdp["w"].spec == P("data") and fsdp["b"].spec == fsdp["step"].spec == P()
  assert fsdp["w"].shard_shape((512, 256)) == (512 // num_devices, 256)
  with pytest.raises(ValueError, match="zero3"):
    sharding.state_shardings(tree, mesh, "zero3", 0)


# ------------------------------------------------------------------------------------------------
# One step under each mode, shared by the tests below.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stepped(fmnist_data_dir):
  """{mode: (trainer, state before, state after one step, loss)} on the same batch."""
  mesh = sharding.make_mesh()
  config = config_for(fmnist_data_dir, "replicated")
  batch = jax.device_get(next(train_stream.train_iterator(config, mesh, seed=0)))
  out = {}
  for mode in ("replicated", "fsdp"):
    config = config_for(fmnist_data_dir, mode)
    trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
    before = jax.device_get(trainer.init_fn())
    state, metrics = trainer.step_fn(jax.device_put(before, trainer.state_sharding),
                                     jax.device_put(batch, sharding.batch_sharding(mesh)))
    out[mode] = trainer, before, state, float(metrics["loss"])
  return out


def test_fsdp_state_is_sharded_and_smaller_per_device(stepped, num_devices):
  (_, _, rep, _), (trainer, _, fsdp, _) = stepped["replicated"], stepped["fsdp"]
  assert not any(is_sharded(x) for x in jax.tree.leaves(rep))
  # The step hands back the state in the layout it was given: sharded stays sharded.
  for leaf, want in zip(jax.tree.leaves(fsdp), jax.tree.leaves(trainer.state_sharding)):
    assert leaf.sharding == want
  for part in (fsdp.params, fsdp.opt_state, fsdp.batch_stats):
    flags_ = [is_sharded(x) for x in jax.tree.leaves(part)]
    assert any(flags_) and not all(flags_)  # both kinds present: the rule did not go vacuous
  # Each sharded leaf costs a device 1/n of its bytes; replicated ones cost it all.
  expected = sum(x.nbytes // num_devices if is_sharded(x) else x.nbytes
                 for x in jax.tree.leaves(fsdp))
  assert device0_bytes(fsdp) == expected
  assert device0_bytes(rep) == sum(x.nbytes for x in jax.tree.leaves(rep))
  # ~97% of this state is in sharded leaves: about n times less per device.
  assert device0_bytes(rep) > 0.75 * num_devices * device0_bytes(fsdp)


def test_fsdp_step_matches_replicated_step(stepped):
  (_, before_r, rep, loss_r), (_, before_f, fsdp, loss_f) = stepped["replicated"], stepped["fsdp"]
  assert_trees_equal(before_r, before_f)  # the same init, whatever the layout
  # The forward pass sees the same whole weights: the loss agrees to float32 round-off.
  np.testing.assert_allclose(loss_f, loss_r, rtol=1e-5)
  # After one SGD step params are p - 0.1 * grad. On this CPU backend both modes sum gradients
  # with the same all-reduce and agree bitwise; a backend that fuses FSDP's all-reduce + slice
  # into a reduce-scatter may sum in another order, off in the last bits (~1e-6 absolute, as in
  # test_train's 8-vs-1-device check, whose tolerance this is). A gradient summed over the
  # wrong devices or shard is off by orders of magnitude more (e.g. n times: caught here).
  for a, b in zip(jax.tree.leaves(jax.device_get(fsdp.params)),
                  jax.tree.leaves(jax.device_get(rep.params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)
  for a, b in zip(jax.tree.leaves(jax.device_get(fsdp.batch_stats)),
                  jax.tree.leaves(jax.device_get(rep.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def gathered_shapes(trainer, mesh, batch) -> set[str]:
  """Result shapes ("f32[3,3,8,8]") of every all-gather in the compiled train step."""
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
           for k, v in batch.items()}
  hlo = trainer.step_fn.lower(trainer.abstract_state, batch).compile().as_text()
  shapes = set()
  for line in hlo.splitlines():
    if m := re.search(r"= (.*?) all-gather(?:-start)?\(", line):
      shapes |= set(re.findall(r"\w+\[[\d,]*\]", m.group(1)))
  return shapes


def test_fsdp_step_gathers_weights_never_activations(stepped, fmnist_data_dir):
  """What FSDP moves is weights: every sharded weight and BN statistic is all-gathered whole,
  and nothing else is gathered that replicated training does not gather too (the loss's keys).
  Had XLA computed a gradient shard by gathering a layer's input over the batch (what it does if
  the gradient is constrained straight to its shard layout), that activation would show here."""
  mesh = sharding.make_mesh()
  batch = jax.device_get(next(train_stream.train_iterator(
      config_for(fmnist_data_dir, "fsdp"), mesh, seed=0)))
  (rep_trainer, _, _, _), (trainer, _, state, _) = stepped["replicated"], stepped["fsdp"]
  leaf_shapes = {f"{x.dtype.name.replace('float', 'f')}[{','.join(map(str, x.shape))}]"
                 for x in jax.tree.leaves((state.params, state.batch_stats)) if is_sharded(x)}
  fsdp = gathered_shapes(trainer, mesh, batch)
  assert leaf_shapes and leaf_shapes <= fsdp
  assert fsdp - leaf_shapes <= gathered_shapes(rep_trainer, mesh, batch)


# ------------------------------------------------------------------------------------------------
# Resume and checkpoints.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp_runs(fmnist_data_dir, tmp_path_factory):
  """(config, straight workdir, resumed workdir): 8 fsdp steps in one job and in two."""
  config = config_for(fmnist_data_dir, "fsdp")
  root = tmp_path_factory.mktemp("fsdp_runs")
  straight, resumed = str(root / "straight"), str(root / "resumed")
  assert train.train_and_evaluate(config, straight)["step"] == 8
  assert train.train_and_evaluate(config, resumed, stop_at=4)["preempted"]
  summary = train.train_and_evaluate(config, resumed)
  assert summary["step"] == 8 and summary["train_step_compilations"] == 1
  return config, straight, resumed


def test_fsdp_resume_is_bitwise(fsdp_runs):
  config, straight, resumed = fsdp_runs
  a, trainer = restore(config, os.path.join(straight, "checkpoints"))
  b, _ = restore(config, os.path.join(resumed, "checkpoints"))
  assert int(a.step) == int(b.step) == 8
  assert any(is_sharded(x) for x in jax.tree.leaves(b.params))  # restored sharded
  assert_trees_equal(jax.device_get(a), jax.device_get(b))
  # The workdir's config.json round-trips the mesh (as a tuple) and the mode.
  loaded = workdir_lib.load_config(resumed)
  assert loaded.mesh == (("data", -1),) and loaded.sharding.params == "fsdp"


def test_checkpoints_move_between_modes_and_meshes(stepped, fsdp_runs, tmp_path):
  config, _, resumed = fsdp_runs
  four = jax.devices()[:4]
  # Saved replicated on 8 devices -> restored as fsdp on 8.
  _, _, rep_state, _ = stepped["replicated"]
  ckpt = checkpointing.Checkpointer(str(tmp_path / "rep"), every_steps=1, keep=1)
  ckpt.save(1, rep_state, {"step": 1}, force=True)
  ckpt.close()
  restored, trainer = restore(config, str(tmp_path / "rep"))
  assert_trees_equal(jax.device_get(rep_state), jax.device_get(restored))
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(trainer.state_sharding)):
    assert leaf.sharding == want
  assert any(is_sharded(x) for x in jax.tree.leaves(restored))

  # Saved fsdp on 8 devices -> restored replicated, and fsdp, on a mesh of 4. The workdir
  # accepts those configs too (mode and mesh may change on resume).
  saved, _ = restore(config, os.path.join(resumed, "checkpoints"))
  for mode in ("replicated", "fsdp"):
    other = config_for(config.dataset.data_dir, mode, mesh=(("data", 4),))
    workdir_lib.check_resumable(other, resumed)
    moved, trainer = restore(other, os.path.join(resumed, "checkpoints"), devices=four)
    assert_trees_equal(jax.device_get(saved), jax.device_get(moved))
    for leaf, want in zip(jax.tree.leaves(moved), jax.tree.leaves(trainer.state_sharding)):
      assert leaf.sharding == want and set(leaf.sharding.device_set) == set(four)
    assert any(is_sharded(x) for x in jax.tree.leaves(moved)) == (mode == "fsdp")


def test_evaluation_of_a_sharded_state_matches_replicated(fsdp_runs):
  config, _, resumed = fsdp_runs
  out = {}
  for mode, devices in (("fsdp", None), ("replicated", jax.devices()[:4])):
    state, trainer = restore(config_for(config.dataset.data_dir, mode),
                             os.path.join(resumed, "checkpoints"), devices=devices)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    out[mode] = bank_lib.extract_features(config, trainer.model, state, mesh,
                                          config.dataset.eval_split)
  fsdp, rep = out["fsdp"], out["replicated"]
  assert fsdp["mask"].sum() == rep["mask"].sum() == 512
  np.testing.assert_array_equal(fsdp["labels"], rep["labels"])
  # The same weights on other devices: features agree to float32 round-off.
  np.testing.assert_allclose(fsdp["features"], rep["features"], rtol=1e-5, atol=1e-5)


def test_config_json_from_before_the_sharding_section_may_resume_under_fsdp():
  # Old workdirs have no "sharding" in config.json: its keys compare one by one, and may change.
  diff = workdir_lib.config_diff({"seed": 0}, {"seed": 0, "sharding": {"params": "fsdp"}})
  assert diff == ["sharding.params: None -> 'fsdp'"]
  assert diff[0].startswith(tuple(k + ":" for k in workdir_lib.RESUME_MAY_CHANGE))


# ------------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------------
def parse_flags(data_dir: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config `simlap.main` would get from `--config=... --config.KEY=VALUE ...`."""
  argv = ["simlap.main", f"--config={TESTS}/multiprocess_config.py:{data_dir}", *overrides]
  values = flags.FlagValues()
  # config_flags reads overrides from sys_argv (default sys.argv), as simlap.main defines it.
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("value,axes", [
    ("(('data',8),)", {"data": 8}),
    ("[('data',8)]", {"data": 8}),
    ("('data',8)", {"data": 8}),  # parsed flat; make_mesh reads it as pairs
    ("[('data',2),('model',-1)]", {"data": 2, "model": 4}),
])
def test_mesh_and_mode_from_the_command_line(fmnist_data_dir, num_devices, value, axes):
  config = parse_flags(fmnist_data_dir, f"--config.mesh={value}", "--config.sharding.params=fsdp",
                       "--config.sharding.fsdp_min_size=0")
  config_schema.validate(config)
  assert dict(sharding.make_mesh(config.mesh).shape) == axes
  assert config.sharding.params == "fsdp" and config.sharding.fsdp_min_size == 0
  assert config.model.backbone == "resnet_tiny"  # the rest is the file's tiny config


@pytest.mark.parametrize("override,message", [
    ("--config.mesh=data", r"config.mesh \('data',\): expected \(name, size\) pairs"),
    ("--config.mesh=(('data',-1),('x',-1))", "at most one axis may have size -1"),
    ("--config.sharding.params=zero3", "config.sharding.params='zero3' is not one of"),
    ("--config.sharding.fsdp_min_size=-1", "config.sharding.fsdp_min_size must be an integer"),
])
def test_bad_mesh_or_mode_fails_validation(fmnist_data_dir, override, message):
  with pytest.raises(ValueError, match=message):
    config_schema.validate(parse_flags(fmnist_data_dir, override))
