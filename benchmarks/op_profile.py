"""Where a compiled step spends its time, op by op: a `jax.profiler` trace summed per XLA op.

`step_bench --profile_ops=N` calls `print_op_tables` after timing: it traces a few more steps,
sums the duration of every XLA op (fusion, convolution, copy, ...) in the trace, and prints two
tables: the N JAX operations that cost most (the HLO's `op_name` metadata, e.g. the input
gradient of one conv layer, summed over the XLA ops it became: a chunked conv becomes several),
and the totals per XLA op kind (the name before the first dot: `ynn_fusion`,
`transpose_copy_fusion`, ...).

Times are the ops' own durations on the runtime's worker threads, so on a multi-core CPU their
sum can exceed the step's wall time.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Collection
from typing import Any, Callable

import jax

# An HLO instruction, and the JAX operation it came from where the metadata says.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (?:.*?metadata=\{op_name="([^"]*)")?',
                          re.M)


def hlo_ops(hlo_text: str) -> dict[str, str]:
  """{instruction name: the JAX operation it came from, "" if unknown} of a compiled program's
  text (`compiled.as_text()`)."""
  return dict(_INSTRUCTION.findall(hlo_text))


def op_times(step: Callable[[Any], Any], carry: Any, steps: int,
             instructions: Collection[str]) -> tuple[dict[str, float], dict[str, int], Any]:
  """Runs `carry = step(carry)` `steps` times under the profiler. Only trace events named after
  one of the program's `instructions` (`hlo_ops`) count as ops, not the runtime's own (dispatch,
  locks, thread pools, Python frames).

  Returns ({op name: ms per step}, {op name: calls per step}, the last carry).
  """
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    for _ in range(steps):
      carry = step(carry)
    jax.block_until_ready(carry)
    jax.profiler.stop_trace()
    traces = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
    if not traces:
      raise RuntimeError(f"jax.profiler wrote no trace under {logdir}")
    with gzip.open(max(traces, key=os.path.getmtime)) as f:
      events = json.load(f)["traceEvents"]
  total: dict[str, float] = collections.Counter()
  calls: dict[str, int] = collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name not in instructions:
      continue
    total[name] += event["dur"] / 1e3 / steps  # microseconds -> ms per step
    calls[name] += 1
  return dict(total), {k: v // steps for k, v in calls.items()}, carry


def print_op_tables(step: Callable[[Any], Any], carry: Any, hlo_text: str, top: int,
                    steps: int = 3) -> Any:
  """Prints the `top` ops by time and the time per op kind; returns the last carry."""
  source = hlo_ops(hlo_text)
  ms, calls, carry = op_times(step, carry, steps, source)
  by_source: dict[str, float] = collections.Counter()
  ops: dict[str, int] = collections.Counter()
  for name, t in ms.items():
    origin = re.sub(r"^jit\([^)]*\)/", "", source[name] or f"(no metadata) {name}")
    by_source[origin] += t
    ops[origin] += calls[name]
  print(f"\n### The {top} costliest JAX operations (mean of {steps} profiled steps; CPU time)")
  print("| JAX operation | ms per step | XLA ops |")
  print("|---|---|---|")
  for origin, t in sorted(by_source.items(), key=lambda kv: -kv[1])[:top]:
    shown = origin if len(origin) <= 120 else "…" + origin[-119:]
    print(f"| {shown} | {t:.1f} | {ops[origin]} |")
  kinds: dict[str, float] = collections.Counter()
  for name, t in ms.items():
    kinds[name.split(".")[0]] += t
  print(f"\n### Time per op kind (all ops: {sum(ms.values()):.1f} ms per step)")
  print("| op kind | ms per step |")
  print("|---|---|")
  for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1])[:15]:
    print(f"| {kind} | {t:.1f} |")
  return carry
