"""Which config a workdir was trained with, and whether another config may continue it.

A workdir's `config.json` records the config of the run that wrote its checkpoints. Resuming it
with a config that changes the model, data, objective or schedule would silently mix two runs
(or fail inside Orbax on a different parameter tree), so `check_resumable` refuses, naming the
fields. Settings that only change how the run is watched, stored or placed may change.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import tensorflow as tf  # tf.io.gfile: workdirs may be gs:// URLs

# Dotted config keys a resumed run may change: logging, evaluation, checkpoint cadence, where
# the data lives, and the device layout (checkpoints restore onto any mesh).
RESUME_MAY_CHANGE = (
    "log_every", "eval_every", "eval_at_end", "eval_batch_size", "knn_k", "knn_temperature",
    "checkpoint_every", "keep_checkpoints", "mesh",
    "dataset.data_dir", "dataset.manual_dir", "dataset.source_dir", "dataset.download",
    "dataset.prefetch",
)


def config_diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
  """Differences between two JSON-like configs as "key: old -> new" lines (dotted keys)."""
  if isinstance(saved, dict) and isinstance(now, dict):
    out = []
    for k in sorted(set(saved) | set(now)):
      out += config_diff(saved.get(k), now.get(k), f"{prefix}{k}.")
    return out
  return [] if saved == now else [f"{prefix[:-1]}: {saved!r} -> {now!r}"]


def read_json(path: str) -> Any:
  """The JSON file at `path` (local or a URL); None when it is missing or unreadable."""
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      return json.load(f)
  except (OSError, ValueError, tf.errors.OpError):
    return None


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The workdir's config.json as a dict; None when it is missing or unreadable."""
  return read_json(os.path.join(workdir, "config.json"))


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as config.json stores it (tuples become lists), for comparing with a saved one."""
  return json.loads(config.to_json_best_effort())


def _has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  return tf.io.gfile.isdir(directory) and any(
      name.rstrip("/").isdigit() for name in tf.io.gfile.listdir(directory))


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError if `workdir` holds checkpoints of a run with another config.

  Keys in RESUME_MAY_CHANGE are ignored. A workdir without checkpoints (or without a
  config.json, as written by older versions) is always accepted.
  """
  saved = saved_config(workdir)
  if saved is None or not _has_checkpoints(workdir):
    return
  allowed = tuple(k + ":" for k in RESUME_MAY_CHANGE)
  diff = [d for d in config_diff(saved, as_json(config)) if not d.startswith(allowed)]
  if diff:
    more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
    raise ValueError(
        f"workdir {workdir!r} holds checkpoints of a run with a different config "
        f"({'; '.join(diff[:8])}{more}); resuming would mix two runs. Use another --workdir, "
        "or delete that one to start over.")
