"""simlap.compare's files on URL workdirs: listed, written and plotted through runtime.storage.

fsspec's in-process "memory://" store stands in for gs:// (the same runtime.storage calls; not a
local path): os.listdir of it finds nothing, and os.makedirs would create a local "memory:"
tree. tests/test_gcs_emulator.py runs the same code against a storage server.
"""
from __future__ import annotations

import os
import uuid

from simlap.evaluation import plots
from simlap.runtime import storage
from simlap.runtime import workdir as workdir_lib


def test_checkpoint_steps_of_a_url_run():
  run = f"memory://simlap_{uuid.uuid4().hex}/cmp/simlap/seed0"
  for name in ("4", "6", "6.damaged", "8.orbax-checkpoint-tmp"):
    storage.write_bytes(f"{run}/checkpoints/{name}/x", b"")
  assert workdir_lib.checkpoint_steps(f"{run}/checkpoints") == [4, 6]
  assert workdir_lib.checkpoint_steps(f"{run}/nothing/checkpoints") == []


def test_compare_outputs_and_plots_go_to_the_url():
  root = workdir_lib.prepare(f"memory://simlap_{uuid.uuid4().hex}/cmp")
  assert root.startswith("memory://") and not os.path.exists("memory:")
  workdir_lib.write_text(f"{root}/comparison.md", "| a |\n")
  fig = plots.gate_histogram_figure([0.1, 0.5, 0.9])
  plots.save_png(fig, f"{root}/curves.png")
  assert storage.read_bytes(f"{root}/curves.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(workdir_lib.listdir(root)) == ["comparison.md", "curves.png"]
  assert not os.path.exists("memory:")
