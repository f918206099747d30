"""When the training loop stops before `num_steps`, decided the same way on every process.

A preemption notice (SIGTERM, or a first Ctrl-C), `stop_at` or a non-finite loss or gradient
ends a run early. Invariant: every process of a job stops after the same step, since the save is
collective. `stop_at` and the NaN flag agree by construction; a signal does not, so multi-process
runs let JAX's preemption sync manager agree on the step and install no Python SIGTERM handler
(it would replace JAX's C++ one); a single process sets a flag from a Python handler.
How the step is agreed: docs/reliability.md.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable

import jax
from jax.experimental import multihost_utils


def _sync_point(counter: int) -> bool | None:
  """Whether every process has agreed to stop at `counter`; None if JAX's preemption service
  is off (`jax_enable_preemption_service`), when SIGTERM keeps its default action.

  Counters are 1, 2, ... once per loop step; all processes start the loop from the same
  restored step, so the n-th call is the same step everywhere. A process that has not called
  yet counts as 0, so a notice during startup makes 1 the sync point. These calls must be the
  only ones: Orbax's own check (with the step as counter) is off in runtime/checkpointing.py."""
  try:
    return multihost_utils.reached_preemption_sync_point(counter)
  except RuntimeError:
    return None


def _warn_if_service_off() -> None:
  # Before the loop, counter 0 is JAX's own initial value: asking for it changes nothing.
  if _sync_point(0) is None:
    logging.warning("JAX's preemption service is off (jax_enable_preemption_service): SIGTERM "
                    "will stop this process without a checkpoint, and its peers with an error")


class _LocalSignal:
  """One process: turns SIGTERM into a flag the loop reads after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self) -> None:
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and stopping after this step")
    self.requested = True

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _CtrlC:
  """SIGINT inside the loop: the first one saves and stops as SIGTERM does (it sends this
  process a SIGTERM, so in a multi-process job JAX's notifier sees it and every process
  agrees), the second exits at once with status 130 and no checkpoint."""

  def __init__(self):
    self._count = 0
    self._previous = None

  def install(self) -> None:
    try:
      self._previous = signal.signal(signal.SIGINT, self._handle)
    except ValueError:  # not the main thread
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self._count += 1
    if self._count > 1:
      logging.warning("second Ctrl-C: exiting now, without a checkpoint")
      for handler in logging.getLogger().handlers:
        handler.flush()
      sys.stderr.flush()
      os._exit(130)  # at once: no waiting for saves or threads
    logging.warning("Ctrl-C: saving a checkpoint and stopping after this step "
                    "(Ctrl-C again to exit at once, without one)")
    os.kill(os.getpid(), signal.SIGTERM)

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


class StopRule:
  """After every train step, says whether the loop ends there; the same answer on every process.

  Use as a context manager around the loop and call `stop_now` exactly once per step: in a
  multi-process job a skipped call can skip the agreed sync point.
  """

  def __init__(self, *, stop_at: int | None = None):
    self._stop_at = stop_at
    self._multi = jax.process_count() > 1
    self._local = _LocalSignal()
    self._ctrl_c = _CtrlC()
    self._calls = 0

  def __enter__(self) -> StopRule:
    if self._multi:
      _warn_if_service_off()
    else:
      self._local.install()
    self._ctrl_c.install()
    return self

  def __exit__(self, *exc) -> None:
    self._ctrl_c.restore()
    if not self._multi:
      self._local.restore()

  def _preempted(self, step: int) -> bool:
    if not self._multi:
      return self._local.requested
    self._calls += 1
    if not _sync_point(self._calls):
      return False
    logging.warning("preemption notice (SIGTERM to at least one process): every process stops "
                    "after step %d and saves it", step)
    return True

  def preempted_now(self, step: int) -> bool:
    """Between the blocks of the evaluation of `step` (saved before it; the same count of calls
    on every process): whether a preemption notice asks to stop now. Advances the same
    sync-point counter as `stop_now`."""
    return self._preempted(step)

  def stop_now(self, step: int, *, check_finite: Callable[[], None] | None = None
               ) -> str | None:
    """"preempted", "stop_at" or None: whether the loop stops after `step`.

    `check_finite` (given on log steps) raises FloatingPointError when the state went
    non-finite: it reads the replicated state, so every process raises after the same step.
    The preemption check comes before `stop_at` so that its counter advances on every step.
    """
    if check_finite is not None:
      check_finite()
    if self._preempted(step):
      return "preempted"
    if step == self._stop_at:
      return "stop_at"
    return None
