"""The evaluation programs compile for a TPU slice with the bank split over its chips."""
from __future__ import annotations

import pytest
from absl import app

from simlap.tpu import compile as tpu_compile
from simlap.tpu import topology as tpu_topology
from simlap.training import loop as train
from simlap.tpu import compile_eval as aot_eval
from test_aot import _require_libtpu
from test_train import tiny_config

# TPU programs are judged by their HBM and cost: compiled as `simlap.aot` compiles them.
pytestmark = pytest.mark.usefixtures("optimized_compiles")


def test_eval_programs_compile_for_v5e_with_the_bank_split_over_chips():
  _require_libtpu()
  config = tiny_config(None)  # resnet_tiny: seconds to compile; shapes only, no data read
  config.dataset.name = "fashion_mnist_local"
  tpu = tpu_topology.parse_slice("v5e:2x2")
  devices = tpu_topology.compile_devices(tpu)
  rows = aot_eval.fit_check(config, tpu, devices, tpu_compile.dataset_info(config, 60_000),
                            train.make_trainer)
  extract, knn = rows
  assert (extract.program, knn.program) == ("extract", "knn")
  assert extract.fits and knn.fits and knn.chips == 4
  n_pad = 60_160  # 60,000 in whole eval batches of 256
  assert knn.shape.endswith(f"vs {n_pad} x 32")  # resnet_tiny: 32 features
  full_bank_gib = n_pad * 32 * 4 / 2**30
  assert knn.bank_gib == pytest.approx(full_bank_gib / 4)
  # The compiled program's inputs on one chip: a quarter of the bank (+ labels, queries, ...),
  # never the whole bank.
  assert knn.bank_gib <= knn.argument_gib < full_bank_gib / 2, knn
  assert "GiB/chip" in aot_eval.format_row(knn)


def test_notrain_eval_compiles_only_the_evaluation_programs(capsys):
  _require_libtpu()
  from test_aot import SMOKE, run_cli  # noqa: PLC0415
  assert run_cli([f"--config={SMOKE}", "--topology=v5e:2x2", "--notrain", "--eval"]) == []
  out = capsys.readouterr().out
  assert "eval extract v5e:2x2" in out and "eval knn" in out
  assert "| slice |" not in out  # no train-step table
  with pytest.raises(app.UsageError, match="--notrain leaves nothing to compile"):
    run_cli([f"--config={SMOKE}", "--topology=v5e:2x2", "--notrain"])
