#!/usr/bin/env bash
# Command 2: set up (with test tools), then run every test: unit tests, studies at small size, notebooks (nbval).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg LAB_SIZE=small
.venv/bin/python -m pytest "$@"
