"""The sharded feature bank and the evaluators on it: rows split over the devices, never whole;
distributed kNN, probe and few-shot equal to the single-device evaluators; one compilation."""
from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from simlap.evaluation import array_eval as evaluators
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import eval_stream
from simlap.data import fashion_mnist
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import knn as knn_lib
from simlap.evaluation import online
from simlap.evaluation import probes
from simlap.evaluation import progress
from test_train import tiny_config


def _config(data_dir):
  # 1000 and 300 rows: not multiples of the eval batch, so both banks carry padding rows.
  return tiny_config(data_dir, **{"dataset.train_split": "train[:1000]",
                                  "dataset.eval_split": "test[:300]", "eval_batch_size": 128})


@pytest.fixture(scope="module")
def run(fmnist_data_dir):
  config = _config(fmnist_data_dir)
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  return config, mesh, trainer.model, trainer.init_fn()


def make_bank(mesh, feats, labels, n_pad, seed=0):
  """A Bank of `feats` with padding rows (copies of row 0, masked) and its rows spread over
  the devices at random: the device and process layout must not change any result."""
  n = len(feats)
  pad = n_pad - n
  cols = {"features": np.concatenate([feats, np.repeat(feats[:1], pad, 0)]),
          "labels": np.concatenate([labels, np.repeat(labels[:1], pad)]).astype(np.int32),
          "mask": np.arange(n_pad) < n,
          "index": np.where(np.arange(n_pad) < n, np.arange(n_pad), -1).astype(np.int32)}
  # Which rows each device holds is random; within a device they ascend in split order, as
  # the extraction writes them (the bank's invariant, bank.py).
  devices = len(mesh.devices.flat)
  perm = np.random.default_rng(seed).permutation(n_pad).reshape(devices, -1)
  perm = np.sort(perm, axis=1).reshape(-1)
  rows = bank_lib.row_sharding(mesh)
  return bank_lib.Bank({k: jax.device_put(v[perm], rows) for k, v in cols.items()}, n, mesh)


