#!/usr/bin/env bash
# Set up, then run the whole test suite (unit tests and launched 2/4-process runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check trainer models tests scripts
.venv/bin/lint-imports --no-cache  # the layers of trainer/ (pyproject.toml [tool.importlinter])
# Two pytest-xdist workers, one test file each at a time, the longest files first (tests/conftest.py):
# most in-process tests use one core, and a launched run waits on its start-up as much as it computes.
exec .venv/bin/python -m pytest -q -n "${SCALEOUT_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
