"""`--config=tests/multiprocess_config.py:DATA_DIR`: test_train's tiny config, for subprocesses.

The multi-process tests start `python -m simlap.main` in fresh interpreters; this file gives
them exactly the config the in-process trainer tests use (`test_train.tiny_config`), so both
stay in step. Further changes come as `--config.KEY=VALUE` flags.
"""
from __future__ import annotations

import ml_collections

# tests/ is not a package: test_multiprocess puts it on the children's PYTHONPATH.
from test_train import tiny_config


def get_config(data_dir: str) -> ml_collections.ConfigDict:
  return tiny_config(data_dir)
