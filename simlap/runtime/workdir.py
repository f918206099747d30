"""A run's workdir: prepared and proven writable, its config.json read and written, and whether
another config may continue it. Workdirs may be local paths or URLs (gs://bucket/run): every file
goes through `simlap.runtime.storage`, and only local paths are made absolute.

`config.json` records the config of the run that wrote the checkpoints. Resuming with a config
that changes the model, data, objective or schedule would silently mix two runs (or fail inside
Orbax on another parameter tree), so `check_resumable` refuses, naming the fields; settings that
only change how the run is watched, stored or placed may change (`RESUME_MAY_CHANGE`).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_collections

from simlap import config_schema
from simlap.runtime import storage

# Dotted config keys a resumed run may change: logging, evaluation, checkpoint cadence, where
# the data lives, and the device layout (checkpoints restore onto any mesh, replicated or
# sharded: Orbax reshards on restore).
RESUME_MAY_CHANGE = (
    "log_every", "eval_every", "eval_at_end", "eval_batch_size", "knn_k", "knn_temperature",
    "checkpoint_every", "keep_checkpoints", "keep_checkpoint_steps", "mesh", "sharding.params",
    "sharding.fsdp_min_size", "dataset.data_dir", "dataset.manual_dir", "dataset.source_dir",
    "dataset.download", "dataset.prefetch",
    "model.conv_impl",  # how convs and pools are computed, not what: the same numbers
    "init_from",  # read only when a run starts: a resumed run has its own weights
)


def config_diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
  """Differences between two JSON-like configs as "key: old -> new" lines (dotted keys)."""
  # A section missing on one side (a saved config.json that lacks it) is compared key by key,
  # so the keys of it that RESUME_MAY_CHANGE lists may still change.
  saved = {} if saved is None and isinstance(now, dict) else saved
  now = {} if now is None and isinstance(saved, dict) else now
  if isinstance(saved, dict) and isinstance(now, dict):
    out = []
    for k in sorted(set(saved) | set(now)):
      out += config_diff(saved.get(k), now.get(k), f"{prefix}{k}.")
    return out
  return [] if saved == now else [f"{prefix[:-1]}: {saved!r} -> {now!r}"]


def read_json(path: str) -> Any:
  """The JSON file at `path` (local or a URL); None when it is missing or unreadable."""
  try:
    return json.loads(storage.read_bytes(path))
  except (OSError, ValueError):
    return None


def is_remote(path: str) -> bool:
  """True for URLs such as gs://bucket/run, which `simlap.runtime.storage` reads and writes."""
  return storage.is_remote(path)


def resolve(workdir: str) -> str:
  """Local paths become absolute; URLs stay as given."""
  return workdir if is_remote(workdir) else os.path.abspath(workdir)


def check_given(workdir: str | None) -> str:
  """Refuses an empty or whitespace workdir (`--workdir=$UNSET`): it would resolve to the
  current directory and fill it with checkpoints and logs."""
  if workdir is None or not workdir.strip():
    raise ValueError(f"--workdir is empty ({workdir!r}); give the directory (or gs:// URL) "
                     "the run writes to")
  return workdir


def prepare(workdir: str) -> str:
  """Creates `workdir`, proves it writable, and returns it resolved (see `resolve`)."""
  workdir = resolve(check_given(workdir))
  probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
  try:
    storage.makedirs(workdir)
    storage.write_bytes(probe, b"")
    storage.remove(probe)
  except OSError as e:
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    raise ValueError(f"workdir {workdir!r} is not writable: {reason}") from e
  return workdir


