#!/usr/bin/env bash
# Set up, then run the whole test suite (unit tests and launched 2/4-process runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check trainer models tests scripts
exec .venv/bin/python -m pytest -q "$@"
