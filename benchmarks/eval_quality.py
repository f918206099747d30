"""Sharded evaluation against the single-device evaluators on real Fashion-MNIST features.

  python -m benchmarks.eval_quality [--steps=300] [--devices=8] [--workdir=W]

Trains a small SimLAP (resnet_tiny, 28x28, batch 256) on the full Fashion-MNIST train split for
--steps steps (or, with --workdir, takes the latest checkpoint of a trained workdir, such as the
main job's runs/default), extracts the row-sharded train (60k) and test (10k) banks on
--devices simulated CPU devices, and prints:
  kNN (k = 10, 20, 50): accuracy and time of the single-device `evaluators.knn_accuracy` (on
    the same features, on the host) and of the distributed kNN at HIGHEST and DEFAULT matmul
    precision and on bfloat16-rounded features (what one bf16 pass on a TPU reads); whether
    the distributed predictions equal the single-device ones;
  linear probe, seeds 0, 1, 2: accuracy and time, single-device vs data-parallel;
  few-shot ridge (1, 5, 10, 25 shots x 3 seeds): whether the results are identical.
"""
from __future__ import annotations

import os
import sys

_DEV = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={_DEV}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from simlap import config_schema  # noqa: E402
from simlap.evaluation import array_eval as evaluators  # noqa: E402
from simlap.runtime import sharding  # noqa: E402
from simlap.training import loop as train  # noqa: E402
from simlap.data import datasets  # noqa: E402
from simlap.evaluation import bank as bank_lib, knn as knn_lib, probes  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 300, "Training steps before the features are taken.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Score this trained workdir instead of training.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices.")
KS = (10, 20, 50)


def config_for(workdir_steps: int):
  c = config_schema.base_config()
  c.model.backbone = "resnet_tiny"
  c.batch_size = 256
  c.eval_batch_size = 1000
  c.num_steps = workdir_steps
  c.log_every = 100
  c.checkpoint_every = workdir_steps
  c.eval_every = 0
  c.eval_at_end = False
  c.gate.embed_dim = 16
  c.model.projector_dim = 64
  return c


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def _restore_trained(config, workdir: str):
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  from simlap.runtime import checkpointing  # noqa: PLC0415
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1)
  state = ckpt.restore(trainer.abstract_state)[0]
  ckpt.close()
  return trainer.model, state, mesh


def main(argv):
  del argv
  if _WORKDIR.value:
    from simlap.evaluation import run as eval_workdir  # noqa: PLC0415
    from simlap.runtime import workdir as workdir_lib  # noqa: PLC0415
    config = workdir_lib.load_config(_WORKDIR.value)
    (model, state, mesh, _, step), t_train = timed(
        lambda: eval_workdir.restore(config, _WORKDIR.value))
    what = f"{_WORKDIR.value} at step {step} (restored in {t_train:.0f} s)"
  else:
    config = config_for(_STEPS.value)
    workdir = tempfile.mkdtemp(prefix="eval-quality-")
    _, t_train = timed(lambda: train.train_and_evaluate(config, workdir))
    model, state, mesh = _restore_trained(config, workdir)
    what = f"{_STEPS.value} training steps in {t_train:.0f} s"
  tr = bank_lib.extract_bank(config, model, state, mesh, "train")
  te = bank_lib.extract_bank(config, model, state, mesh, "test")
  host_tr, host_te = (bank_lib.host_rows(b, ("features", "labels")) for b in (tr, te))
  print(f"{jax.device_count()} devices; {what}; "
        f"train bank {tr['features'].shape}, test {te['features'].shape}")

  ref, t_ref = timed(lambda: {k: np.asarray(v) for k, v in evaluators.knn_classify(
      host_tr["features"], host_tr["labels"], host_te["features"], num_classes=10,
      ks=KS).items()})
  acc = lambda p: {k: float(np.mean(p[k] == host_te["labels"])) for k in KS}  # noqa: E731
  print("\nkNN on backbone features                     " + "  ".join(f"k={k:<5}" for k in KS)
        + "  time s   predictions that differ (per k)")
  print("  single device (evaluators), HIGHEST       "
        + "  ".join(f"{a:.4f} " for a in acc(ref).values()) + f"  {t_ref:6.2f}")
  bf16 = bank_lib.Bank({**tr.columns, "features": tr["features"].astype(jnp.bfloat16)
                        .astype(jnp.float32)}, tr.num_examples, mesh)
  bf16_q = bank_lib.Bank({**te.columns, "features": te["features"].astype(jnp.bfloat16)
                          .astype(jnp.float32)}, te.num_examples, mesh)
  for name, b, q, prec in (("HIGHEST", tr, te, jax.lax.Precision.HIGHEST),
                           ("DEFAULT", tr, te, jax.lax.Precision.DEFAULT),
                           ("bf16-rounded features", bf16, bf16_q, jax.lax.Precision.HIGHEST)):
    knn_lib.knn_predict(b, q, num_classes=10, ks=KS, precision=prec)  # compile
    res, t = timed(lambda b=b, q=q, prec=prec: knn_lib.knn_predict(
        b, q, num_classes=10, ks=KS, precision=prec))
    differ = "/".join(str(int(np.sum(np.asarray(res["predictions"][k]) != ref[k]))) for k in KS)
    print(f"  distributed, {name:<28} " + "  ".join(
        f"{res['accuracy'][k]:.4f} " for k in KS) + f"  {t:6.2f}   {differ} differ")

  print("\nlinear probe (30 epochs, batch 4096)   seed  single-device   data-parallel")
  for seed in (0, 1, 2):
    old, t_old = timed(lambda seed=seed: evaluators.linear_probe(
        host_tr["features"], host_tr["labels"], host_te["features"], host_te["labels"],
        num_classes=10, seed=seed))
    new, t_new = timed(lambda seed=seed: probes.linear_probe(tr, te, num_classes=10, seed=seed))
    print(f"  {'':<36} {seed}     {old['accuracy']:.4f} ({t_old:.1f} s)  "
          f"{new['accuracy']:.4f} ({t_new:.1f} s)")

  old = evaluators.few_shot_ridge(host_tr["features"], host_tr["labels"], host_te["features"],
                                  host_te["labels"], num_classes=10)
  new = probes.few_shot_ridge(tr, te, num_classes=10)
  print("\nfew-shot identical:", old == new, {s: round(v["mean"], 4)
                                                for s, v in new["shots"].items()})


if __name__ == "__main__":
  app.run(main)
