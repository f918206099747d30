"""benchmarks/accelerator_check.sh (the GPU check): its syntax, and the one table it writes
from the raw outputs of step_bench, input_bench and simlap.main (formats as they print them)."""
from __future__ import annotations
import json
import os
import subprocess

from benchmarks import accelerator_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_OK = """# step_bench 2026-11-30 host | 1 x NVIDIA H100 80GB HBM3 (gpu), 26 host cores | `...`
| backbone | image | batch | dtype | compile s | step ms (median) | images/s | views/s | views/s/device | GFLOP/step/device | temp MiB | MFU |
|---|---|---|---|---|---|---|---|---|---|---|---|
| resnet50 | 224x224x3 | 256 | bfloat16 | 41.2 | 110.5 | 2317 | 4633 | 4633 | 6297.6 | 30123 | 57.6% |
"""  # noqa: E501  (step_bench's lines as printed)
STEP_FAILED = ("| resnet50 | 224x224x3 | 512 | bfloat16 | failed: RESOURCE_EXHAUSTED: Out of "
               "memory |\n")
INPUT = """
load average (1, 5, 15 min) after the run: (9.1, 8.0, 7.2), 26 cores
reader              cores  views/s views/s/core views/CPU-s  B/view  steady min@edge  ratio resume s
stream                  1      402          402         410  150528     400      384   0.96     1.95
random_access          26     9012          347         355  150528    9100     8900   0.98     0.40
"""


def test_script_parses():
  subprocess.run(["bash", "-n", os.path.join(REPO, "benchmarks", "accelerator_check.sh")],
                 check=True)


def test_table_from_raw_outputs(tmp_path):
  (tmp_path / "step_256.md").write_text(STEP_OK)
  (tmp_path / "step_512.md").write_text(STEP_FAILED)
  (tmp_path / "input.txt").write_text(INPUT)
  (tmp_path / "fmnist").mkdir()
  (tmp_path / "fmnist" / "summary.json").write_text(json.dumps(
      {"step": 234, "preempted": False, "workdir": "x", "knn_accuracy": 0.81234567}))
  (tmp_path / "main.seconds").write_text("95\n")
  accelerator_table.main(["accelerator_table", str(tmp_path)])
  lines = (tmp_path / "accelerator_check.md").read_text().splitlines()
  assert lines[0] == "| check | setting | result |" and len(lines) == 2 + 3 + 2 + 1
  assert lines[2].endswith("global batch 128 | not run |")
  assert lines[3].endswith(
      "| 4633 views/s/GPU, 110.5 ms/step, MFU 57.6%, compile 41.2 s, temp 30123 MiB |")
  assert "failed: RESOURCE_EXHAUSTED: Out of memory" in lines[4]
  assert lines[6] == ("| input_bench | ImageNet-like JPEGs, random_access reader, 26 cores | "
                      "9012 views/s (347 per host core), 150528 B/view, epoch-edge window 0.98 "
                      "of steady, resume 0.40 s |")
  assert lines[7] == ("| simlap.main | configs/default.py, Fashion-MNIST, 1 epoch | 95 s wall; "
                      "step 234, knn_accuracy 0.8123 |")
