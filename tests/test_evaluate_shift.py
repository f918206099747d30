"""`simlap.evaluate --robustness --transfer=...`: the ridge probe under corruptions and the
frozen backbone on other datasets, on a tiny trained checkpoint and on mocked TFDS data."""
from __future__ import annotations
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from simlap.evaluation import run as eval_workdir
from simlap.runtime import sharding
from simlap.runtime import workdir as workdir_lib
from simlap.data import augment
from simlap.data import corruptions
from simlap.data import shifted_stream
from simlap.evaluation import bank as bank_lib
from simlap.evaluation import probes
from simlap.evaluation import robustness
from test_evaluate_cli import run_cli, workdir  # noqa: F401 - the trained tiny run
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# The numbers: mCA and the relative corruption error
# ----------------------------------------------------------------------------------------------
def test_mca_and_relative_error_on_a_hand_case():
  acc = {"a": {1: 0.6, 2: 0.4}, "b": {1: 0.7, 2: 0.5}}
  s = robustness.summarize(0.8, acc)
  assert s["mca"] == pytest.approx(0.55)  # (0.6 + 0.4 + 0.7 + 0.5) / 4
  assert s["relative_corruption_error"] == pytest.approx((1 - 0.55) / (1 - 0.8))  # 2.25
  assert s["accuracy"]["a"] == {"1": 0.6, "2": 0.4, "mean": pytest.approx(0.5)}
  assert s["clean_accuracy"] == 0.8
  # Every (corruption, severity) cell weighs alike, not every corruption's mean.
  s = robustness.summarize(0.5, {"a": {1: 1.0, 2: 1.0, 3: 1.0}, "b": {1: 0.0}})
  assert s["mca"] == pytest.approx(0.75)
  assert robustness.summarize(1.0, acc)["relative_corruption_error"] is None


# ----------------------------------------------------------------------------------------------
# Where the corrupted images come from
# ----------------------------------------------------------------------------------------------
def test_numpy_corruptions_through_the_stream_are_seeded_and_batch_independent(fmnist_data_dir):
  def images(batch_size, seed=0):
    config = tiny_config(fmnist_data_dir, eval_batch_size=batch_size)
    src = shifted_stream.split_source(config, "test[:200]")
    it = shifted_stream.SourceEvalIterator(
        config, sharding.make_mesh(config.mesh), src,
        hook=lambda x, start: corruptions.corrupt_batch(x, "gaussian_noise", 3, seed, start))
    rows = list(it.local_dataset().as_numpy_iterator())
    mask = np.concatenate([r["mask"] for r in rows])
    assert len(it) == len(rows) and mask.sum() == 200 and src.sizes == (200,)
    return np.concatenate([r["image"] for r in rows])[mask]

  config = tiny_config(fmnist_data_dir)
  stored = next(shifted_stream.split_source(config, "test[:200]").dataset.batch(200)
                .as_numpy_iterator())["image"]
  want = augment.eval_view(corruptions.corrupt_batch(stored, "gaussian_noise", 3, 0), size=16,
                           channels=1).numpy()
  np.testing.assert_array_equal(images(64), want)  # image i is corrupted as index i
  np.testing.assert_array_equal(images(256), want)
  assert not np.array_equal(images(64, seed=1), want)


def test_imagenet_runs_read_tfds_imagenet2012_corrupted_where_prepared(monkeypatch, tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset.name = "imagenet2012"
  config.dataset.channels = 3
  # Nothing prepared: NumPy for the 14, frost missing; another dataset never looks at TFDS.
  assert robustness.tfds_builder(config, "fog", 1) is None
  p = robustness.plan(config, None, (1, 2))
  assert set(p.sources.values()) == {"numpy"} and list(p.missing) == ["frost"]
  with tfds.testing.mock_data(num_examples=6):
    def fake(config, name, severity):
      return None if name == "fog" else tfds.builder(f"{robustness.TFDS_NAME}/{name}_{severity}")
    monkeypatch.setattr(robustness, "tfds_builder", fake)
    p = robustness.plan(config, ["frost", "fog", "contrast"], (1, 2))
    assert p.sources == {"frost": robustness.TFDS_SOURCE, "fog": "numpy",
                         "contrast": robustness.TFDS_SOURCE} and p.missing == {}
    shown = {}
    src, hook = robustness._source(config, p, "contrast", 2, 0, shown)  # noqa: SLF001
    assert src.crop_fraction == 1.0  # the files are ImageNet-C's 224-px crops already
    raw = next(src.dataset.batch(6).as_numpy_iterator())["image"]  # the stored 224-px bytes
    assert raw.shape == (6, 224, 224, 3)
    rows = list(shifted_stream.SourceEvalIterator(config, sharding.make_mesh(config.mesh),
                                                  src, hook=hook).local_dataset()
                .as_numpy_iterator())
    got = np.concatenate([r["image"] for r in rows])[np.concatenate([r["mask"] for r in rows])]
    # TFDS's corrupted bytes, only resized to the run's input: no second (NumPy) corruption.
    np.testing.assert_array_equal(got, augment.eval_view(raw, size=16, channels=3).numpy())
    np.testing.assert_array_equal(shown[("contrast", 2)], raw[0])


# ----------------------------------------------------------------------------------------------
# On a trained checkpoint
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def restored(workdir):  # noqa: F811
  path, _ = workdir
  config = workdir_lib.load_config(path)
  model, state, mesh, info, _ = eval_workdir.restore(config, path)
  d = config.dataset
  return types.SimpleNamespace(
      config=config, model=model, state=state, mesh=mesh, num_classes=info.num_classes,
      train=bank_lib.extract_bank(config, model, state, mesh, d.train_split),
      test=bank_lib.extract_bank(config, model, state, mesh, d.eval_split))


def _numpy_ridge_accuracy(train, test, num_classes, lam=1e-3):
  """The authors' ridge in float64 NumPy: L2-normalised features + bias, one-hot, λ."""
  def design(bank):
    rows = bank_lib.host_rows(bank, ("features", "labels"))
    x = rows["features"].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    return np.concatenate([x, np.ones((len(x), 1))], 1), rows["labels"]
  x, y = design(train)
  w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ np.eye(num_classes)[y])
  xt, yt = design(test)
  return float(np.mean(np.argmax(xt @ w, 1) == yt))


