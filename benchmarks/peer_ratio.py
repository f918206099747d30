"""simlap's train step against its PyTorch peer, side by side in one run: a Markdown table.

  .venv/bin/python -m benchmarks.peer_ratio --peer_python=/path/to/torch-venv/bin/python

For each case it runs `benchmarks/step_bench.py` (this interpreter) and then
`benchmarks/peer_step.py` (--peer_python, an environment with torch and timm) on the same
network, batch and optimizer, one after the other, `--rounds` times in alternation, and prints
each side's median step time (the median over rounds of each run's median), their ratio
(simlap / PyTorch: below 1 means simlap is faster), every round's numbers and the 1-minute
load average before and after the case: on a shared host the rounds show the noise.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time

# name -> (step_bench args, peer_step args). The ResNet-50 case runs configs/in1k.py in float32
# with Adam + coupled L2 on both sides (torch has no LARS; the optimizer is a small part there).
CASES = {
    "authors_cifar_b64": (["--config=configs/cifar10.py", "--batch=64"],
                          ["--net=authors_cifar", "--batch=64"]),
    "authors_cifar_b256": (["--config=configs/cifar10.py", "--batch=256"],
                           ["--net=authors_cifar", "--batch=256"]),
    "resnet50_224_b32": (["--config=configs/in1k.py", "--batch=32", "--dtype=f32",
                          "--config.optimizer.name=adam_l2",
                          "--config.optimizer.weight_decay=5e-4"],
                         ["--net=resnet50", "--batch=32"]),
}


def _run(cmd: list[str]) -> str:
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return out.stdout


def step_ms(stdout: str, column: int) -> float:
  """The `column`-th cell of the last Markdown row a benchmark printed."""
  rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
  return float(rows[-1].strip("|").split("|")[column].strip())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--peer_python", required=True)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=1)
  args = parser.parse_args()
  timing = [f"--steps={args.steps}", f"--warmup={args.warmup}"]
  rows = []
  for name in args.cases.split(","):
    ours, peer = CASES[name]
    load = os.getloadavg()[0]
    ours_ms, peer_ms = [], []
    for _ in range(args.rounds):
      ours_ms.append(step_ms(_run([sys.executable, "-m", "benchmarks.step_bench", *ours,
                                   *timing]), 5))
      peer_out = _run([args.peer_python, "benchmarks/peer_step.py", *peer, *timing])
      peer_ms.append(step_ms(peer_out, 4))
    torch_version = re.search(r"torch (\S+),", peer_out)
    ms, pms = statistics.median(ours_ms), statistics.median(peer_ms)
    rounds = "; ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(ours_ms, peer_ms))
    rows.append(f"| {name} | {ms:.0f} | {pms:.0f} | {ms / pms:.2f} | {rounds} | {load:.1f} / "
                f"{os.getloadavg()[0]:.1f} |")
    print(rows[-1], flush=True)
  print(f"\n# peer_ratio {time.strftime('%Y-%m-%d')} {platform.node()}, {os.cpu_count()} cores, "
        f"torch {torch_version.group(1) if torch_version else '?'} | `{' '.join(sys.argv)}`")
  print("| case | simlap step ms | PyTorch step ms | simlap / PyTorch | rounds (simlap / PyTorch "
        "ms) | load before / after |")
  print("|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