def write_json(path: str, value: Any, indent: int = 2) -> None:
  """Writes `value` as JSON to `path` (local or a URL), folders created, in one step."""
  storage.write_text(path, json.dumps(value, indent=indent))


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` (local or a URL), folders created, in one step."""
  storage.write_text(path, text)


def listdir(path: str) -> list[str]:
  """Entry names of the folder `path` (local or a URL); [] when it does not exist."""
  return storage.listdir(path)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config as W/config.json (what `load_config` and resume checks read)."""
  storage.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The workdir's config.json as a dict; None when it is missing.

  A config.json that exists but cannot be read or parsed raises ValueError naming it and the
  error: treated as missing, it would switch off `check_resumable` and be overwritten.
  """
  path = os.path.join(workdir, "config.json")
  if not storage.exists(path):
    return None
  try:
    saved = json.loads(storage.read_bytes(path))
  except (OSError, ValueError) as e:
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {reason}); it records the "
                     "config of the run that wrote this workdir's checkpoints: restore it, or "
                     "use another --workdir") from e
  if not isinstance(saved, dict):
    raise ValueError(f"{path} is unreadable (a JSON {type(saved).__name__}, not an object); "
                     "restore it, or use another --workdir")
  return saved


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as config.json stores it (tuples become lists), for comparing with a saved one."""
  return json.loads(config.to_json_best_effort())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def resume_blockers(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """The `config_diff` lines that forbid continuing a run saved with config `saved`.

  Not blockers: keys in RESUME_MAY_CHANGE, and keys `saved` lacks that hold their schema
  default in `config` (a config without a field ran as that default).
  """
  now = as_json(config)
  flat_saved, flat_now = _flat(saved), _flat(now)
  defaults = _flat(as_json(config_schema.base_config()))
  allowed = tuple(k + ":" for k in RESUME_MAY_CHANGE)
  out = []
  for line in config_diff(saved, now):
    key = line.split(":", 1)[0]
    added_at_default = (key not in flat_saved and key in defaults
                        and flat_now.get(key) == defaults[key])
    if not (line.startswith(allowed) or added_at_default):
      out.append(line)
  return out


# Orbax commits a step on gs:// by writing this file into its folder (elsewhere by renaming
# `<step>.orbax-checkpoint-tmp-*` to `<step>`): a gs:// step folder without it is half written.
COMMIT_FILE = "commit_success.txt"


def checkpoint_steps(directory: str) -> list[int]:
  """The committed checkpoint steps in `directory` (a run's W/checkpoints), ascending.

  Read from the folder names alone (local or a URL; no Orbax manager is built, so a grid can
  list many runs cheaply): `<step>/` counts; Orbax's `<step>.orbax-checkpoint-tmp-*`, a
  set-aside `<step>.damaged` and, on gs://, a step without `COMMIT_FILE` do not. The same set
  Orbax's own `all_steps` reports for a finished directory.
  """
  steps = [int(n) for n in storage.listdir(directory) if re.fullmatch(r"[0-9]+", n)]
  if directory.startswith("gs://"):
    steps = [s for s in steps if storage.exists(os.path.join(directory, str(s), COMMIT_FILE))]
  return sorted(steps)


def _has_checkpoints(workdir: str) -> bool:
  return bool(checkpoint_steps(os.path.join(workdir, "checkpoints")))


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError if `workdir` holds checkpoints of a run with another config.

  Keys in RESUME_MAY_CHANGE are ignored. A workdir without checkpoints or without a
  config.json is always accepted.
  """
  saved = saved_config(workdir)
  if saved is None or not _has_checkpoints(workdir):
    return
  diff = resume_blockers(saved, config)
  if diff:
    more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
    raise ValueError(
        f"workdir {workdir!r} holds checkpoints of a run with a different config "
        f"({'; '.join(diff[:8])}{more}); resuming would mix two runs. Use another --workdir, "
        "or delete that one to start over.")


def _like(template: Any, value: Any) -> Any:
  """JSON lists back to the container types of `template` (tuples, lists of tuples)."""
  if isinstance(value, list) and isinstance(template, (list, tuple)):
    inner = template[0] if template else None
    return type(template)(_like(inner, v) for v in value)
  return value


def _merge(dst: ml_collections.ConfigDict, src: dict[str, Any]) -> None:
  """Writes JSON values into `dst` in place, with the container types `dst` already has."""
  for key, value in src.items():
    old = dst[key] if key in dst else None
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
      _merge(old, value)
      continue
    value = _like(old, value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    dst[key] = value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with: W/config.json merged onto `config_schema.base_config()`
  (so tuples stay tuples and fields it lacks keep their defaults)."""
  saved = saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{os.path.join(workdir, 'config.json')} not found: "
                            f"is {workdir!r} a training workdir?")
  config = config_schema.base_config()
  _merge(config, saved)
  return config
