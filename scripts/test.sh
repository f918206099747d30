#!/usr/bin/env bash
# Set everything up, then run the whole test suite (8 simulated CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check (ruff.toml)"
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest tests "$@"