def test_probe_is_fitted_once_on_clean_train_features_and_scores_the_eval_split(
    restored, monkeypatch):
  r = restored
  splits, fitted = [], []
  real_source, real_fit = shifted_stream.split_source, probes.ridge_probe
  monkeypatch.setattr(shifted_stream, "split_source",
                      lambda config, split, **kw: splits.append(split) or real_source(
                          config, split, **kw))
  monkeypatch.setattr(probes, "ridge_probe",
                      lambda bank, **kw: fitted.append(bank) or real_fit(bank, **kw))
  res = robustness.evaluate_robustness(r.config, r.model, r.state, r.mesh, r.train, r.test,
                                       num_classes=r.num_classes, corruptions=["brightness"],
                                       severities=(0, 5))
  assert fitted == [r.train]  # one fit, on the clean train bank
  assert splits == [r.config.dataset.eval_split] * 2  # nothing but the eval split is corrupted
  assert res["probe"]["num_train"] == 2048 and res["num_test"] == 512
  # Severity 0 is the identity: through the corrupted stream, exactly the clean accuracy.
  assert res["accuracy"]["brightness"]["0"] == res["clean_accuracy"]
  assert res["accuracy"]["brightness"]["5"] != res["clean_accuracy"]
  ref = _numpy_ridge_accuracy(r.train, r.test, r.num_classes)
  assert abs(res["clean_accuracy"] - ref) <= 2 / 512, (res["clean_accuracy"], ref)


@pytest.mark.slow  # the whole evaluation plus 10 corrupted test sets and digits: ~15 s on 2 cores
def test_cli_writes_the_robustness_and_transfer_sections(workdir, tmp_path, capsys):  # noqa: F811
  path, _ = workdir
  out = str(tmp_path / "eval")
  res = run_cli([f"--workdir={path}", f"--out_dir={out}", "--linear_epochs=1", "--robustness",
                 "--corruptions=gaussian_noise,contrast,frost", "--transfer=digits"])
  printed = capsys.readouterr().out
  assert "robustness (2 corruptions, numpy): clean" in printed and "transfer digits: kNN@20" \
      in printed
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert tuple(saved) == eval_workdir.RESULTS_KEYS and saved == json.loads(json.dumps(res))
  rob = saved["robustness"]
  assert rob["source"] == "numpy" and list(rob["missing"]) == ["frost"]
  assert list(rob["accuracy"]) == ["gaussian_noise", "contrast"]
  cells = [a[str(s)] for a in rob["accuracy"].values() for s in range(1, 6)]
  assert rob["mca"] == pytest.approx(np.mean(cells))
  assert rob["relative_corruption_error"] == pytest.approx(
      (1 - rob["mca"]) / (1 - rob["clean_accuracy"]))
  assert saved["summary"]["robustness_mca"] == rob["mca"]
  # Contrast at severity 5 keeps 15 % of it: accuracy falls (the probe sees the shift).
  assert rob["accuracy"]["contrast"]["5"] < rob["clean_accuracy"]
  png = os.path.join(out, rob["picture"])
  from simlap.evaluation import plots  # noqa: PLC0415
  assert plots.read_png(png).shape[:2] == (30 + 2 * 100, 140 + 6 * 100)  # 2 rows x 6 columns
  digits = saved["transfer"]["digits"]
  assert (digits["num_train"], digits["num_test"], digits["num_classes"]) == (1438, 359, 10)
  assert set(digits["few_shot"]) == {"1shot", "5shot", "10shot", "25shot"}
  assert all(len(v["per_seed"]) == 3 for v in digits["few_shot"].values())
  # Against digits' own train bank kNN is far above chance (10 %); against the Fashion-MNIST
  # bank (the run's own labels) it would be near chance.
  assert digits["knn_accuracy"] > 0.3 and digits["few_shot"]["25shot"]["mean"] > 0.3, digits
  assert saved["protocol"]["transfer"]["knn"] == {"k": 20, "temperature": 0.07,
                                                  "similarity": "cosine",
                                                  "bank": "the target's train split"}
  report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "## Robustness" in report and "| contrast | numpy |" in report
  assert f"![corruptions]({rob['picture']})" in report
  assert "## Transfer" in report and "| digits | 1438 / 359 | 10 |" in report


def test_an_unknown_transfer_target_is_one_line_and_exit_2(tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "simlap.evaluate", f"--workdir={tmp_path}",
                         "--transfer=digits,mnist_typo"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [x for x in proc.stderr.splitlines() if x.startswith("simlap.evaluate:")]
  assert lines == ["simlap.evaluate: error: unknown transfer target 'mnist_typo'; known: "
                   "animal_mnist, digits, cifar10, cars, dtd, flowers, food, pets, stl"], \
      proc.stderr
