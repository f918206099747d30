"""`simlap.aot`: the real train step compiled for a TPU slice on this CPU host (libtpu,
compile-only devices), its memory / FLOP / collective numbers, and the clear failures."""
from __future__ import annotations
import dataclasses
import importlib.util
import platform
import subprocess
import sys

import pytest
from absl import flags

from simlap import aot
from simlap.tpu import compile as tpu_compile
from simlap.tpu import hlo_collectives
from simlap.tpu import topology as tpu_topology

# TPU programs are judged by their HBM and cost: compiled as `simlap.aot` compiles them.
pytestmark = pytest.mark.usefixtures("optimized_compiles")

REPO = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
SMOKE = f"{REPO}/configs/in1k.py:smoke"  # resnet_tiny at 32 px: a few seconds per compile


def _require_libtpu():
  """libtpu wheels exist for Linux x86-64, where scripts/setup.sh installs them: missing there
  is a broken setup (fail). Elsewhere the TPU tests cannot run, and say so (skip + reason)."""
  if importlib.util.find_spec("libtpu") is not None:
    return
  if platform.system() == "Linux" and platform.machine() == "x86_64":
    pytest.fail("libtpu is not installed: run scripts/setup.sh (it installs the `tpu` extra)")
  pytest.skip(f"no libtpu wheel for {platform.system()} {platform.machine()}: TPU compile "
              "tests cannot run on this platform")


def parse(argv) -> flags.FlagValues:
  """The CLI's flags on their own FlagValues (absl's global FLAGS stays untouched)."""
  fv = flags.FlagValues()
  aot.define_flags(fv, sys_argv=["simlap.aot", *argv])
  fv(["simlap.aot", *argv])
  return fv


def run_cli(argv):
  return aot.main(["simlap.aot"], parse(argv))


@pytest.fixture(scope="module")
def v5e_2x2():
  _require_libtpu()
  tpu = tpu_topology.parse_slice("v5e:2x2")
  return tpu, tpu_topology.compile_devices(tpu)


@pytest.fixture(scope="module")
def smoke_rows(v5e_2x2):
  """Global batch 16 and 32 (4 and 8 per chip), replicated: one compile each."""
  del v5e_2x2
  return run_cli([f"--config={SMOKE}", "--topology=v5e:2x2", "--batch_sizes=16,32"])


def test_compile_for_v5e_reports_positive_memory_and_flops(smoke_rows):
  small, large = smoke_rows
  for row in smoke_rows:
    assert row.fits and row.chips == 4 and row.chip == "v5e" and row.capacity_gib == 16
    assert row.state_gib > 0 and row.temp_gib > 0 and row.total_gib >= row.state_gib
    assert row.tflop_per_chip > 0 and row.est_step_ms > 0 and row.est_views_per_s_chip > 0
    # Replicated parameters: the gradients are all-reduced over the 4 chips.
    assert row.collective_mib["all-reduce"] > 0
  assert small.batch_per_chip == 4 and large.batch_per_chip == 8
  # Twice the batch: about twice the FLOPs per chip (the loss adds a B^2 term, the parameter
  # update a constant one), and the same train state.
  assert 1.6 < large.tflop_per_chip / small.tflop_per_chip < 2.4
  assert large.state_gib == small.state_gib


def test_absurd_batch_does_not_fit_and_says_how_much(v5e_2x2, capsys):
  rows = run_cli([f"--config={SMOKE}", "--topology=v5e:2x2", "--batch_sizes=262144"])
  (row,) = rows
  assert not row.fits and row.tflop_per_chip is None
  assert row.total_gib > 100, row  # hundreds of GiB of activations
  assert row.note.startswith("does not fit: needs ") and "GiB of 15" in row.note
  out = capsys.readouterr().out.splitlines()
  assert out[0] == tpu_compile.HEADER
  assert "| v5e:2x2 (v5e) | 4 | replicated | 262144 (65536) |" in out[2]
  assert out[-1].startswith("v5e:2x2 at batch 262144: does not fit: needs"), out


