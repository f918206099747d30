"""The trainer: 8 devices agree with 1, loss goes down, exact resume, one compilation, main."""
from __future__ import annotations
import glob
import os
import sys
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from tensorflow.core.util import event_pb2
import tensorflow as tf

from simlap.runtime import checkpointing
from simlap import config_schema
from simlap.runtime import metrics_io
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import train_stream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, **overrides):
  """A ~10k-parameter SimLAP on real Fashion-MNIST: seconds per run on 2 cores."""
  c = config_schema.base_config()
  c.dataset.data_dir = data_dir
  c.dataset.train_split = "train[:2048]"  # real images; slices keep loading cheap
  c.dataset.eval_split = "test[:512]"
  c.dataset.image_size = 16
  c.model.backbone = "resnet_tiny"
  c.model.projector_hidden = (32,)
  c.model.projector_dim = 16
  c.gate.embed_dim = 16
  c.gate.hidden_dim = 32
  c.batch_size = 32
  c.eval_batch_size = 256
  c.num_steps = 8
  c.optimizer.warmup_epochs = 0.0
  c.log_every = 2
  c.checkpoint_every = 4
  c.eval_at_end = False
  c.update_from_flattened_dict(overrides)  # {"optimizer.lr": 0.1, ...}
  return c


def run_steps(config, mesh, host_batches):
  """Trains on the given host batches with the state laid out on `mesh`; returns losses."""
  info = datasets.get_dataset_info(config)
  trainer = train.make_trainer(config, mesh, info)
  state = trainer.init_fn()
  losses = []
  for batch in host_batches:
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    state, metrics = trainer.step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params), trainer


@pytest.fixture(scope="module")
def host_batches(fmnist_data_dir):
  config = tiny_config(fmnist_data_dir)
  mesh = sharding.make_mesh(config.mesh)
  batches = train_stream.train_iterator(config, mesh, seed=0)
  return [jax.device_get(next(batches)) for _ in range(6)]


def test_eight_devices_match_one_device(fmnist_data_dir, host_batches, num_devices):
  mesh8 = sharding.make_mesh([("data", -1)])
  mesh1 = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  assert mesh8.size == num_devices and mesh1.size == 1
  # Plain SGD (no momentum effect on step 1): params after one step are p - lr * grad, so equal
  # params mean equal gradients, with no optimizer in between to amplify round-off.
  config = tiny_config(fmnist_data_dir, **{"optimizer.name": "sgd", "optimizer.lr": 0.1})
  runs = {}
  for name, mesh in (("8", mesh8), ("1", mesh1)):
    trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
    state, losses = trainer.init_fn(), []
    for i, batch in enumerate(host_batches):
      state, metrics = trainer.step_fn(state, jax.device_put(batch,
                                                             sharding.batch_sharding(mesh)))
      losses.append(float(metrics["loss"]))
      if i == 0:
        first_params = jax.device_get(state.params)
    assert trainer.step_fn._cache_size() == 1  # noqa: SLF001 - one compilation
    runs[name] = losses, first_params
  (losses8, params8), (losses1, params1) = runs["8"], runs["1"]
  # Step 1 is not chaotic: the same loss, and after one plain SGD step (no momentum yet) the
  # same parameters p - lr * grad, so the same gradients, to float32 round-off.
  np.testing.assert_allclose(losses8[0], losses1[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)  # gradients within 5e-5 (float32)
  # The trajectory is chaotic: reductions run in another order on 8 devices, and a 32-image
  # batch with BatchNorm at lr 0.1 amplifies float32 round-off step after step, by an amount
  # that depends on the CPU's SIMD paths (1e-6 here, 1.8e-4 seen elsewhere for 2 processes).
  # So it is compared loosely; a wrong gradient or data slice moves losses by far more
  # (test_train_oracle and the step-1 check above catch those tightly).
  np.testing.assert_allclose(losses8, losses1, rtol=1e-2)


def test_every_objective_trains_and_loss_goes_down(fmnist_data_dir, host_batches):
  mesh = sharding.make_mesh([("data", -1)])
  for method in ("simlap", "simclr", "supcon", "ce"):
    config = config_schema.apply_method(tiny_config(fmnist_data_dir, **{
        "optimizer.lr": 3e-3}), method)
    losses, params, _ = run_steps(config, mesh, host_batches * 3)
    assert all(np.isfinite(losses)), method
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), (method, losses)


def test_bfloat16_step_close_to_float32(fmnist_data_dir, host_batches):
  """Mixed precision: convs/matmuls in bf16; params, BN stats, gates and loss stay float32."""
  mesh = sharding.make_mesh([("data", -1)])
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(fmnist_data_dir, **{"model.dtype": dtype})
    info = datasets.get_dataset_info(config)
    trainer = train.make_trainer(config, mesh, info)
    state = trainer.init_fn()
    state, metrics = trainer.step_fn(state, jax.device_put(host_batches[0],
                                                           sharding.batch_sharding(mesh)))
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    assert {str(x.dtype) for x in leaves if x.dtype.kind == "f"} == {"float32"}, dtype
    assert metrics["loss"].dtype == np.float32
    results[dtype] = float(metrics["loss"])
  # bf16 has an 8-bit mantissa (~4e-3 relative); through the net the loss moves < 2%.
  np.testing.assert_allclose(results["bfloat16"], results["float32"], rtol=2e-2)
  assert results["bfloat16"] != results["float32"]  # bf16 really ran


