"""Test-only fault injection, imported at interpreter start when this folder is on PYTHONPATH.

SIMLAP_TEST_FAIL_RESTORE="<process>:<step>:<times>" makes Orbax's `CheckpointManager.restore`
of `step` raise an OSError (as a flaky network file system would) the first `times` times it is
called on process `<process>` only (tests/test_preemption.py).
"""
from __future__ import annotations
import os

_SPEC = os.environ.get("SIMLAP_TEST_FAIL_RESTORE")
if _SPEC:
  import jax
  import orbax.checkpoint as ocp

  _PROCESS, _STEP, _TIMES = (int(x) for x in _SPEC.split(":"))
  _original = ocp.CheckpointManager.restore
  _failed = []

  def _restore(self, step, *args, **kwargs):
    if jax.process_index() == _PROCESS and step == _STEP and len(_failed) < _TIMES:
      _failed.append(step)
      raise OSError(5, f"Input/output error (injected, read {len(_failed)} of step {step})")
    return _original(self, step, *args, **kwargs)

  ocp.CheckpointManager.restore = _restore
