"""`config.init_from=DIR`: start a run from another checkpoint's weights, with a fresh optimizer.

DIR is a simlap workdir (or its `checkpoints/` folder) written by `python -m simlap.convert` or by
a training run. Its latest checkpoint gives the parameters and BatchNorm statistics of the
modules its meta names ("converted"; all of them for a training run); every other module keeps
its fresh initialisation, and the optimizer state, step (0) and schedule are the new run's.
A module is loaded whole or not at all: a missing, extra or differently shaped variable inside
it is an error naming it, never a silent partial load.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from simlap.runtime import checkpointing
from simlap import objectives

# Top-level entries of TrainState.params besides the model's modules ("model" holds those).
_EXTRA_PARAMS = ("log_scale",)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a/b/c": leaf} of a nested dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def check_same_layout(target: Any, source: Any, where: str) -> None:
  """Raises ValueError naming every variable of `target` missing from `source`, extra in
  `source`, or shaped differently (shapes are compared, dtypes are cast on load)."""
  t, s = _flat(target, where), _flat(source, where)
  problems = [f"{k}: missing from the source" for k in sorted(set(t) - set(s))]
  problems += [f"{k}: in the source but not in this model" for k in sorted(set(s) - set(t))]
  problems += [f"{k}: source shape {tuple(np.shape(s[k]))} != model shape {tuple(np.shape(t[k]))}"
               for k in sorted(set(t) & set(s)) if tuple(np.shape(s[k])) != tuple(np.shape(t[k]))]
  if problems:
    more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
    raise ValueError("the source does not fit this model's config: " + "; ".join(problems[:12])
                     + more)


def overlay(state: Any, params: dict[str, Any], batch_stats: dict[str, Any],
            modules: list[str], objective: str) -> Any:
  """`state` with the named modules' variables replaced by `params` / `batch_stats` (host
  arrays laid out like `state.params["model"]` / `state.batch_stats`; "log_scale" is read from
  `params` too). Each array lands with the sharding and dtype of the leaf it replaces; then
  `objective` (config.objective) resets its own state to the new weights."""
  new_params = dict(state.params)
  new_params["model"] = dict(state.params["model"])
  new_stats = dict(state.batch_stats)
  put = lambda src, dst: jax.tree.map(  # noqa: E731 - one rule for every leaf
      lambda s, d: jax.device_put(np.asarray(s, d.dtype), d.sharding), src, dst)
  for name in modules:
    if name in _EXTRA_PARAMS:
      if name not in state.params:
        raise ValueError(f"the source has {name} but this config has none (for log_scale: "
                         "set config.loss.learn_scale=True)")
      check_same_layout(state.params[name], params[name], name)
      new_params[name] = put(params[name], state.params[name])
      continue
    if name not in state.params["model"]:
      raise ValueError(f"the source has module {name!r}, this model has "
                       f"{sorted(state.params['model'])}")
    check_same_layout(state.params["model"][name], params.get(name), f"params/{name}")
    new_params["model"][name] = put(params[name], state.params["model"][name])
    if name in state.batch_stats or name in batch_stats:
      check_same_layout(state.batch_stats.get(name, {}), batch_stats.get(name, {}),
                        f"batch_stats/{name}")
      if name in state.batch_stats:
        new_stats[name] = put(batch_stats[name], state.batch_stats[name])
  state = state.replace(params=new_params, batch_stats=new_stats)
  return objectives.get(objective).reset_after_load(state)


def checkpoint_dir(directory: str) -> str:
  """DIR/checkpoints when DIR is a workdir, else DIR itself."""
  sub = os.path.join(directory, "checkpoints")
  return sub if epath.Path(sub).exists() else directory


def load(directory: str, state: Any, objective: str) -> Any:
  """`state` (fresh, step 0, of `objective`) with the weights of the latest checkpoint in
  `directory`."""
  ckpt = checkpointing.Checkpointer(checkpoint_dir(directory), every_steps=1, keep=1)
  try:
    restored = ckpt.restore_arrays()
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"config.init_from={directory!r} holds no checkpoint")
  saved, meta, step = restored
  params, stats = saved["params"], saved.get("batch_stats") or {}
  modules = list(meta.get("converted") or
                 [*params["model"], *(k for k in _EXTRA_PARAMS if k in params)])
  flat_params = {**params["model"], **{k: params[k] for k in _EXTRA_PARAMS if k in params}}
  state = overlay(state, flat_params, stats, modules, objective)
  logging.info("init_from %s (step %d): loaded %s; fresh optimizer, step 0", directory, step,
               ", ".join(modules))
  return state


def maybe_load(config, state: Any) -> Any:
  """`load(config.init_from, state)`, or `state` unchanged when init_from is unset."""
  directory = config.init_from
  return load(directory, state, config.objective) if directory else state