def test_gate_kinds_and_penalty_train(fmnist_data_dir, host_batches):
  mesh = sharding.make_mesh([("data", -1)])
  for kind in ("gumbel", "stochastic"):
    config = tiny_config(fmnist_data_dir, **{"gate.kind": kind, "gate.penalty": 0.1,
                                             "loss.learn_scale": True,
                                             "loss.pair_kind": "distinct"})
    losses, params, _ = run_steps(config, mesh, host_batches[:2])
    assert all(np.isfinite(losses)), kind
    assert params["log_scale"] != np.log(10.0)  # the learned scale moved


def test_selective_pairs_train(fmnist_data_dir, host_batches):
  # The class-tree distances reach the jitted step as a constant; alpha 2 with a cut-off.
  mesh = sharding.make_mesh([("data", -1)])
  config = config_schema.apply_method(tiny_config(fmnist_data_dir), "simlap_selective_a2")
  config.loss.selective_max_level = 2
  losses, _, _ = run_steps(config, mesh, host_batches[:2])
  assert all(np.isfinite(losses)), losses


def test_resume_is_exact(fmnist_data_dir, tmp_path):
  config = tiny_config(fmnist_data_dir)
  # The straight run also keeps step 3 (off the every-4 cadence, older than the newest 2):
  # stored and never deleted, without changing what is trained.
  keep_3 = tiny_config(fmnist_data_dir, keep_checkpoint_steps=(3,))
  straight = train.train_and_evaluate(keep_3, str(tmp_path / "straight"))
  assert straight["step"] == 8 and not straight["preempted"]
  assert sorted(os.listdir(tmp_path / "straight" / "checkpoints"), key=int) == ["3", "4", "8"]
  first = train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at=4)
  assert first["step"] == 4 and first["preempted"]
  second = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert second["step"] == 8
  assert second["train_step_compilations"] == 1

  def final_params(workdir):
    info = datasets.get_dataset_info(config)
    trainer = train.make_trainer(config, sharding.make_mesh(config.mesh), info)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=4,
                                      keep=2)
    state, meta, step = ckpt.restore(trainer.abstract_state)
    ckpt.close()
    assert step == 8 and meta["step"] == 8
    return jax.device_get(state.params)

  for a, b in zip(jax.tree.leaves(final_params(str(tmp_path / "straight"))),
                  jax.tree.leaves(final_params(str(tmp_path / "resumed")))):
    np.testing.assert_array_equal(a, b)
  rows = metrics_io.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8]


def test_the_checkpointer_alone_decides_which_steps_save(tmp_path):
  # The loop asks `should_save` (to pay the NaN check only on save steps), `save` asks Orbax's
  # policy: the two must be one rule, the interval and the kept steps.
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=3, keep=10, keep_steps=(4,))
  decided = [step for step in range(1, 10) if ckpt.should_save(step)]
  assert decided == [3, 4, 6, 9]
  for step in range(1, 10):
    assert ckpt.save(step, {"w": np.zeros(2, np.float32)}, {"step": step}) == (step in decided)
  ckpt.close()
  assert ckpt.all_steps() == decided


def event_tags(workdir):
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      tags |= {v.tag for v in event.summary.value}
  return tags


def run_main(argv):
  """Runs the real entry point in-process (so TFDS mocks apply)."""
  from simlap import main  # noqa: PLC0415 - defines absl flags at import
  argv = ["simlap.main", *argv]
  flags.FLAGS.unparse_flags()
  # config_flags defines a flag per --config.x override it parses; a second in-process run with
  # the same override would define it again.
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  # config_flags reads its --config.* overrides from sys.argv, not from the parsed list.
  with mock.patch.object(sys, "argv", argv):
    flags.FLAGS(argv)
    main.main(["simlap.main"])


@pytest.mark.slow
def test_main_default_config_end_to_end(fmnist_data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "default")
  run_main([f"--config={REPO}/configs/default.py", f"--workdir={workdir}",
            f"--config.dataset.data_dir={fmnist_data_dir}", "--config.num_steps=4",
            "--config.batch_size=64", "--config.log_every=2", "--config.eval_batch_size=512",
            "--config.dataset.train_split=train[:4096]", "--config.dataset.eval_split=test[:1024]",
            "--config.model.backbone=resnet_tiny"])
  out = capsys.readouterr().out
  assert "simlap summary" in out and "knn_accuracy" in out
  tags = event_tags(workdir)
  for tag in ("loss", "learning_rate", "logit_scale", "gate_activation", "gate_entropy",
              "cos_positive", "cos_same_class", "cos_negative", "probe_accuracy", "grad_norm",
              "eval/knn_accuracy", "eval/probe_accuracy"):
    assert tag in tags, (tag, sorted(tags))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["in1k.py:smoke", "in1k_vit.py:hydra,smoke"])
def test_main_in1k_smoke_on_mocked_imagenet(tmp_path, capsys, config):
  workdir = str(tmp_path / "in1k")
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    # The mock intercepts the "download": nothing touches the network.
    run_main([f"--config={REPO}/configs/{config}", f"--workdir={workdir}",
              "--config.dataset.download=True"])
  out = capsys.readouterr().out
  assert "simlap summary" in out
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
  assert "loss" in event_tags(workdir)


def test_bad_config_fails_early(fmnist_data_dir, tmp_path):
  cases = [
      ({"objective": "byol"}, "objective"),
      ({"loss.pair_kind": "random"}, "pair_kind"),
      ({"optimizer.lr": -1.0}, "lr"),
      ({"optimizer.name": "adagrad"}, "adagrad"),
      ({"batch_size": 12}, "batch_size=12"),
      ({"dataset.num_classes": 7}, "7"),
  ]
  for overrides, word in cases:
    with pytest.raises(ValueError, match=word):
      train.train_and_evaluate(tiny_config(fmnist_data_dir, **overrides), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints" / "0")
