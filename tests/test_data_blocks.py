"""The TFRecord stream in shuffled blocks, on real TFRecord files (Fashion-MNIST's, streamed).

Every epoch reads every record of the slice once, in an order keyed by (seed, epoch); a run
resumed at any step reads what the uninterrupted run read from that step on; and each block is
a contiguous range of records, so a resume opens one block, not the epoch so far.
"""
from __future__ import annotations

import numpy as np
import pytest

from configs import default
from simlap.data import train_stream

N, BLOCK, BATCH = 3000, 350, 50  # 9 blocks (the larger first), 60 steps per epoch


@pytest.fixture(scope="module")
def config(fmnist_data_dir):
  c = default.get_config()
  c.dataset.update(dict(data_dir=fmnist_data_dir, train_split=f"train[:{N}]", in_memory=False,
                        shuffle_buffer=BLOCK))
  c.batch_size = BATCH
  return c


def _ids(config, start, steps, seed=3, pi=0, pc=1):
  ds = train_stream.local_train_dataset(config, seed=seed, start_step=start, process_index=pi,
                                        process_count=pc, with_ids=True)
  it = ds.as_numpy_iterator()
  # tfds_id ends in the record's index in its file: "...-of-00001__<index>".
  return [np.array([int(i.rsplit(b"__", 1)[1]) for i in next(it)["tfds_id"]])
          for _ in range(steps)]


@pytest.fixture(scope="module")
def two_epochs(config):
  return _ids(config, 0, 2 * N // BATCH)


def test_every_epoch_reads_each_record_once_in_its_own_order(config, two_epochs):
  assert train_stream.reader(*_reader_args(config)) == "stream"
  e0, e1 = (np.concatenate(two_epochs[i * 60:(i + 1) * 60]) for i in range(2))
  assert sorted(e0) == sorted(e1) == list(range(N))
  assert (e0 != e1).mean() > 0.9


def test_blocks_are_contiguous_records_shuffled_whole(two_epochs):
  # An epoch's first 333 records come from one block: one of the 9 ranges (333 or 334
  # consecutive records) that even_splits cuts.
  first = np.concatenate(two_epochs[:60])[:333]
  assert first.max() - first.min() <= 333 and len(set(first)) == 333
  assert not np.array_equal(first, np.sort(first))  # and shuffled


@pytest.mark.parametrize("start", [1, 37, 60, 97])  # mid-block, mid-epoch, a boundary, epoch 2
def test_a_resume_reads_what_the_uninterrupted_run_read(config, two_epochs, start):
  resumed = _ids(config, start, 3)
  for got, want in zip(resumed, two_epochs[start:start + 3]):
    np.testing.assert_array_equal(got, want)


def test_the_order_is_keyed_by_the_seed_and_split_over_processes(config, two_epochs):
  other = np.concatenate(_ids(config, 0, 5, seed=4))
  assert (other != np.concatenate(two_epochs[:5])).mean() > 0.9
  halves = [np.concatenate(_ids(config, 0, 60, pi=pi, pc=2)) for pi in range(2)]
  assert sorted(np.concatenate(halves)) == list(range(N))  # each process its own half


def _reader_args(config):
  from simlap.data import datasets  # noqa: PLC0415
  return datasets.validated(config)[0], config
