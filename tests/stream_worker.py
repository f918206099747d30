"""One process of a real multi-process job that records its training batches (no training).

    python tests/stream_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.json

On mocked imagenet2012 (tfds.testing.mock_data, as tests/test_data_random_access.py uses it),
for each reader (by index from ArrayRecord, and the TFRecord stream), writes the SHA-256 of this
process's rows of every array of batches 0..4 read from step 0, and of batches 3..4 read after a
resume at step 3. test_data_two_process.py compares them.
"""
from __future__ import annotations

import hashlib
import json
import sys

import jax
import numpy as np
import tensorflow_datasets as tfds

STEPS, RESUME_AT = 5, 3


def local_rows(arr: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global row order."""
  shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def digests(config, mesh, start_step: int, n: int) -> list[dict[str, str]]:
  from simlap.data import train_stream  # noqa: PLC0415 - after jax.distributed.initialize
  it = train_stream.train_iterator(config, mesh, seed=7, start_step=start_step)
  return [{k: hashlib.sha256(local_rows(v).tobytes()).hexdigest() for k, v in next(it).items()}
          for _ in range(n)]


def main(port: str, pid: str, count: str, out: str) -> None:
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=int(count), process_id=int(pid))
  import test_data_random_access  # noqa: PLC0415 - tests/ is on PYTHONPATH
  from simlap.runtime import sharding  # noqa: PLC0415
  mesh = sharding.make_mesh()
  result = {}
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    for reader, random_access in (("random_access", True), ("stream", False)):
      config = test_data_random_access.mocked_config(random_access=random_access)
      result[reader] = {"full": digests(config, mesh, 0, STEPS),
                        "resumed": digests(config, mesh, RESUME_AT, STEPS - RESUME_AT)}
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
