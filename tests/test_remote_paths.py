"""simlap.compare's files on URL workdirs: listed, written and plotted through tf.io.gfile.

TensorFlow's in-memory "ram://" file system stands in for gs:// (the same tf.io.gfile calls; not
a local path): os.listdir of it finds nothing, and os.makedirs would create a local "ram:" tree.
"""
from __future__ import annotations

import os
import uuid

import tensorflow as tf

from simlap import compare_steps
from simlap import plots
from simlap import workdir as workdir_lib


def test_checkpoint_steps_of_a_url_run():
  run = f"ram://simlap_{uuid.uuid4().hex}/cmp/simlap/seed0"
  for name in ("4", "6", "6.damaged", "8.orbax-checkpoint-tmp"):
    tf.io.gfile.makedirs(f"{run}/checkpoints/{name}")
  assert compare_steps.checkpoint_steps(run) == [4, 6]
  assert compare_steps.checkpoint_steps(f"{run}/nothing") == []


def test_compare_outputs_and_plots_go_to_the_url():
  root = workdir_lib.prepare(f"ram://simlap_{uuid.uuid4().hex}/cmp")
  assert root.startswith("ram://") and not os.path.exists("ram:")
  workdir_lib.write_text(f"{root}/comparison.md", "| a |\n")
  fig = plots.gate_histogram_figure([0.1, 0.5, 0.9])
  plots.save_png(fig, f"{root}/curves.png")
  with tf.io.gfile.GFile(f"{root}/curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(workdir_lib.listdir(root)) == ["comparison.md", "curves.png"]
  assert not os.path.exists("ram:")
