"""When the training loop stops before `num_steps`, decided the same way on every process.

Three things end a run early: a preemption notice (SIGTERM), `stop_at` (time-boxed jobs, resume
tests) and a non-finite loss or gradient. In a multi-process job every process must stop after
the same step: the checkpoint save is collective (Orbax coordinates every process's writes), so a
process that stops alone waits in the save for peers that wait for it in the next step's
collectives, and the job hangs without a checkpoint. `stop_at` and the NaN flag are the same on
every process by construction (a flag, and a value of the replicated state). A signal is not: it
reaches the processes at different moments, or only some of them.

Multi-process: JAX's preemption sync manager decides. `jax.distributed.initialize` creates it,
and its notifier installs a C++ SIGTERM handler (`std::signal`) that only sets a flag; a thread
polls that flag every second, tells the coordination service, and every process then runs a
background protocol: each publishes the last counter it passed to
`multihost_utils.reached_preemption_sync_point`, they meet at a barrier, and all take the largest
counter + 1 as the sync point. Calls block while the protocol holds its lock, so no process can
pass the sync point before it is known, and the call that passes it returns True on every
process. A Python `signal.signal(SIGTERM, ...)` replaces that C++ handler (both use the process's
one SIGTERM disposition) and the notice never arrives, so multi-process runs install none.

Single process: no coordination service exists (the sync point call returns False), so a Python
handler sets a flag that the loop reads after each step.

Ctrl-C (SIGINT) stops the same way: inside the loop a handler turns the first one into a
SIGTERM to this process (so in a multi-process job JAX's notifier sees it and every process
agrees), and a second Ctrl-C exits at once, with status 130 and no checkpoint.

Counters: 1, 2, ... once per loop step. All processes start the loop from the same restored step,
so the n-th call is the same step everywhere. A process that has not called yet counts as 0 (JAX's
initial value), so a notice during startup makes 1 the sync point: the job stops after its first
step. These calls must be the only ones: Orbax's own check (with the step as counter) is switched
off in simlap/checkpointing.py.
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
  is off (`jax_enable_preemption_service`), when SIGTERM keeps its default action."""
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
  """SIGINT inside the loop: the first one saves and stops as SIGTERM does, the second exits."""

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