def test_fsdp_shrinks_per_chip_state_on_a_tpu_slice(v5e_2x2, smoke_rows):
  tpu, devices = v5e_2x2
  config = aot_config("--config.sharding.params=fsdp", "--config.sharding.fsdp_min_size=0")
  row = tpu_compile.compile_step(config, tpu, devices, 16)
  (replicated, _) = smoke_rows
  assert row.fits and row.params == "fsdp"
  # Nearly every byte of the state is in leaves that split 4 ways: by the shardings, and by
  # what the compiler allocates for the step's arguments (state + this chip's batch rows).
  assert row.state_gib < 0.4 * replicated.state_gib, (row.state_gib, replicated.state_gib)
  batch_gib = replicated.argument_gib - replicated.state_gib
  assert row.argument_gib - batch_gib < 0.4 * replicated.state_gib, (row, replicated)
  # ZeRO-3: weights are all-gathered, gradients reduce-scattered.
  assert row.collective_mib["all-gather"] > 0
  assert row.collective_mib["reduce-scatter"] + row.collective_mib["all-reduce"] > 0


def aot_config(*overrides):
  return parse([f"--config={SMOKE}", "--topology=v5e:2x2", *overrides]).config


def test_max_batch_bisects_to_the_largest_fitting_multiple():
  """The search alone, on a fake compile that fits up to 200 per chip (4 chips, steps of 8)."""
  calls = []

  def fake_compile(config, tpu, devices, batch, num_train):
    del config, tpu, num_train
    calls.append(batch)
    per_chip = batch / len(devices)
    return tpu_compile.Row("fake", "v5e", 4, "replicated", batch, per_chip, 0.0, per_chip <= 200,
                   per_chip / 10, 16.0)

  config = aot_config()  # batch 16: 4 per chip, below one step of 8
  best = tpu_compile.max_batch(config, None, [None] * 4, multiple=8, compile_fn=fake_compile)
  assert best.global_batch == 200 * 4 and best.fits
  assert len(calls) == len(set(calls)) <= 12, calls  # doubling, then bisection; no repeats
  never = tpu_compile.max_batch(config, None, [None] * 4, multiple=256, compile_fn=fake_compile)
  assert never is None


def test_slice_names():
  assert tpu_topology.parse_slice("v5e:2x4").num_chips == 8
  assert tpu_topology.parse_slice("v5e-16").shape == (4, 4)
  v4 = tpu_topology.parse_slice("v4-32")  # 32 TensorCores = 16 chips
  assert v4.shape == (2, 2, 4) and v4.libtpu_topology == "v4:2x2x4"
  assert tpu_topology.parse_slice("v5p-8").libtpu_topology == "v5:2x2x1"
  for bad, words in [("v9:2x2", "unknown TPU generation"), ("v5e:2x2x2", "2 dimensions"),
                     ("tpu", "not a TPU slice name"), ("v5e-12", "no standard v5e slice")]:
    with pytest.raises(ValueError, match=words):
      tpu_topology.parse_slice(bad)


def test_a_slice_libtpu_cannot_build_is_one_clear_line(v5e_2x2):
  with pytest.raises(ValueError, match=r"'v5e:3x3' \(v5e:3x3\) is not a slice libtpu can build"):
    tpu_topology.compile_devices(tpu_topology.parse_slice("v5e:3x3"))


