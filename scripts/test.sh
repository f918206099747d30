#!/usr/bin/env bash
# Set everything up, then run the whole test suite (8 simulated CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check (ruff.toml)"
.venv/bin/ruff check --quiet .
# Two workers, whole files each (module fixtures are built once); more on bigger machines, at
# most 4 (each worker simulates 8 devices and may start 2-process jobs).
workers=$(nproc 2>/dev/null || echo 2)
workers=$(( workers < 2 ? 2 : (workers > 4 ? 4 : workers) ))
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile tests "$@"