# ---------------------------------------------------------------------------------------------
# The bank
# ---------------------------------------------------------------------------------------------
def test_each_device_holds_one_eighth_of_the_bank(run, num_devices):
  config, mesh, model, state = run
  bank = bank_lib.extract_bank(config, model, state, mesh, config.dataset.train_split,
                               embeddings=True)
  n_pad = 8 * 128  # 1000 rows in whole eval batches
  assert bank.num_examples == 1000
  for name, col in bank.columns.items():
    assert col.shape[0] == n_pad, name
    shards = col.addressable_shards
    assert len({s.device for s in shards}) == num_devices, name
    # The shards, not the values: each device stores 1/8 of the rows and of the bytes.
    assert all(s.data.shape == (n_pad // num_devices, *col.shape[1:]) for s in shards), name
    assert sum(s.data.nbytes for s in shards) == col.nbytes, name  # no device holds extra
  index = np.asarray(bank["index"])
  np.testing.assert_array_equal(np.sort(index[index >= 0]), np.arange(1000))
  assert np.asarray(bank["mask"]).sum() == 1000
  # Split order through "index": the labels in the order the eval stream reads the split.
  stream = eval_stream.eval_iterator(config, mesh, config.dataset.train_split)
  labels = np.concatenate([b["label"][b["mask"]] for b in
                           stream.local_dataset().as_numpy_iterator()])
  np.testing.assert_array_equal(bank.host("labels"), labels)


def test_evaluation_compiles_once_per_shape(run):
  config, mesh, model, state = run
  lowered = []
  def count(event, *args, **kwargs):
    del args, kwargs
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(event)
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    first = online.evaluate_online(config, model, state, mesh, num_classes=10)
    n_first = len(lowered)
    second = online.evaluate_online(config, model, state, mesh, num_classes=10)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert n_first > 0  # the listener sees compilations
  assert len(lowered) == n_first, f"{len(lowered) - n_first} new compilations in evaluation 2"
  assert first == second


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------
def _knn_both(mesh, x, y, qx, qy, *, ks, num_classes, n_pad, m_pad, query_block):
  bank, queries = make_bank(mesh, x, y, n_pad, 0), make_bank(mesh, qx, qy, m_pad, 1)
  new = knn_lib.knn_predict(bank, queries, num_classes=num_classes, ks=ks,
                            query_block=query_block)
  ref = evaluators.knn_classify(x, y, qx, num_classes=num_classes, ks=ks)
  return new, {k: np.asarray(v) for k, v in ref.items()}


def test_distributed_knn_equals_single_device_on_fashion_mnist(num_devices):
  # Real Fashion-MNIST images as features (784 pixels): the bank is 3000 train images.
  images, labels = fashion_mnist.read_split(fashion_mnist.resolve_source_dir(None), "train")
  feats = images.reshape(len(images), -1).astype(np.float32)
  x, y, qx, qy = feats[:3000], labels[:3000], feats[3000:3500], labels[3000:3500]
  mesh = sharding.make_mesh()
  new, ref = _knn_both(mesh, x, y, qx, qy, ks=(1, 10, 20), num_classes=10, n_pad=3008,
                       m_pad=512, query_block=128)
  for k in (1, 10, 20):
    np.testing.assert_array_equal(new["predictions"][k], ref[k])
  assert 0.6 < new["accuracy"][10] < 1.0  # pixels kNN: real, not trivial


def test_distributed_knn_ties_go_to_the_lower_split_index(num_devices):
  # 4 directions (basis vectors, at scales 1, 2, 4), each repeated: every query has many
  # tied neighbours whose labels differ, spread over all devices. Basis vectors make the ties
  # exact in any program (cosines exactly 1 or 0, whatever the summation order).
  rng = np.random.default_rng(0)
  dirs = np.eye(8, dtype=np.float32)[:4]
  which = rng.integers(0, 4, 400)
  x = dirs[which] * rng.choice(np.float32([1, 2, 4]), (400, 1))
  y = rng.integers(0, 5, 400).astype(np.int32)
  qx, qy = dirs[np.arange(64) % 4], np.zeros(64, np.int32)
  mesh = sharding.make_mesh()
  new, ref = _knn_both(mesh, x, y, qx, qy, ks=(1, 3, 7), num_classes=5, n_pad=416, m_pad=64,
                       query_block=16)
  for k in (1, 3, 7):
    np.testing.assert_array_equal(new["predictions"][k], ref[k])
  # The rule itself: the 1-NN is the first row of the split in the query's direction.
  first = np.array([y[np.flatnonzero(which == d)[0]] for d in range(4)])
  np.testing.assert_array_equal(new["predictions"][1], first[np.arange(64) % 4])


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------
def _clusters(n, num_classes, dim, *, spread, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = rng.integers(0, num_classes, n)
  return ((centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32),
          labels.astype(np.int32))


def test_sharded_linear_probe_learns_and_matches_the_single_device_probe(num_devices):
  x, y = _clusters(900, 3, 16, spread=0.3, seed=4)
  mesh = sharding.make_mesh()
  bank, test = make_bank(mesh, x[:600], y[:600], 608, 0), make_bank(mesh, x[600:], y[600:],
                                                                      304, 1)
  kw = dict(num_classes=3, epochs=10, batch_size=100, seed=0)
  new = probes.linear_probe(bank, test, **kw)
  ref = evaluators.linear_probe(x[:600], y[:600], x[600:], y[600:], **kw)
  assert new["accuracy"] > 0.9, new
  # Same minibatches, gradients summed in another order: equal up to round-off.
  assert abs(new["accuracy"] - ref["accuracy"]) <= 1 / 300 + 1e-6
  assert new["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-4)
  assert new["hparams"] == ref["hparams"]


def test_sharded_few_shot_draws_the_same_rows_and_scores_the_same(num_devices):
  x, y = _clusters(700, 4, 16, spread=0.9, seed=6)
  mesh = sharding.make_mesh()
  bank, test = make_bank(mesh, x[:500], y[:500], 504, 0), make_bank(mesh, x[500:], y[500:],
                                                                      200, 1)
  kw = dict(num_classes=4, shots=(1, 5), seeds=(0, 1))
  new = probes.few_shot_ridge(bank, test, **kw)
  ref = evaluators.few_shot_ridge(x[:500], y[:500], x[500:], y[500:], **kw)
  assert new == ref


def test_progress_logs_an_eta_and_honours_the_stop_check(caplog):
  caplog.set_level(logging.INFO)
  calls = []
  prog = progress.Progress("knn backbone", 4, every_s=0.0,
                           should_stop=lambda: calls.append(1) or len(calls) == 3)
  prog.step()
  prog.step()
  assert any("knn backbone: 2/4 (50%)" in r.getMessage() and "ETA 0:00:0" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  with pytest.raises(progress.Interrupted, match="after 3/4 blocks"):
    prog.step()
  assert prog.finish() >= 0 and "knn backbone: 3 blocks in" in caplog.records[-1].getMessage()
