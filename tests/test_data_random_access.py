"""Streamed ImageNet read by index (ArrayRecord via tfds.data_source), on mocked imagenet2012:
a permutation of the slice per epoch, resume at any step = the uninterrupted run, 1 and 2
(simulated) processes.

The mock's data source ignores split slicing (every process sees the same 48 records), so the
two-process checks cover order, seeds and resume, not the slicing (tfds.split_for_jax_process).
"""
from __future__ import annotations
import numpy as np
import pytest
import tensorflow_datasets as tfds

from simlap.runtime import sharding
from simlap.data import datasets
from simlap.data import train_stream
import test_data_mock  # tests/ is on sys.path (not a package), as pytest imports it

STEPS_PER_EPOCH = 3  # 48 mocked records, 16 per step on one process


def mocked_config(random_access: bool = True):
  """Streamed imagenet2012 at 16 px, batch 16; call inside `tfds.testing.mock_data`."""
  c = test_data_mock._config("imagenet2012", 1000, size=16, in_memory=False,  # noqa: SLF001
                             random_access=random_access)
  c.augment.view1.blur_prob = c.augment.view2.blur_prob = 0.0  # pixels are not the point
  return c


@pytest.fixture
def config():
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    yield mocked_config()


def _batches(config, n, *, start_step=0, pi=0, pc=1, seed=7):
  ds = train_stream.local_train_dataset(config, seed=seed, start_step=start_step,
                                        process_index=pi, process_count=pc, with_ids=True)
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def test_chooses_random_access_and_permutes_every_epoch(config):
  builder = datasets.validated(config)[0]
  assert train_stream.reader(builder, config) == "random_access"
  assert train_stream.view_dtype(config, builder) == "uint8"
  ids = np.concatenate([b["tfds_id"] for b in _batches(config, 2 * STEPS_PER_EPOCH)]).astype(int)
  epochs = ids.reshape(2, 48)
  for epoch in epochs:  # every record exactly once per epoch: no buffer, no repeats
    assert sorted(epoch) == list(range(48))
  assert not np.array_equal(epochs[0], epochs[1])  # a fresh permutation per epoch


@pytest.mark.parametrize("pc", [1, 2])
def test_resume_mid_epoch_equals_the_uninterrupted_run(config, pc):
  for pi in range(pc):
    full = _batches(config, 5, pi=pi, pc=pc)  # crosses epoch boundaries (3 or 1.5 steps each)
    for start in (4,):  # mid-epoch
      (resumed,) = _batches(config, 1, start_step=start, pi=pi, pc=pc)
      for k in full[start]:
        np.testing.assert_array_equal(full[start][k], resumed[k])
  if pc == 2:  # the processes' rows are different views (their seeds fold in the global row)
    a, b = _batches(config, 1, pi=0, pc=2)[0], _batches(config, 1, pi=1, pc=2)[0]
    assert not np.array_equal(a["view1"], b["view1"])
  other = _batches(config, 1, seed=8, pc=pc)[0]
  assert not np.array_equal(other["tfds_id"], _batches(config, 1, pc=pc)[0]["tfds_id"])


def test_the_run_log_names_the_reader(config, caplog, num_devices):
  del num_devices
  with caplog.at_level("INFO"):
    train_stream.train_iterator(config, sharding.make_mesh(), seed=0)
  assert ("imagenet2012, uint8 views, colour stage on the device, read by index from "
          "ArrayRecord") in caplog.text
  config.dataset.random_access = False
  with caplog.at_level("INFO"):
    train_stream.train_iterator(config, sharding.make_mesh(), seed=0)
  assert "read TFRecord stream in shuffled blocks of 20000 records" in caplog.text
