"""Evaluate a training workdir: restore its checkpoint, extract frozen features, score, report.

    results = evaluate_workdir("runs/x")  # -> runs/x/eval/{results.json, report.md, *.png}

Pipeline: W/config.json (`workdir.load_config`) -> Orbax restore of the latest (or a given)
step into the trainer's sharded abstract state -> `evaluation.bank.extract_bank` over the eval
stream for the train split (kNN bank, probe training set, few-shot pool: it stays on the
devices, split by rows) and the test split -> the evaluators its arguments list
(`evaluation.evaluators`: kNN, linear probe, few-shot, robustness, transfer, analyses) ->
results.json + report.md + PNGs. A URL workdir (gs://) is read and written through
`simlap.runtime.storage`; its PNGs are drawn locally and uploaded.

results.json has exactly `RESULTS_KEYS`; each evaluator's result sits under its name (None when
not listed), its protocol entry under "protocol"/<name>, its seconds under "timing_s"/<name>.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from simlap import objectives
from simlap.data import datasets
from simlap.evaluation import analysis
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import evaluators
from simlap.evaluation import progress
from simlap.evaluation import report
from simlap.runtime import checkpointing
from simlap.runtime import sharding
from simlap.runtime import storage
from simlap.runtime import workdir as workdir_lib
from simlap.training import state as state_lib

# The evaluators' slots in results.json, in its order; report.md reads the REPORTED ones.
EVALUATOR_KEYS = ("knn", "linear_probe", "few_shot", "robustness", "transfer", "analysis")
REPORTED = ("knn", "linear_probe", "few_shot", "analysis")
PROTOCOL_KEYS = ("knn", "linear_probe", "few_shot", "analysis", "transfer")
RESULTS_KEYS = ("workdir", "step", "method", "objective", "budget", "dataset", "protocol",
                "online_probe", *EVALUATOR_KEYS, "summary", "timing_s")
# The flat headline numbers (`results["summary"]`) that simlap.grid.aggregate aggregates.
SUMMARY_KEYS = ("knn_10", "knn_20", "knn_50", "linear", "few_shot_1", "few_shot_5",
                "few_shot_10", "few_shot_25", "online_probe", "effective_rank_backbone",
                "effective_rank_projector", "auroc_backbone", "auroc_projector",
                "auroc_projector_gated", "auroc_projector_pair_gated", "group_recovery_gate",
                "group_recovery_class_mean_projector", "group_recovery_class_mean_backbone",
                "group_recovery_chance", "gate_activation_mean", "gate_frac_intermediate",
                "pair_size_within", "pair_size_across", "pair_size_within_vs_across_auroc",
                "robustness_clean", "robustness_mca", "robustness_relative_error")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
  """(model, state, mesh, info, step) from W/checkpoints (the latest step if `step` is None)."""
  mesh = sharding.make_mesh(config.mesh)
  info = datasets.get_dataset_info(config)
  objective = objectives.get(config.objective)
  model, tx, _ = state_lib.build(config, info, objective, mesh.devices.flat[0].platform)
  abstract, _ = state_lib.abstract_state(config, model, tx, objective, mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every_steps=config.checkpoint_every,
                                    keep=config.keep_checkpoints)
  try:
    restored = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
  state, _, step = restored
  return model, state, mesh, info, int(step)


def test_rows(bank: bank_lib.Bank) -> dict[str, np.ndarray]:
  """Real rows of the test bank on the host, for the analyses: "backbone" (N, F), "projector"
  (N, D), "labels" (N,), "predictions" (N,) (online probe) and extra label keys (N,)."""
  names = [n for n in bank.columns if n not in ("index", "mask")]
  rename = {"features": "backbone", "embeddings": "projector"}
  return {rename.get(k, k): v for k, v in bank_lib.host_rows(bank, names).items()}


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------
def _get(d: Any, *path, default=None):
  for p in path:
    if not isinstance(d, dict) or d.get(p) is None:
      return default
    d = d[p]
  return d


def headline(res: dict[str, Any]) -> dict[str, float | None]:
  """The flat `SUMMARY_KEYS` numbers of one results dict (None where not applicable)."""
  a = res["analysis"]
  s = {f"knn_{k}": v for k, v in res["knn"]["backbone"].items()}
  s["linear"] = res["linear_probe"]["accuracy"]
  s.update({f"few_shot_{k}": v["mean"] for k, v in res["few_shot"]["shots"].items()})
  s["online_probe"] = res["online_probe"]
  for name in ("backbone", "projector"):
    s[f"effective_rank_{name}"] = _get(a, "spectrum", name, "effective_rank")
    s[f"auroc_{name}"] = _get(a, "similarity", name, "auroc")
    s[f"group_recovery_class_mean_{name}"] = _get(a, "class_relationships", "class_mean",
                                                  name, "precision")
  s["auroc_projector_gated"] = _get(a, "similarity", "projector_gated", "auroc")
  s["auroc_projector_pair_gated"] = _get(a, "similarity", "projector_pair_gated", "auroc")
  s["group_recovery_gate"] = _get(a, "class_relationships", "gate", "precision")
  s["group_recovery_chance"] = _get(a, "class_relationships", "class_mean", "projector",
                                    "chance")
  s["gate_activation_mean"] = _get(a, "gates", "activation_mean")
  s["gate_frac_intermediate"] = _get(a, "gates", "frac_intermediate")
  s["pair_size_within"] = _get(a, "pair_sizes", "within_mean")
  s["pair_size_across"] = _get(a, "pair_sizes", "across_mean")
  s["pair_size_within_vs_across_auroc"] = _get(a, "pair_sizes", "within_vs_across_auroc")
  for key, name in (("clean", "clean_accuracy"), ("mca", "mca"),
                    ("relative_error", "relative_corruption_error")):
    s[f"robustness_{key}"] = _get(res, "robustness", name)
  return {k: s.get(k) for k in SUMMARY_KEYS}


def evaluator_list(*, ks: Sequence[int], temperature: float, shots: Sequence[int],
                   seeds: Sequence[int], lam: float, linear: dict[str, Any] | None,
                   num_pairs: int, robustness: dict[str, Any] | None, transfer: Sequence[str],
                   transfer_data_dir: str | None) -> list[evaluators.Evaluator]:
  """The evaluators that `evaluate_workdir`'s arguments list (its Args), in running order:
  knn, linear_probe, few_shot, robustness (if asked), transfer (if targets), analysis."""
  specs: list[tuple[str, dict[str, Any]]] = [
      ("knn", dict(ks=tuple(ks), temperature=temperature)),
      ("linear_probe", dict(linear or {})),
      ("few_shot", dict(shots=tuple(shots), seeds=tuple(seeds), lam=lam))]
  if robustness is not None:
    specs.append(("robustness", dict(lam=lam, **robustness)))
  if transfer:
    specs.append(("transfer", dict(targets=tuple(transfer), k=20, temperature=temperature,
                                   shots=tuple(shots), seeds=tuple(seeds), lam=lam,
                                   data_dir=transfer_data_dir)))
  specs.append(("analysis", dict(num_pairs=num_pairs)))
  return evaluators.build(specs)


def evaluate_workdir(workdir: str, step: int | None = None, *,
                     ks: Sequence[int] = (10, 20, 50), temperature: float = 0.07,
                     shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                     lam: float = 1e-3, linear: dict[str, Any] | None = None,
                     num_pairs: int = 20000, plots: bool = True,
                     out_dir: str | None = None, robustness: dict[str, Any] | None = None,
                     transfer: Sequence[str] = (),
                     transfer_data_dir: str | None = None) -> dict[str, Any]:
  """Evaluates W's checkpoint and writes `out_dir` (default W/eval): results.json, report.md.

  Args:
    workdir: a training workdir (config.json + checkpoints/).
    step: checkpoint step; None = the latest readable one.
    ks, temperature: kNN protocol on L2-normalised backbone (and projector) features.
    shots, seeds, lam: few-shot ridge protocol on backbone features.
    linear: keyword overrides for `probes.linear_probe` (epochs, lr, ...); default protocol.
    num_pairs: sampled pairs per kind for the intra/inter AUROCs (test split).
    plots: write the analysis PNGs into `out_dir`.
    robustness: None, or keyword arguments of `robustness.evaluate_robustness` (corruptions,
      severities, seed) to score the ridge probe under corruptions ({}: the defaults).
    transfer: transfer targets (`simlap.data.transfer.TARGETS`) for kNN and few-shot.
    transfer_data_dir: TFDS data dir of the targets; default the run's dataset.data_dir.

  Returns:
    The results dict (exactly `RESULTS_KEYS`), as written to results.json (NaN -> null).
  """
  evals = evaluator_list(ks=ks, temperature=temperature, shots=shots, seeds=seeds, lam=lam,
                         linear=linear, num_pairs=num_pairs, robustness=robustness,
                         transfer=transfer, transfer_data_dir=transfer_data_dir)
  return evaluate(workdir, step, evals, plots=plots, out_dir=out_dir)


def evaluate(workdir: str, step: int | None, evals: Sequence[evaluators.Evaluator], *,
             plots: bool = True, out_dir: str | None = None) -> dict[str, Any]:
  """`evaluate_workdir` with the evaluators given: each runs once, in order, timed under its
  name; its result and protocol entry land under its name, and one not listed is None."""
  names = [e.name for e in evals]
  if len(set(names)) != len(names) or not set(REPORTED) <= set(names) <= set(EVALUATOR_KEYS):
    raise ValueError(f"evaluators {names}: each at most once, from {EVALUATOR_KEYS}, with "
                     f"{REPORTED} (report.md reads them)")
  t0 = time.time()
  timing: dict[str, float] = {}
  with progress.timed(timing, "restore"):
    workdir = workdir_lib.resolve(workdir)
    out_dir = out_dir or os.path.join(workdir, "eval")
    config = workdir_lib.load_config(workdir)
    model, state, mesh, info, step = restore(config, workdir, step)

  # The train bank stays on the devices, split by rows; only the test split's rows reach the
  # host (the analyses need them).
  d = config.dataset
  parts: dict[str, float] = {}
  with progress.timed(timing, "features"):
    train_bank = bank_lib.extract_bank(config, model, state, mesh, d.train_split,
                                       embeddings=True, timings=parts)
    test_bank = bank_lib.extract_bank(config, model, state, mesh, d.eval_split,
                                      embeddings=True, timings=parts)
    te = test_rows(test_bank)

  # matplotlib writes local files: for a URL out_dir the PNGs are drawn into a temporary folder
  # and copied at the end; a local out_dir gets them directly.
  remote = workdir_lib.is_remote(out_dir)
  png_dir = None
  if plots and jax.process_index() == 0:  # only process 0 writes
    png_dir = tempfile.mkdtemp(prefix="simlap-eval-") if remote else out_dir
  ctx = evaluators.Context(config=config, model=model, state=state, mesh=mesh,
                           num_classes=info.num_classes, class_names=list(info.class_names),
                           train=train_bank, test=test_bank, test_rows=te, png_dir=png_dir,
                           parts=parts)
  logging.info("evaluators: %s", "; ".join(f"{e.name} {e.config}" for e in evals))
  out = evaluators.run_all(evals, ctx, timing)
  logging.info("evaluation parts: %s", ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))

  res = {
      "workdir": workdir, "step": step, "method": config.method,
      "objective": config.objective,
      "budget": budget(config, info.num_train),
      "dataset": {"name": d.name, "train_split": d.train_split, "test_split": d.eval_split,
                  "num_train": train_bank.num_examples, "num_test": int(te["labels"].size),
                  "num_classes": info.num_classes, "class_names": list(info.class_names)},
      # Fixed slots (results.json's layout), filled by the listed evaluators.
      "protocol": {"features": "frozen, eval transform, BatchNorm in inference mode",
                   **dict.fromkeys(PROTOCOL_KEYS), **evaluators.protocols(evals, ctx, out)},
      "online_probe": float(np.mean(te["predictions"] == te["labels"])),
      **{name: out.get(name) for name in EVALUATOR_KEYS},
  }
  res["summary"] = headline(res)
  res["timing_s"] = {k: round(v, 2) for k, v in {**timing, "total": time.time() - t0}.items()}
  res = analysis.jsonable(res)  # NaN -> null, numpy -> Python
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(out_dir, "results.json"), res, indent=1)
    workdir_lib.write_text(os.path.join(out_dir, "report.md"), report.markdown(res))
    pictures = _get(res, "analysis", "plots", default=[]) + [_get(res, "robustness", "picture")]
    for name in [p for p in pictures if p] if remote else ():
      storage.upload(os.path.join(png_dir, name), os.path.join(out_dir, name))
  if png_dir and remote:
    shutil.rmtree(png_dir, ignore_errors=True)
  logging.info("evaluated %s at step %d in %.1f s", workdir, step, time.time() - t0)
  return res


def budget(config, num_train: int) -> dict[str, Any]:
  """What makes two runs comparable: steps, batch, backbone, data, optimizer."""
  return {"num_steps": state_lib.num_steps(config, num_train), "batch_size": config.batch_size,
          "backbone": config.model.backbone, "projector_dim": config.model.projector_dim,
          "image_size": config.dataset.image_size, "optimizer": config.optimizer.name,
          "lr": config.optimizer.lr, "train_split": config.dataset.train_split,
          "num_train": int(num_train)}
