"""Evaluate a training workdir: restore its checkpoint, extract frozen features, score, report.

    results = evaluate_workdir("runs/x")  # -> runs/x/eval/{results.json, report.md, *.png}

Pipeline: W/config.json (`workdir.load_config`) -> Orbax restore of the latest (or a given)
step into the trainer's sharded abstract state -> `evaluation.bank.extract_bank` over the eval
stream for the train split (kNN bank, probe training set, few-shot pool: it stays on the
devices, split by rows) and the test split -> distributed kNN, data-parallel linear probe and
few-shot (simlap/evaluation/) and the analyses of `evaluation.analysis` (test split, on the host) ->
results.json + report.md + PNGs. A URL workdir (gs://) is read and written through
`simlap.runtime.storage`; its PNGs are drawn locally and uploaded.

Gates exist only where the objective trains them (`objectives.trains_gates`: simlap, or moco with a
gated term, and a non-open gate); otherwise every gate entry is null.
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
import jax.numpy as jnp
import ml_collections
import numpy as np

from simlap.evaluation import analysis
from simlap.runtime import checkpointing
from simlap.evaluation import geometry
from simlap import objectives
from simlap.evaluation import report
from simlap.runtime import sharding
from simlap.runtime import storage
from simlap.training import state as state_lib
from simlap.runtime import workdir as workdir_lib
from simlap.data import datasets
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import knn as knn_lib
from simlap.evaluation import probes
from simlap.evaluation import robustness as robustness_lib
from simlap.evaluation import transfer_eval
from simlap.data import fashion_mnist
from simlap.models import gates as gates_lib

RESULTS_KEYS = ("workdir", "step", "method", "objective", "budget", "dataset", "protocol",
                "online_probe", "knn", "linear_probe", "few_shot", "robustness", "transfer",
                "analysis", "summary", "timing_s")
# The flat headline numbers (`results["summary"]`) that simlap.compare aggregates.
SUMMARY_KEYS = ("knn_10", "knn_20", "knn_50", "linear", "few_shot_1", "few_shot_5",
                "few_shot_10", "few_shot_25", "online_probe", "effective_rank_backbone",
                "effective_rank_projector", "auroc_backbone", "auroc_projector",
                "auroc_projector_gated", "auroc_projector_pair_gated", "group_recovery_gate",
                "group_recovery_class_mean_projector", "group_recovery_class_mean_backbone",
                "group_recovery_chance", "gate_activation_mean", "gate_frac_intermediate",
                "pair_size_within", "pair_size_across", "pair_size_within_vs_across_auroc",
                "robustness_clean", "robustness_mca", "robustness_relative_error")
FASHION_MNIST_NAMES = (fashion_mnist.NAME, "fashion_mnist")
_PAIR_GATES_MAX_CLASSES = 100  # (C, C, D) pair gates are materialised only for small C


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


def gate_tables(config, model, state, num_classes: int):
  """(class gates (C, D), pair sizes (C, C), pair gates (C, C, D) or None), or all None.

  BatchNorm runs in inference mode (the gate module's analysis methods), read-only.
  """
  if not objectives.get(config.objective).trains_gates(config):
    return None, None, None
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  class_gates = jax.jit(lambda v: model.apply(v, method="class_gates"))(variables)
  sizes = jax.jit(lambda v: gates_lib.pair_matrix(model, v, num_classes))(variables)
  pair = None
  if num_classes <= _PAIR_GATES_MAX_CLASSES:
    y = jnp.arange(num_classes, dtype=jnp.int32)
    pair = jax.jit(lambda v: model.apply(v, jnp.repeat(y, num_classes), jnp.tile(y, num_classes),
                                         method="pair_gates"))(variables)
    pair = np.asarray(pair).reshape(num_classes, num_classes, -1)
  return np.asarray(class_gates), np.asarray(sizes), pair


def known_groups(config, test: dict[str, np.ndarray]):
  """(groups, source) for group recovery: Fashion-MNIST's tops/footwear, CIFAR-100-style
  coarse labels when the data carry "coarse_label", else (None, None)."""
  if config.dataset.name in FASHION_MNIST_NAMES:
    return [list(g) for g in fashion_mnist.GROUPS], "fashion_mnist tops/footwear"
  if "coarse_label" in test:
    return analysis.coarse_groups(test["labels"], test["coarse_label"]), "coarse_label"
  return None, None


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
    linear: keyword overrides for `evaluators.linear_probe` (epochs, lr, ...); default protocol.
    num_pairs: sampled pairs per kind for the intra/inter AUROCs (test split).
    plots: write the analysis PNGs into `out_dir`.
    robustness: None, or keyword arguments of `robustness.evaluate_robustness` (corruptions,
      severities, seed) to score the ridge probe under corruptions ({}: the defaults).
    transfer: transfer targets (`simlap.data.transfer.TARGETS`) for kNN and few-shot.
    transfer_data_dir: TFDS data dir of the targets; default the run's dataset.data_dir.

  Returns:
    The results dict (exactly `RESULTS_KEYS`), as written to results.json (NaN -> null).
  """
  t0 = time.time()
  workdir = workdir_lib.resolve(workdir)
  out_dir = out_dir or os.path.join(workdir, "eval")
  config = workdir_lib.load_config(workdir)
  model, state, mesh, info, step = restore(config, workdir, step)
  num_classes = info.num_classes
  timing = {"restore": time.time() - t0}

  # The train bank stays on the devices, split by rows; only the test split's rows reach the
  # host (the analyses need them).
  t = time.time()
  d = config.dataset
  parts: dict[str, float] = {}
  train_bank = bank_lib.extract_bank(config, model, state, mesh, d.train_split,
                                     embeddings=True, timings=parts)
  test_bank = bank_lib.extract_bank(config, model, state, mesh, d.eval_split, embeddings=True,
                                    timings=parts)
  te = test_rows(test_bank)
  timing["features"] = time.time() - t

  t = time.time()
  knn = {name: {int(k): v for k, v in knn_lib.knn_predict(
      train_bank, test_bank, feature=col, num_classes=num_classes, ks=ks,
      temperature=temperature, name=f"knn {name}", timings=parts)["accuracy"].items()}
      for name, col in (("backbone", "features"), ("projector", "embeddings"))}
  timing["knn"] = time.time() - t
  t = time.time()
  lin = probes.linear_probe(train_bank, test_bank, num_classes=num_classes, **(linear or {}))
  timing["linear_probe"] = time.time() - t
  t = time.time()
  few = probes.few_shot_ridge(train_bank, test_bank, num_classes=num_classes, shots=shots,
                              seeds=seeds, lam=lam)
  timing["few_shot"] = time.time() - t
  logging.info("evaluation parts: %s", ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))

  # matplotlib writes local files: for a URL out_dir the PNGs are drawn into a temporary folder
  # and copied at the end; a local out_dir gets them directly.
  remote = workdir_lib.is_remote(out_dir)
  png_dir = None
  if plots and jax.process_index() == 0:  # only process 0 writes
    png_dir = tempfile.mkdtemp(prefix="simlap-eval-") if remote else out_dir
  shift = {"robustness": None, "transfer": None}
  if robustness is not None:
    t = time.time()
    picture = os.path.join(png_dir, robustness_lib.PICTURE) if png_dir else None
    shift["robustness"] = robustness_lib.evaluate_robustness(
        config, model, state, mesh, train_bank, test_bank, num_classes=num_classes,
        lam=lam, picture_path=picture, **robustness)
    timing["robustness"] = time.time() - t
  if transfer:
    t = time.time()
    shift["transfer"] = transfer_eval.evaluate_transfer(
        config, model, state, mesh, transfer, k=20, temperature=temperature, shots=shots,
        seeds=seeds, lam=lam,
        data_dir=d.data_dir if transfer_data_dir is None else transfer_data_dir)
    timing["transfer"] = time.time() - t

  t = time.time()
  class_gates, pair_sizes, pair_gates = gate_tables(config, model, state, num_classes)
  groups, group_source = known_groups(config, te)
  feats = {"backbone": te["backbone"], "projector": te["projector"]}
  ana = analysis.analyze(feats, te["labels"], num_classes=num_classes, class_gates=class_gates,
                         pair_sizes=pair_sizes, gated_features="projector",
                         class_names=list(info.class_names), groups=groups,
                         num_pairs=num_pairs, seed=0, out_dir=png_dir)
  ana["group_source"] = group_source
  if pair_gates is not None:
    # Inter-class pairs compared in their own pair subspace g(y_i, y_j): the subspace in
    # which the loss pulls arbitrary pairs together, so a low AUROC here is by design.
    stats = geometry.intra_inter_similarity(te["projector"], te["labels"], gates=pair_gates,
                                            num_pairs=num_pairs, seed=0)
    ana["similarity"]["projector_pair_gated"] = analysis.jsonable(stats)
    if png_dir:
      from simlap.evaluation import plots as plots_lib  # noqa: PLC0415 - matplotlib only for pictures
      plots_lib.plot_intra_inter(stats, os.path.join(png_dir, "intra_inter_projector_pair_gated"
                                                     ".png"), title="projector_pair_gated")
      ana["plots"].append("intra_inter_projector_pair_gated.png")
  timing["analysis"] = time.time() - t

  online = float(np.mean(te["predictions"] == te["labels"]))
  res = {
      "workdir": workdir, "step": step, "method": config.get("method"),
      "objective": config.objective,
      "budget": budget(config, info.num_train),
      "dataset": {"name": d.name, "train_split": d.train_split, "test_split": d.eval_split,
                  "num_train": train_bank.num_examples, "num_test": int(te["labels"].size),
                  "num_classes": num_classes, "class_names": list(info.class_names)},
      "protocol": {
          "features": "frozen, eval transform, BatchNorm in inference mode",
          "knn": {"ks": [int(k) for k in ks], "temperature": float(temperature),
                  "similarity": "cosine (L2-normalised)", "bank": d.train_split},
          "linear_probe": lin["hparams"],
          "few_shot": {"shots": [int(s) for s in shots], "seeds": [int(s) for s in seeds],
                       "lam": float(lam), "features": "backbone, L2-normalised, + bias"},
          "analysis": {"split": d.eval_split, "num_pairs": int(num_pairs),
                       "gated": "class gates g(y, y) of the anchor's class"},
          "transfer": transfer_eval.protocol(config, k=20, temperature=temperature,
                                             shots=shots, seeds=seeds, lam=lam)
                      if transfer else None},
      "online_probe": online,
      "knn": {name: {str(k): v for k, v in accs.items()} for name, accs in knn.items()},
      "linear_probe": lin,
      "few_shot": {**few, "shots": {str(k): v for k, v in few["shots"].items()}},
      **shift,
      "analysis": ana,
  }
  res["summary"] = headline(res)
  res["timing_s"] = {k: round(v, 2) for k, v in {**timing, "total": time.time() - t0}.items()}
  res = analysis.jsonable(res)  # NaN -> null, numpy -> Python
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(out_dir, "results.json"), res, indent=1)
    workdir_lib.write_text(os.path.join(out_dir, "report.md"), report.markdown(res))
    pictures = ana.get("plots", []) + [_get(res, "robustness", "picture")]
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
