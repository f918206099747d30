"""The one Markdown table of benchmarks/accelerator_check.sh, from the raw outputs in OUT.

    python -m benchmarks.accelerator_table OUT

Reads OUT/step_{128,256,512}.md (step_bench's table), OUT/input.txt (input_bench's), and the
Fashion-MNIST run's OUT/fmnist/summary.json and OUT/main.seconds; writes and prints
OUT/accelerator_check.md.
"""
from __future__ import annotations
import json
import pathlib
import re
import sys

STEP_BATCHES = (128, 256, 512)


def step_result(text: str) -> str:
  """step_bench's last ResNet-50 row -> "views/s/GPU, ms/step, MFU, ..."; a failure line as is."""
  rows = [line for line in text.splitlines() if line.startswith("| resnet50")]
  if not rows:
    return "no output"
  cells = [c.strip() for c in rows[-1].strip().strip("|").split("|")]
  if len(cells) < 12:  # the script's own "failed: ..." row
    return " ".join(cells[4:]) or "failed"
  return (f"{cells[8]} views/s/GPU, {cells[5]} ms/step, MFU {cells[11]}, compile {cells[4]} s, "
          f"temp {cells[10]} MiB")


def input_rows(text: str) -> list[tuple[str, str]]:
  """input_bench's "reader cores views/s views/s/core views/CPU-s B/view steady min@edge ratio
  resume-s" lines."""
  out = []
  for line in text.splitlines():
    m = re.match(r"(\w+)\s+(\d+)" + r"\s+(\d+)" * 6 + r"\s+(\S+)\s+([\d.]+)$", line)
    if m:
      out.append((f"ImageNet-like JPEGs, {m[1]} reader, {m[2]} cores",
                  f"{m[3]} views/s ({m[4]} per host core), {m[6]} B/view, epoch-edge window "
                  f"{m[9]} of steady, resume {m[10]} s"))
  return out


def table(out: pathlib.Path) -> str:
  rows = ["| check | setting | result |", "|---|---|---|"]
  for batch in STEP_BATCHES:
    path = out / f"step_{batch}.md"
    result = step_result(path.read_text()) if path.exists() else "not run"
    rows.append(f"| step_bench | ResNet-50, bf16, 224 px, global batch {batch} | {result} |")
  path = out / "input.txt"
  for name, result in input_rows(path.read_text()) if path.exists() else []:
    rows.append(f"| input_bench | {name} | {result} |")
  summary_path, seconds_path = out / "fmnist" / "summary.json", out / "main.seconds"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    numbers = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    seconds = seconds_path.read_text().strip() if seconds_path.exists() else "?"
    rows.append(f"| simlap.main | configs/default.py, Fashion-MNIST, 1 epoch | {seconds} s "
                f"wall; {', '.join(f'{k} {v}' for k, v in numbers.items())} |")
  else:
    rows.append("| simlap.main | configs/default.py, Fashion-MNIST, 1 epoch | no summary.json |")
  return "\n".join(rows) + "\n"


def main(argv: list[str]) -> None:
  out = pathlib.Path(argv[1])
  text = table(out)
  (out / "accelerator_check.md").write_text(text)
  print(text, end="")


if __name__ == "__main__":
  main(sys.argv)
