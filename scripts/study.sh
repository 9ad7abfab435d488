#!/usr/bin/env bash
# Command 1: set up, then run every study on the built-in model -> figures/ and figures/REPORT.md.
#   LAB_SIZE=full bash scripts/study.sh     # full size (longer)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/python -m analyses.run_all figures
