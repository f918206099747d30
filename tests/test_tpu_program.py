"""The TPU program is the product: the compiled v5e train step may not grow.

Compiles each case of tests/tpu_programs.py for a v5e slice (libtpu compile-only devices) and
compares its per-chip temporaries, bytes accessed and FLOPs with the committed baseline
(tests/golden/tpu_programs.json). More than 3 % growth in any of them fails; a CPU-only
workaround that reaches the TPU program (the custom-VJP max pool did: +1.4 GiB per v5e chip
for in1k) shows up here. Refresh with `.venv/bin/python tests/tpu_programs.py --refresh`;
`tests/tpu_programs.py --plant` shows the guard failing on that regression (docs/tpu.md quotes
it: a second ResNet-50 compile, kept out of the suite's time).
"""
from __future__ import annotations

import json

import pytest

import tpu_programs
from test_aot import _require_libtpu

# Compiled as `simlap.aot` compiles them: the backend passes change HBM and cost.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("optimized_compiles")]


@pytest.fixture(scope="module")
def baseline():
  with open(tpu_programs.BASELINE, encoding="utf-8") as f:
    return json.load(f)


def test_the_baseline_covers_every_case(baseline):
  assert set(baseline["cases"]) == set(tpu_programs.CASES)
  for name, (arg, overrides, topology, batch) in tpu_programs.CASES.items():
    case = baseline["cases"][name]
    assert (case["config"], case["overrides"], case["topology"], case["global_batch"]) == (
        arg, overrides, topology, batch), f"{name} changed: refresh the baseline"


@pytest.mark.parametrize("name", sorted(tpu_programs.CASES))
def test_the_compiled_tpu_step_does_not_grow(name, baseline):
  _require_libtpu()
  measured = tpu_programs.measure(name)
  problems = tpu_programs.regressions(measured, baseline["cases"][name])
  assert not problems, (f"the {name} TPU program grew: " + "; ".join(problems)
                        + ". A CPU-only form reached the TPU program, or the change costs HBM"
                        " (tests/tpu_programs.py says how to refresh the baseline on purpose)")


def test_regressions_flags_growth_beyond_the_tolerance_only():
  base = {"temp_bytes": 100.0, "bytes_accessed": 100.0, "flops": 100.0}
  assert tpu_programs.regressions({**base, "flops": 103.0}, base) == []
  assert tpu_programs.regressions({**base, "temp_bytes": 50.0}, base) == []
  [line] = tpu_programs.regressions({**base, "bytes_accessed": 103.5}, base)
  assert line.startswith("bytes_accessed grew +3.5%")
