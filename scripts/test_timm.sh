#!/usr/bin/env bash
# The tests of timm backbones, in their own environment (.venv-timm): timm needs torchvision, and
# the torchvision on PyPI loads only beside the torch release it was built for (2.14.1 here, a
# CUDA build that runs on the CPU too), not beside the CPU torch 2.13.0 of .venv. Fails when a
# test fails or when none is collected (pytest exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
unset VIRTUAL_ENV
export HEADKIT_VENV=$PWD/.venv-timm HEADKIT_TORCH="torch==2.14.1 torchvision==0.29.1" HEADKIT_EXTRAS="dev,timm"
bash scripts/setup.sh
source scripts/venv.sh
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -q -m timm "$@"
