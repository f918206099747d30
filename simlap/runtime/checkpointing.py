"""The one module that talks to Orbax: interval saves, keep-N, resume, fallback past bad steps.

A checkpoint holds the whole `TrainState` (params, BatchNorm statistics, optimizer state, step)
plus a small JSON record. Nothing else is needed to resume exactly: the data stream and every
random key are pure functions of (seed, step), so the step *is* the data position and the RNG.
If Orbax's API moves, only this file changes.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from simlap.runtime import storage  # noqa: F401 - epath on gcsfs, and the endpoint (see storage)
from simlap.runtime import workdir as workdir_lib

_STATE = "state"
_META = "meta"
# Orbax splits the save of each replicated array across its replicas, each slicing its part on
# the device: one tiny compiled program per array shape, 128 of them (5 s on 2 CPU cores) at a
# process's first save of the test model. Below 1 MiB per replica a transfer is latency-bound
# and the slicing saves nothing, so such arrays are written from one replica, as sharded ones
# are; big replicated ones keep the parallel save (docs/reliability.md, "First save").
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


def _register_array_handler() -> None:
  """Orbax's jax.Array handler with MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL, its other options
  (the array-metadata store included) as the default handler has them."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(default, "_min_slice_bytes_for_replica_parallel", None) == (
      MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL):
    return
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
      array_metadata_store=getattr(default, "_array_metadata_store", None),
      min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL), override=True)


class SaveFailedError(RuntimeError):
  """A checkpoint write failed; the run must stop (see `Checkpointer.check_saves`)."""

  def __init__(self, step: int, path: str, last_good: int | None, cause: BaseException):
    self.step, self.path, self.last_good = step, path, last_good
    self.cause = describe_cause(cause)
    good = f"step {last_good}" if last_good is not None else "none"
    super().__init__(f"saving the checkpoint of step {step} failed: {self.cause}; path {path}; "
                     f"last good checkpoint: {good}")


def describe_cause(e: BaseException) -> str:
  """The root cause of a failed write in a few words, e.g. "no space left on device".

  Orbax wraps the OSError of a full disk in several layers of TensorStore messages; the
  errno, wherever it is in the chain, says it best.
  """
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    if isinstance(e, OSError) and e.errno:
      return os.strerror(e.errno).lower()
    match = re.search(r"\[os_error_code='(\d+)'\]", str(e))
    if match:
      return os.strerror(int(match.group(1))).lower()
    e = e.__cause__ or e.__context__
  first = seen[0]
  return f"{type(first).__name__}: {(str(first).splitlines() or [''])[0][:200]}"


