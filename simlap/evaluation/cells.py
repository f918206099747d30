"""How a number is written in simlap's Markdown tables: one evaluation's report.md and a grid's
comparison.md both format their cells here, so the two always read alike.

A cell kind is "pct" (a fraction in [0, 1] shown in % with 2 decimals) or "numN" (as is, N
decimals). A missing number (None or NaN) is always DASH, never "nan" or "None".
Plain Python: no JAX, so tables are written without loading an accelerator library.
"""
from __future__ import annotations

import math

DASH = "–"


def _missing(x) -> bool:
  return x is None or (isinstance(x, float) and math.isnan(x))


def value(x: float | None, kind: str = "pct") -> str:
  """One number: `value(0.9123) == "91.23"`, `value(3.14159, "num1") == "3.1"`, DASH if none."""
  if _missing(x):
    return DASH
  if kind == "pct":
    return f"{100 * x:.2f}"
  if not kind.startswith("num") or not kind[3:].isdigit():
    raise ValueError(f"cell kind {kind!r}: use 'pct' or 'numN' (N decimals)")
  return f"{x:.{int(kind[3:])}f}"


def pct(x: float | None) -> str:
  """A fraction in %: `pct(0.5) == "50.00"`."""
  return value(x, "pct")


def num(x: float | None, digits: int = 3) -> str:
  """A plain number with `digits` decimals."""
  return value(x, f"num{digits}")


def mean_std(mean: float | None, std: float | None, kind: str = "pct") -> str:
  """"mean ± std" in `kind` (`mean_std(0.9, 0.01) == "90.00 ± 1.00"`); DASH without a mean,
  and the mean alone without a std."""
  if _missing(mean):
    return DASH
  if _missing(std):
    return value(mean, kind)
  return f"{value(mean, kind)} ± {value(std, kind)}"
