#!/usr/bin/env bash
# The main job: set up, then train the tiny model on the embedded corpus with 2 processes,
# DeepSpeed ZeRO-2 and the sharded Muon. Extra arguments are config overrides (--train.steps 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/scaleout train configs/tiny.yaml \
  --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml "$@"
