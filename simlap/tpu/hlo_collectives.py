"""Collective traffic of a compiled program, read from its HLO text (`compiled.as_text()`).

For each collective instruction the payload is the size of the whole buffer it reduces or
assembles, per chip: all-reduce and all-to-all: their result; all-gather: the gathered result;
reduce-scatter: its input (result x group size); collective-permute: the buffer sent. Async
pairs are counted once, at their `-start`. Each instruction is counted once per program run:
a collective inside a loop body would be undercounted (the train step has none).
"""
from __future__ import annotations

import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
# "  %name = TYPE opcode(" ; TYPE is one shape or a parenthesised tuple of shapes.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(KINDS) +
    r")(?P<start>-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")


def _arrays(type_text: str) -> list[tuple[str, int]]:
  """(dtype[dims], bytes) of each array in an HLO type: "(f32[8]{0}, u32[])" ->
  [("f32[8]", 32), ("u32[]", 4)]."""
  return [(f"{dtype}[{dims}]", _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",")
                                                               if d))
          for dtype, dims in _ARRAY.findall(type_text)]


def group_size(rest: str, default: int) -> int:
  """Chips per replica group, from any of XLA's three spellings; `default` if absent."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    chosen = re.findall(r"'([^']+)'", m.group(2))
    return math.prod(int(sizes[a]) for a in chosen if a in sizes) or default
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)  # iota: [groups, size]<=[...]
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]+)\}", rest)  # explicit: {{0,1,2,3},...}
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"source_target_pairs=", rest)
  return 2 if m else default


def collectives(hlo_text: str, num_devices: int) -> list[tuple[str, int, int]]:
  """[(kind, payload bytes, group size)] for every collective instruction in the module."""
  found = []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op, arrays = m.group("op"), _arrays(m.group("type"))
    if m.group("start") and op != "all-reduce":
      # An async start returns (operands..., results..., u32[] sync flags): keep the results.
      arrays = [a for a in arrays if a[0] != "u32[]"]
      arrays = arrays[len(arrays) // 2:]
    sizes = [size for _, size in arrays]
    n = group_size(m.group("rest"), num_devices)
    payload = sum(sizes) * (n if op == "reduce-scatter" else 1)
    found.append((op, payload, n))
  return found


def payload_bytes(hlo_text: str, num_devices: int) -> dict[str, int]:
  """{kind: total payload bytes per chip per run} over KINDS (0 where absent)."""
  totals = dict.fromkeys(KINDS, 0)
  for kind, payload, _ in collectives(hlo_text, num_devices):
    totals[kind] += payload
  return totals


def ici_bytes(hlo_text: str, num_devices: int) -> float:
  """Bytes each chip sends over the interconnect per run, with the bandwidth-optimal ring
  algorithms for a group of n chips: all-reduce 2(n-1)/n of the payload; all-gather,
  reduce-scatter and all-to-all (n-1)/n; collective-permute 1."""
  factor = {"all-reduce": lambda n: 2 * (n - 1) / n, "collective-permute": lambda n: 1.0}
  ring = lambda n: (n - 1) / n  # noqa: E731
  return sum(factor.get(kind, ring)(n) * payload if n > 1 else 0.0
             for kind, payload, n in collectives(hlo_text, num_devices))
