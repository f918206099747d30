"""Every process of a job restores the same step, when reading fails on one process only.

2 processes x 4 CPU devices (`python -m simlap.main`, as tests/test_preemption.py) resume the
shared straight run's workdir (checkpoints 8 and 10), with a read error injected into process
1's restore of step 10 (tests/fault_injection/sitecustomize.py):

  * once (transient): the retry reads it, both processes resume from step 10, nothing is set
    aside;
  * always: both processes agree that step 10 is unreadable, set it aside once, restore step 8
    and end bitwise equal to the straight run (before the verdicts were all-gathered, process 1
    alone went into the set-aside barriers and the job hung).
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from simlap import checkpointing

from test_preemption import STEPS, Jobs, assert_same_as, jobs, straight, straight_state  # noqa: F401

FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_injection")
AGREE_TIMEOUT_S = 240  # a hang shows as a timeout; a good run takes ~30-60 s on 2 busy cores


def _resume_with_read_failure(jobs: Jobs, straight: str, tmp_path, monkeypatch, name: str,  # noqa: F811
                              times: int):
  workdir = str(tmp_path / name)
  shutil.copytree(straight, workdir, ignore=shutil.ignore_patterns("logs", "events.*"))
  os.remove(os.path.join(workdir, "summary.json"))
  monkeypatch.setenv("SIMLAP_TEST_FAIL_RESTORE", f"1:{STEPS}:{times}")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([FAULTS, os.environ.get("PYTHONPATH", "")]))
  job, _ = jobs.start(name, f"--config.num_steps={STEPS}", "--config.checkpoint_every=4",
                      "--config.keep_checkpoints=2", workdir=workdir)
  try:
    codes = job.wait(AGREE_TIMEOUT_S)
  finally:
    job.kill()
  assert codes == [0, 0], f"exit codes {codes}\n{job.tails()}"
  return job, workdir


@pytest.mark.slow
def test_a_transient_read_error_on_one_process_is_retried(jobs, straight, tmp_path,  # noqa: F811
                                                          monkeypatch):
  job, workdir = _resume_with_read_failure(jobs, straight, tmp_path, monkeypatch, "transient", 1)
  assert "injected, read 1" in job.log(1) and "retrying" in job.log(1)
  for i in range(2):
    assert f"resumed from the checkpoint at step {STEPS} of {STEPS}" in job.log(i), job.tails()
    assert "falling back to an older one" not in job.log(i)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(["8", str(STEPS)])


@pytest.mark.slow
def test_a_read_error_on_one_process_sends_both_to_the_same_step(jobs, straight,  # noqa: F811
                                                                 straight_state, tmp_path,  # noqa: F811
                                                                 monkeypatch):
  job, workdir = _resume_with_read_failure(jobs, straight, tmp_path, monkeypatch, "persistent",
                                           99)
  for i in range(2):
    log = job.log(i)
    assert f"checkpoint at step {STEPS} in" in log and "falling back to an older one" in log, \
        job.tails()
    assert f"resumed from the checkpoint at step 8 of {STEPS}" in log, job.tails()
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpts)) == sorted(["8", str(STEPS), f"{STEPS}.damaged"])
  assert_same_as(straight, straight_state, workdir, jobs.data_dir)


def test_the_restore_barrier_is_the_one_orbax_waits_at(tmp_path, monkeypatch):
  """A process whose read failed joins Orbax's end-of-restore barrier by name: that name must
  be the one Orbax uses, or the peers' barrier never completes."""
  multihost = checkpointing.ocp.multihost
  names, original = [], multihost.sync_global_processes
  monkeypatch.setattr(multihost, "sync_global_processes",
                      lambda name, **kw: names.append(name) or original(name, **kw))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=2)
  ckpt.save(1, {"w": np.zeros(3, np.float32)}, {"step": 1})
  ckpt.wait()
  names.clear()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt.restore({"w": jax.ShapeDtypeStruct((3,), np.float32, sharding=device)})
  ckpt.close()
  assert names == [checkpointing.RESTORE_BARRIER], names
