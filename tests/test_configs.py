"""Every config file loads, validates and builds its model (shapes only: no dataset, no FLOPs)."""
from __future__ import annotations

import functools
import importlib
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from simlap import config_schema
from simlap.training import optim
from simlap.models import model as model_lib

# (module, config argument) for every file in configs/ and the variants it defines.
CONFIGS = [("default", None), ("default", "supcon"), ("fashion_mnist", None),
           ("fashion_mnist", "ce"), ("cifar10", None), ("in1k", None), ("in1k", "smoke"),
           ("in1k", "simclr,smoke"), ("default", "hydra"), ("in1k", "hydra"), ("in1k", "moco"),
           ("in1k_vit", None), ("in1k_vit", "moco,s16"), ("in1k_vit", "hydra,smoke")]


REPO = pathlib.Path(__file__).resolve().parent.parent


def load(name: str, arg: str | None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name,arg", CONFIGS)
def test_config_loads_validates_and_builds_its_model(name, arg):
  config = load(name, arg)
  config_schema.validate(config)
  method = config_schema.parse_config_arg(arg, ("smoke", "s16", "b16"))[0]
  assert config.method == ("hydra" if name == "in1k_vit" and method == "simlap" else method)
  d = config.dataset
  model = model_lib.build_model(config.model, config.gate, d.num_classes,
                                predictor=config.objective == "moco")
  images = jax.ShapeDtypeStruct((2, d.image_size, d.image_size, d.channels), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             {"params": jax.random.key(0), "gate": jax.random.key(1)},
                             images, labels, labels)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, images, labels,
                       labels)
  assert out["embeddings"].shape == (2, config.model.projector_dim)
  if config.objective == "moco":  # the query side ends on the predictor
    assert out["predictions"].shape == (2, config.model.projector_dim)
  assert out["probe_logits"].shape == (2, d.num_classes)
  # The optimizer builds for the config's recipe (schedule, decay masks) on this param tree.
  tx, schedule = optim.make_optimizer(config, num_train=50_000,
                                      separate_probe=config.objective != "ce")
  jax.eval_shape(tx.init, {"model": variables["params"]})
  assert float(schedule(0)) == 0.0 or config.optimizer.warmup_epochs == 0


def test_every_config_file_is_covered():
  files = {p.stem for p in (pathlib.Path(__file__).parent.parent / "configs").glob("*.py")}
  assert files == {name for name, _ in CONFIGS}


def test_config_argument_errors_name_the_choices():
  with pytest.raises(ValueError, match="at most one method"):
    load("default", "simlap,supcon")
  with pytest.raises(ValueError, match=r"variants from \['smoke'\]"):
    load("in1k", "smok")
  with pytest.raises(ValueError, match="at most one method"):
    load("default", "smoke")  # default.py has no variants
  with pytest.raises(ValueError, match="momentum-encoder recipe: method 'hydra' or 'moco'"):
    load("in1k_vit", "supcon")
  with pytest.raises(ValueError, match="choose one ViT size"):
    load("in1k_vit", "s16,b16")


@pytest.mark.parametrize("field,value,message", [
    ("model.backbone", "resnet9", "config.model.backbone='resnet9' is not one of"),
    ("gate.kind", "binary", "config.gate.kind='binary' is not one of"),
    ("optimizer.schedule", "step", "config.optimizer.schedule='step' is not one of"),
    ("loss.temperature", 0.0, "config.loss.temperature must be positive"),
    ("objective", "byol", "config.objective='byol' is not one of"),
    ("moco.momentum", 1.0, r"config.moco.momentum must be in \[0, 1\)"),
    ("moco.beta", -1.0, "config.moco.beta must be >= 0"),
    ("gate.noise_std", -0.1, "config.gate.noise_std must be >= 0"),
])
def test_validate_names_the_bad_field(field, value, message):
  config = load("default", None)
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=message):
    config_schema.validate(config)


def test_selective_pairs_validate_with_one_message():
  config = config_schema.apply_method(load("default", None), "simlap_selective_a2")
  assert (config.loss.pair_kind, config.loss.selective_alpha) == ("selective", 2.0)
  config_schema.validate(config)  # Fashion-MNIST has a class tree
  for field, value, message in [
      ("selective_alpha", -1.0, "config.loss.selective_alpha must be a number >= 0"),
      ("selective_max_level", -1, "config.loss.selective_max_level must be an integer >= 0")]:
    bad = config_schema.apply_method(load("default", None), "simlap_selective_a2")
    bad.loss[field] = value
    with pytest.raises(ValueError, match=message):
      config_schema.validate(bad)
  cifar = config_schema.apply_method(load("cifar10", None), "simlap_selective_a0")
  with pytest.raises(ValueError, match="needs a class tree.*'cifar10' has none"):
    config_schema.validate(cifar)
  # Other methods leave the selective fields at their defaults (old runs' configs still match).
  plain = config_schema.apply_method(load("default", None), "simlap")
  assert plain.loss.selective_alpha == 0.0 and plain.loss.selective_max_level == 0


