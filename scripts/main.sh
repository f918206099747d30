#!/usr/bin/env bash
# Set everything up, then run the main job: SimLAP on the embedded Fashion-MNIST (configs/default.py).
# Extra arguments pass through to simlap.main, e.g. --config.num_epochs=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m simlap.main --config=configs/default.py \
  --workdir="${WORKDIR:-runs/default}" "$@"
