"""The training loop around its evaluations: every evaluation step saves first, and a
preemption notice during an evaluation stops it between blocks with that step saved."""
from __future__ import annotations

import os
import signal
from unittest import mock

from simlap.runtime import checkpointing
from simlap.evaluation import online
from simlap.runtime import metrics_io
from simlap.training import loop as train
from simlap.evaluation import progress
from test_train import tiny_config


def _config(data_dir):
  # Evaluations at 3 and 6: off the every-4 checkpoint cadence, as in1k's 25,000 vs 2,000.
  return tiny_config(data_dir, eval_every=3, **{"dataset.train_split": "train[:512]",
                                                "dataset.eval_split": "test[:256]"})


def _recorded(events, *, sigterm_in_eval=False):
  real_eval, real_save = online.evaluate_online, checkpointing.Checkpointer.save

  def evaluate(config, model, state, mesh, num_classes, **kwargs):
    step = int(state.step)
    events.append(("eval", step))
    if sigterm_in_eval:  # the notice arrives while the evaluation runs
      os.kill(os.getpid(), signal.SIGTERM)
    try:
      return real_eval(config, model, state, mesh, num_classes, **kwargs)
    except progress.Interrupted:
      events.append(("interrupted", step))
      raise

  def save(self, step, *args, **kwargs):
    events.append(("save", int(step)))
    return real_save(self, step, *args, **kwargs)

  return (mock.patch.object(online, "evaluate_online", evaluate),
          mock.patch.object(checkpointing.Checkpointer, "save", save))


def test_every_evaluation_step_saves_before_evaluating(fmnist_data_dir, tmp_path):
  events = []
  p_eval, p_save = _recorded(events)
  with p_eval, p_save:
    summary = train.train_and_evaluate(_config(fmnist_data_dir), str(tmp_path / "w"))
  assert summary["step"] == 8 and not summary["preempted"]
  assert events == [("save", 3), ("eval", 3), ("save", 4), ("save", 6), ("eval", 6),
                    ("save", 8)]
  assert "eval/knn_accuracy" in summary


def test_sigterm_during_an_evaluation_stops_it_with_the_step_saved(fmnist_data_dir, tmp_path):
  events = []
  workdir = str(tmp_path / "w")
  p_eval, p_save = _recorded(events, sigterm_in_eval=True)
  with p_eval, p_save:
    summary = train.train_and_evaluate(_config(fmnist_data_dir), workdir)
  # Saved before the evaluation, interrupted after its first block, nothing trained after.
  assert events == [("save", 3), ("eval", 3), ("interrupted", 3)]
  assert summary["step"] == 3 and summary["preempted"]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert not any("eval/knn_accuracy" in r for r in rows)  # no half evaluation reported
  # The job resumes from step 3 and finishes.
  resumed = train.train_and_evaluate(_config(fmnist_data_dir), workdir)
  assert resumed["step"] == 8 and not resumed["preempted"]
