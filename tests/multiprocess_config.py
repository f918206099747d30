"""`--config=tests/multiprocess_config.py:DATA_DIR`: test_train's tiny config, for subprocesses.

The multi-process tests start `python -m simlap.main` in fresh interpreters; this file gives
them exactly the config the in-process trainer tests use (`test_train.tiny_config`), so both
stay in step. Further changes come as `--config.KEY=VALUE` flags.
"""
from __future__ import annotations
import os
import sys

import ml_collections


def get_config(data_dir: str) -> ml_collections.ConfigDict:
  # tests/ is not a package; the children import test_train the way pytest does, by path.
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_train import tiny_config  # pylint: disable=import-outside-toplevel
  return tiny_config(data_dir)
