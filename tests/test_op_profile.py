"""benchmarks/op_profile.py reads the profiler's trace: every XLA op's time is found and
attributed to the JAX operation it came from."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from benchmarks import op_profile


def test_op_times_are_attributed_to_their_jax_operations(capsys):
  step = jax.jit(lambda x: jnp.tanh(x @ x.T) / 16)
  x = jnp.ones((256, 256))
  compiled = step.lower(x).compile()
  ms, calls, out = op_profile.op_times(compiled, x, 2,
                                       op_profile.hlo_ops(compiled.as_text()))
  assert out.shape == x.shape
  assert ms and all(t >= 0 for t in ms.values())
  assert all(calls[name] >= 1 for name in ms)
  assert not any(name.startswith(("$", "ThunkExecutor", "MutexLock")) for name in ms)  # runtime
  op_profile.print_op_tables(compiled, x, compiled.as_text(), top=3, steps=2)
  text = capsys.readouterr().out
  # The matmul's op is named after the jnp operation that made it, not left as "(no metadata)".
  assert re.search(r"^\| .*dot_general \| [0-9.]+ \| \d+ \|$", text, re.M), text
  total = float(re.search(r"all ops: ([0-9.]+) ms per step", text).group(1))
  assert total > 0
