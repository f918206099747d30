"""`python -m simlap.evaluate` as 2 real processes x 4 CPU devices gives the results.json of
1 process x 8 devices: each process reads its slice of every split (corrupted ones and transfer
targets too), the banks are sharded over both processes, and only process 0 writes and prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simlap.evaluation import run as eval_workdir
from simlap.training import loop as train
from test_multiprocess import HEARTBEAT_S, Job, PROCESSES, REPO, _child_env, _free_port
from test_train import tiny_config

LINEAR_EPOCHS = 3  # the probe protocol shortened: seconds on 2 cores


def start_evaluate(workdir: str, out_dir: str, log_dir: str, cache_dir: str,
                   extra: tuple[str, ...] = ()) -> Job:
  port = _free_port()
  procs, logs = [], []
  for i in range(PROCESSES):
    logs.append(os.path.join(log_dir, f"evaluate{i}.log"))
    with open(logs[-1], "w", encoding="utf-8") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "simlap.evaluate", f"--workdir={workdir}",
           f"--out_dir={out_dir}", "--noplots", f"--linear_epochs={LINEAR_EPOCHS}",
           f"--coordinator_address=localhost:{port}", f"--num_processes={PROCESSES}",
           f"--process_id={i}", f"--heartbeat_timeout_seconds={HEARTBEAT_S}", *extra],
          cwd=REPO, env=_child_env(cache_dir), stdin=subprocess.DEVNULL, stdout=log,
          stderr=subprocess.STDOUT, start_new_session=True))
  return Job(procs, logs)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


@pytest.mark.slow
def test_two_process_evaluate_equals_one_process(fmnist_data_dir, tmp_path, num_devices):
  del num_devices
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_config(fmnist_data_dir), workdir)
  # Process 0 prepares digits into its own data dir while process 1 waits for it.
  shift = ("--robustness", "--corruptions=gaussian_noise", "--transfer=digits",
           f"--transfer_data_dir={tmp_path / 'tfds_two'}")
  job = start_evaluate(workdir, str(tmp_path / "two"), str(tmp_path), str(tmp_path / "cache"),
                       shift)
  try:
    one = eval_workdir.evaluate_workdir(workdir, plots=False, linear={"epochs": LINEAR_EPOCHS},
                                        out_dir=str(tmp_path / "one"),
                                        robustness={"corruptions": ["gaussian_noise"]},
                                        transfer=["digits"])
    codes = job.wait(300)
  finally:
    job.kill()
  assert codes == [0] * PROCESSES, job.tails()
  with open(tmp_path / "two" / "results.json", encoding="utf-8") as f:
    two = json.load(f)
  one = json.loads(json.dumps(one))
  # Only process 0 prints (and writes): a process that skipped the distributed start-up
  # believes it is process 0 of 1 and prints its own summary.
  assert "results:" in job.log(0) and "results:" not in job.log(1), job.tails()
  s1, s2 = one["summary"], two["summary"]
  for key in ("knn_10", "knn_20", "knn_50", "few_shot_1", "few_shot_5", "few_shot_10",
              "few_shot_25", "online_probe"):
    assert s1[key] == s2[key], key  # layout-independent by construction: exactly equal
  # The probe's gradients are summed over devices in another order: round-off only.
  assert s2["linear"] == pytest.approx(s1["linear"], abs=2 / 512)
  assert one["dataset"] == two["dataset"]
  # Each process corrupts its slice with the images' split positions: the same test images.
  r1, r2 = one["robustness"], two["robustness"]
  assert r1["num_test"] == r2["num_test"] == 512 and r1["sources"] == r2["sources"]
  for s in ("1", "2", "3", "4", "5"):  # the ridge's Gram sums are grouped by device: round-off
    assert r2["accuracy"]["gaussian_noise"][s] == pytest.approx(
        r1["accuracy"]["gaussian_noise"][s], abs=2 / 512), s
  t1, t2 = one["transfer"]["digits"], two["transfer"]["digits"]
  assert (t2["num_train"], t2["num_test"]) == (1438, 359)
  assert t1["knn_accuracy"] == t2["knn_accuracy"]
  assert t1["few_shot"] == t2["few_shot"]
  f1, f2 = _flat(one["analysis"]), _flat(two["analysis"])
  assert set(f1) == set(f2)
  for key, v in f1.items():
    if isinstance(v, float):
      assert f2[key] == pytest.approx(v, rel=1e-4, abs=1e-5), key