def test_fashion_mnist_class_tree_distances():
  from simlap.data import class_trees, fashion_mnist  # noqa: PLC0415
  # One definition: the tree is the analysis groups plus the ungrouped classes as one node.
  assert [m for _, m in fashion_mnist.CLASS_TREE[:2]] == list(fashion_mnist.GROUPS)
  assert fashion_mnist.CLASS_TREE[2] == ("other", (1, 3, 8))
  d = class_trees.dataset_distances("fashion_mnist_local", 10)
  assert d.shape == (10, 10) and (d == d.T).all() and (d.diagonal() == 0).all()
  assert d[0, 2] == 1 and d[5, 9] == 1 and d[1, 8] == 1  # tops; footwear; other
  assert d[0, 5] == 2 and d[3, 4] == 2  # T-shirt/Sandal; Dress/Coat
  with pytest.raises(ValueError, match="outside"):
    class_trees.tree_distances((("a", (0, 5)),), 4)


# Fields added to the schema after runs of these configs were saved. A config file that set one
# of them away from its default would strand those runs (resume and simlap.compare refuse a
# changed config), so the files must leave them at their defaults.
_ADDED_FIELDS = ("moco", "model.predictor_hidden", "model.projector_bias", "model.output_stride",
                 "model.pixel_mean", "model.pixel_std", "init_from", "keep_checkpoint_steps",
                 "loss.selective_alpha", "loss.selective_max_level", "model.conv_impl",
                 "gate.noise_std")


@pytest.mark.parametrize("name", ["default", "fashion_mnist"])
@pytest.mark.parametrize("method", ["simlap", "simlap_open", "supcon", "simlap_weighted", "simclr",
                                    "ce"])
def test_runs_saved_before_the_new_fields_still_resume(name, method):
  from simlap.runtime import workdir as workdir_lib  # noqa: PLC0415
  config = load(name, method)
  saved = workdir_lib.as_json(config)
  for field in _ADDED_FIELDS:
    *parents, key = field.split(".")
    node = saved
    for parent in parents:
      node = node[parent]
    node.pop(key, None)
  assert workdir_lib.resume_blockers(saved, config) == []
  changed = load(name, method)
  changed.model.predictor_hidden = (512,)  # what the check exists for
  assert workdir_lib.resume_blockers(saved, changed) == ["model.predictor_hidden: None -> [512]"]


# ---------------------------------------------------------------- the schema: defaults, help


def _leaves(tree, prefix=""):
  for key, value in tree.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_every_schema_field_has_a_one_line_description():
  fields = config_schema.fields()
  assert sorted(_leaves(config_schema.base_config())) == sorted(fields)
  bad = {name: f.help for name, f in fields.items()
         if not f.help.strip() or "\n" in f.help or len(f.help) > 120}
  assert not bad, f"fields without a one-line description: {bad}"


def test_config_help_prints_every_field_and_exits_0():
  done = subprocess.run([sys.executable, "-m", "simlap.main", "--config_help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = {line.split()[0]: line.split(None, 2)[1:] for line in done.stdout.splitlines()}
  assert list(rows) == list(config_schema.fields())
  assert rows["gate.noise_std"] == ["0.5", "kind stochastic: std of the Gaussian noise (STG)"]
  assert rows["dataset.data_dir"][0] == "None"


def test_gate_noise_std_is_set_from_the_command_line():
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  argv = ["simlap.main", f"--config={REPO}/configs/default.py", "--config.gate.noise_std=0.25"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  assert values.config.gate.noise_std == 0.25


GRID_RUNS = sorted((REPO / "results" / "grid_full").glob("*/seed*/config.json"))


def test_the_grid_runs_configs_load_with_the_fields_added_since():
  # These config.json files predate gate.noise_std: loading fills it (and every other field
  # added since) from the schema, and the result still resumes and builds its model.
  from simlap.runtime import workdir as workdir_lib  # noqa: PLC0415
  assert len(GRID_RUNS) == 27
  for path in GRID_RUNS:
    saved = json.loads(path.read_text())
    assert "noise_std" not in saved["gate"], path
    config = workdir_lib.load_config(str(path.parent))
    assert config.gate.noise_std == config_schema.base_config().gate.noise_std
    config_schema.validate(config)
    assert workdir_lib.resume_blockers(saved, config) == [], path
    model_lib.build_model(config.model, config.gate, config.dataset.num_classes,
                          predictor=config.objective == "moco")