class _Manager(ocp.CheckpointManager):
  """Orbax's manager without its own preemption check.

  Orbax asks JAX's preemption sync manager at every save (and from its finalize thread) with the
  step as the counter. simlap's loop asks it once per step with its own counter
  (runtime/preemption.py) and forces the save itself; Orbax's extra calls, with another counter,
  could move the agreed sync point past the end of the run.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the newest `keep`, resumes.

  `keep_steps`: steps that are also saved and never deleted (e.g. the points of training at
  which `simlap.compare --eval_fractions` evaluates a run).
  Every process must call `save` and `restore` (Orbax coordinates multi-host writes); saves
  are asynchronous, so the next train steps overlap the write.
  """

  def __init__(self, directory: str, *, every_steps: int, keep: int,
               keep_steps: Sequence[int] = ()):
    self.directory = epath.Path(directory)
    self.keep_steps = frozenset(int(s) for s in keep_steps)
    policies = ocp.checkpoint_managers
    save_policy = policies.FixedIntervalPolicy(max(1, every_steps))
    preservation_policy = policies.LatestN(max(1, keep))
    if self.keep_steps:
      save_policy = policies.AnySavePolicy(
          [save_policy, policies.SpecificStepsPolicy(self.keep_steps)])
      preservation_policy = policies.AnyPreservationPolicy(
          [preservation_policy, policies.CustomSteps(sorted(self.keep_steps))])
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        preservation_policy=preservation_policy,
        create=True,
        enable_async_checkpointing=True,
    )
    _register_array_handler()
    self._manager = _Manager(self.directory, options=options, item_names=(_STATE, _META))
    self._pending: int | None = None  # the step whose asynchronous save is not yet checked
    self._last_good = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The committed steps on storage, ascending (`workdir.checkpoint_steps`, the one list)."""
    return workdir_lib.checkpoint_steps(str(self.directory))

  def should_save(self, step: int) -> bool:
    """Whether `step` is a save step of the Orbax policy (every `every_steps`, or one of
    `keep_steps`): the one place that decides it. `save` without `force` asks the same."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Saves if the interval policy (or `force`) says so; returns whether a save started.

    Raises SaveFailedError if this or the previous save failed.
    """
    self.check_saves(wait=True)
    try:
      started = self._manager.save(
          step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                           _META: ocp.args.JsonSave(meta)}), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise SaveFailedError(step, str(self.directory / str(step)), self._last_good, e) from e
    if started:
      self._pending = step
    return started

  def check_saves(self, *, wait: bool = False) -> None:
    """Raises SaveFailedError once the pending asynchronous save has failed.

    Cheap when nothing is pending or the save is still running (call it every step): a failed
    save must stop the run at once, not at the next save, `checkpoint_every` steps later.
    `wait`: block until the pending save ends, then check it.
    """
    if self._pending is None or (not wait and self._manager.is_saving_in_progress()):
      return
    step, self._pending = self._pending, None
    path = str(self.directory / str(step))
    try:
      self._manager.wait_until_finished()  # the finalize thread's error, if any
      self._manager.check_for_errors()  # the commit threads' errors
    except Exception as e:  # pylint: disable=broad-except
      raise SaveFailedError(step, path, self._last_good, e) from e
    if not (self.directory / str(step)).exists():  # Orbax skipped finalizing it
      raise SaveFailedError(step, path, self._last_good,
                            RuntimeError("the checkpoint was not finalized (see the log)"))
    self._last_good = step

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict[str, Any], int] | None:
    """Restores `step`, or the newest readable checkpoint; None if the directory has none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with shardings (from
    `jax.eval_shape` + the state shardings), so arrays land directly on their devices.
    A damaged checkpoint (truncated or missing files, or NaN/Inf values) is skipped with a
    warning naming its step, renamed to `<step>.damaged` (kept for inspection; Orbax no longer
    sees it, so the resumed run can save that step again), and the next older one is tried: a
    crash mid-write must never end a run.
    """
    if step is not None and step not in self.all_steps():
      raise ValueError(f"no checkpoint of step {step} in {self.directory}; steps that exist: "
                       f"{', '.join(map(str, self.all_steps())) or 'none'}")
    candidates = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for candidate in candidates:
      restored, error = self._agreed_restore(candidate, abstract_state)
      if restored is not None:
        state, meta = restored
        return state, meta, candidate
      if step is not None:
        raise error
      moved = self._set_aside(candidate)
      logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); moved it to %s "
                      "and falling back to an older one", candidate, self.directory,
                      type(error).__name__,
                      str(error).splitlines()[0][:300] if str(error) else "", moved)
    return None

  def _agreed_restore(self, step: int, abstract_state: Any, attempts: int = 2
                      ) -> tuple[tuple[Any, dict[str, Any]] | None, Exception | None]:
    """((state, meta), None) if every process read `step` well, else (None, the error).

    A failed read is retried (a transient error of a network file system must not set a good
    checkpoint aside), and after each attempt every process's verdict is all-gathered: one
    host's read error must not send it alone into `_set_aside`'s barriers while its peers
    start training (the job would hang), nor set aside a checkpoint the others read well.
    Every process makes the same calls in the same order: each attempt is one Orbax restore
    (which ends in a barrier; a process whose read failed joins that barrier itself) and one
    all-gather.
    """
    error: Exception | None = None
    for attempt in range(attempts):
      restored, error = None, None
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}))
        bad = _first_nonfinite(out[_STATE])
        if bad:
          error = FloatingPointError(f"non-finite values in {bad} at step {step}")
        else:
          restored = (out[_STATE], dict(out[_META] or {}))
      except Exception as e:  # pylint: disable=broad-except
        error = e
        _join_restore_barrier()
      if not _any_process(error is not None):
        return restored, None
      if error is None:
        error = RuntimeError(f"the checkpoint at step {step} is unreadable on another process")
      if attempt + 1 < attempts and not isinstance(error, FloatingPointError):
        logging.warning("reading the checkpoint at step %d failed on at least one process "
                        "(here: %s: %s); retrying", step, type(error).__name__,
                        (str(error).splitlines() or [""])[0][:300])
      elif isinstance(error, FloatingPointError):
        break  # NaN stays NaN: no retry
    return None, error

  def restore_arrays(self, step: int | None = None
                     ) -> tuple[Any, dict[str, Any], int] | None:
    """(state as nested dicts of NumPy arrays, meta, step) of `step` or the newest; None if
    there is none. Needs no abstract state: the layout is read from the checkpoint, so another
    config's checkpoint (another optimizer, another model) can be read for `init_from`."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    metadata = self._manager.item_metadata(step)[_STATE]
    tree = getattr(metadata, "tree", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}))
    state = jax.tree.map(np.asarray, restored[_STATE])
    return state, dict(restored[_META] or {}), step

  def _set_aside(self, step: int) -> str:
    """Renames a damaged step directory out of Orbax's view; returns the new name.

    Left in place, it would stay the "latest" step, and saving that step again after the
    fallback would fail with StepAlreadyExistsError, a crash loop on every restart.
    Several processes: all pick the name before process 0 renames (else a late one sees the
    renamed directory and names `.damaged.2`), and all reload after it (else a process that
    still lists the step fails to save it again).
    """
    source = self.directory / str(step)
    target = self.directory / f"{step}.damaged"
    n = 1
    while target.exists():
      n += 1
      target = self.directory / f"{step}.damaged.{n}"
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"simlap_checkpoint_name_damaged_{step}")
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"simlap_checkpoint_set_aside_{step}")
    self._manager.reload()
    return str(target)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk; SaveFailedError if one failed."""
    self.check_saves(wait=True)

  def close(self) -> None:
    self.check_saves(wait=True)
    self._manager.close()


# The name of the barrier that ends Orbax's `Checkpointer.restore` (its key prefix is ""):
# tests/test_preemption.py checks it against the name Orbax really uses.
RESTORE_BARRIER = ocp.multihost.unique_barrier_key("Checkpointer:restore", prefix="")


def _join_restore_barrier() -> None:
  """The barrier that ends Orbax's restore, for a process whose read raised before it: its
  peers wait there, and then all meet in `_any_process`."""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(RESTORE_BARRIER)


def _any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (an all-gather; every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _first_nonfinite(state: Any) -> str:
  """The path of the first leaf with NaN/Inf in this process's shards; "" if none.

  A restored state with NaN/Inf is treated like a damaged checkpoint. Checked on the host,
  shard by shard: restore runs once per job, and a jitted check would compile a reduction per
  leaf shape, which costs more than it saves. With several processes each checks its own
  shards; `restore` then combines every process's verdict.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if not (hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)):
      continue
    # One copy of each distinct local shard: replicas hold the same restored bytes.
    shards = ({str(s.index): s.data for s in leaf.addressable_shards}.values()
              if isinstance(leaf, jax.Array) else [leaf])
    if not all(np.isfinite(np.asarray(s)).all() for s in shards):
      return jax.tree_util.keystr(path)
  return ""
