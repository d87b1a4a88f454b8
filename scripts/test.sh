#!/usr/bin/env bash
# Set up the project's virtual environment (idempotent), check dependencies and lint, and run the
# whole test suite offline; then the timm backbones' tests in their own environment
# (scripts/test_timm.sh says why). Any failure, or a run that collects no tests (pytest exit
# code 5), makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
python -m deptry src
python -m ruff check src tests benchmarks
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -q "$@"
bash scripts/test_timm.sh
