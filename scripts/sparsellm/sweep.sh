#!/usr/bin/env bash
# Reproduce the small-scale sparse pre-training sweep and its analysis (CPU, ~40-70 min on 2 cores).
# Runs land in runs/sparsellm/ (git-ignored; finished runs are skipped, interrupted ones resume).
set -euo pipefail
cd "$(dirname "$0")/../.."
nice -n 10 .venv/bin/python scripts/sparsellm/sweep.py 2 | tee results/sparsellm/sweep_main.log
OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/sparsellm/analyze.py