def test_cli_bad_topology_exits_with_one_line():
  proc = subprocess.run([sys.executable, "-m", "simlap.aot", f"--config={SMOKE}",
                         "--topology=v9:2x2"], capture_output=True, text=True, cwd=REPO,
                        timeout=120, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("simlap.aot: topology 'v9:2x2'")
  assert "Traceback" not in proc.stderr


# ---- the HLO reader, on instruction lines in the forms the TPU compiler prints ----
HLO = """
  %all-reduce.1 = (f32[8]{0:T(128)}, f32[8]{0:T(128)}) all-reduce(%a, %b), channel_id=1, replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0','axis_1'}, to_apply=%add
  %all-gather-start.2 = (bf16[4,16]{1,0}, bf16[16,16]{1,0}) all-gather-start(%c), channel_id=2, replica_groups=[1,4]<=[4], dimensions={0}
  %all-gather-done.2 = bf16[16,16]{1,0} all-gather-done(%all-gather-start.2)
  %reduce-scatter.3 = f32[2,16]{1,0} reduce-scatter(%d), channel_id=3, replica_groups={{0,1,2,3}}, dimensions={0}
  %collective-permute-start.4 = (s32[4,1]{0,1}, s32[4,1]{0,1}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%e), source_target_pairs={{0,1}}
  ROOT %all-to-all.5 = bf16[4,2,8]{2,1,0} all-to-all(%f), replica_groups=mesh['axis_0'=4] {'axis_0'}, dimensions={0}
  %fusion.6 = f32[8]{0} fusion(%all-reduce.1), kind=kLoop, calls=%fused
"""  # noqa: E501  (instruction lines as the compiler prints them)


def test_collective_payloads_by_kind():
  found = hlo_collectives.collectives(HLO, num_devices=4)
  assert [(k, n) for k, _, n in found] == [
      ("all-reduce", 4), ("all-gather", 4), ("reduce-scatter", 4),
      ("collective-permute", 2), ("all-to-all", 4)]
  assert hlo_collectives.payload_bytes(HLO, 4) == {
      "all-reduce": 2 * 8 * 4,  # both tuple results
      "all-gather": 16 * 16 * 2,  # the gathered result, not the operand
      "reduce-scatter": 4 * 2 * 16 * 4,  # the input: result x group
      "collective-permute": 4 * 4,  # the buffer sent, not the sync flags
      "all-to-all": 4 * 2 * 8 * 2}
  expected = (2 * 3 / 4 * 64 + 3 / 4 * 512 + 3 / 4 * 512 + 16 + 3 / 4 * 128)
  assert hlo_collectives.ici_bytes(HLO, 4) == pytest.approx(expected)


def test_row_round_trips_to_json_and_formats(smoke_rows):
  row = smoke_rows[0]
  assert tpu_compile.Row(**dataclasses.asdict(row)) == row
  line = tpu_compile.format_row(row)
  assert line.count("|") == tpu_compile.HEADER.count("|")


def test_views_compile_in_the_dtype_the_run_sends():
  """A streamed split (ImageNet) sends uint8 views, an in-memory one float32; the fields win."""
  import importlib  # noqa: PLC0415
  in1k = importlib.import_module("configs.in1k").get_config(None)
  default = importlib.import_module("configs.default").get_config(None)
  assert tpu_compile.view_dtype(in1k) == "uint8"
  assert tpu_compile.view_dtype(default) == "float32"
  default.dataset.in_memory = False
  assert tpu_compile.view_dtype(default) == "uint8"
  in1k.dataset.view_dtype = "float32"
  assert tpu_compile.view_dtype(in1k) == "float32"


def test_split_sizes_come_from_one_table():
  """The train step's schedule (aot) and the eval programs' banks (aot_eval) size the dataset
  from simlap/data/split_sizes.py; an unknown train split must be given."""
  import importlib  # noqa: PLC0415
  from simlap.data import split_sizes  # noqa: PLC0415
  from simlap.tpu import compile_eval as aot_eval  # noqa: PLC0415
  in1k = importlib.import_module("configs.in1k").get_config(None)
  assert tpu_compile.dataset_info(in1k, None).num_train == split_sizes.SIZES["imagenet2012"].train  # noqa: SLF001
  assert aot_eval.eval_size("imagenet2012") == split_sizes.SIZES["imagenet2012"].eval == 50_000
  assert aot_eval.eval_size("no_such_set") == 10_000
  in1k.dataset.name = "no_such_set"
  with pytest.raises(ValueError, match="not in simlap/data/split_sizes.py; pass --num_train"):
    tpu_compile.dataset_info(in1k, None)  # noqa: SLF001
  assert tpu_compile.dataset_info(in1k, 123).num_train == 123  # noqa: SLF001
