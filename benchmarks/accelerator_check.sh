#!/usr/bin/env bash
# The GPU check, in one script: on a machine with an NVIDIA GPU (CUDA 12 driver) it
#   1. sets up the venv (scripts/setup.sh) and adds JAX's CUDA 12 plugin, same JAX version;
#   2. times the ResNet-50 bf16 train step (benchmarks.step_bench, configs/in1k.py, 224 px) at
#      global batch 128, 256 and 512 (a batch that does not fit is reported, not fatal);
#   3. runs the input-pipeline benchmark (host CPU);
#   4. trains the main job's config on Fashion-MNIST for one epoch with simlap.main;
#   5. writes OUT/accelerator_check.md: one Markdown table of all of it.
#
#   bash benchmarks/accelerator_check.sh [OUT]     (default OUT: runs/accelerator_check)
#
# Every raw output stays in OUT next to the table. The Fashion-MNIST files come from Debian's
# dataset-fashion-mnist package (scripts/setup.sh installs it) or $SIMLAP_FASHION_MNIST_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/accelerator_check}
mkdir -p "$OUT"
PY=.venv/bin/python

bash scripts/setup.sh
echo "[check] installing jax[cuda12]==0.10.2"
$PY -m pip install -q "jax[cuda12]==0.10.2"
$PY - <<'EOF'
import jax
devices = jax.devices()
if devices[0].platform != "gpu":
  raise SystemExit(f"accelerator_check: JAX sees no GPU ({devices}); check the driver")
print(f"[check] {len(devices)} x {devices[0].device_kind}")
EOF

for batch in 128 256 512; do
  echo "[check] step_bench resnet50 bf16 batch $batch"
  if ! $PY -m benchmarks.step_bench --config=configs/in1k.py --dtype=bf16 --batch="$batch" \
      --steps=20 --warmup=3 >"$OUT/step_$batch.md" 2>"$OUT/step_$batch.err"; then
    # Most likely out of memory: keep the first line of the error as the table's result.
    reason=$(grep -m1 -o 'RESOURCE_EXHAUSTED.*' "$OUT/step_$batch.err" | cut -c1-120 || true)
    echo "| resnet50 | 224x224x3 | $batch | bfloat16 | failed: ${reason:-see step_$batch.err} |" \
      >"$OUT/step_$batch.md"
  fi
done

echo "[check] input_bench"
$PY -m benchmarks.input_bench --cores="1,$(nproc)" --readers=stream,random_access >"$OUT/input.txt" 2>"$OUT/input.err"

echo "[check] simlap.main, configs/default.py, 1 epoch"
start=$(date +%s)
$PY -m simlap.main --config=configs/default.py --workdir="$OUT/fmnist" \
  --config.num_epochs=1 >"$OUT/main.txt" 2>"$OUT/main.err"
echo "$(( $(date +%s) - start ))" >"$OUT/main.seconds"

$PY -m benchmarks.accelerator_table "$OUT"
echo "[check] table: $OUT/accelerator_check.md"
