#!/usr/bin/env bash
# Set up the project's virtual environment (idempotent), check dependencies, lint and types, and run
# the whole test suite offline (the docs site's strict build and its examples included); then the
# wheel built, installed into a clean environment and run, the README's quickstart and the timm
# backbones' tests there (scripts/test_wheel.sh says why). Any failure, or a run that collects no
# tests (pytest exit code 5), makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
# Bytecode is written on a module's first import and read by every later process (scripts/setup.sh
# then skips compiling all of site-packages at install); a machine-wide PYTHONDONTWRITEBYTECODE
# would have every test process compile torch and transformers again.
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
source scripts/venv.sh
python -m deptry src
python -m ruff check src tests benchmarks examples scripts
# -n auto: one pytest-xdist worker per core (tests/conftest.py gives each its share of the threads and
# keeps tests that share a module's fixture on one worker); --durations: the slowest tests, in the log.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -q -n auto --dist loadgroup --durations=25 "$@"
# The type check runs beside the wheel test, whose pip installs keep one core busy at most: on 2
# cores that hides its ~45 s; its verdict is read at the end, and fails the script like any step.
typecheck=$(mktemp)
trap 'rm -f "$typecheck"' EXIT
python -m mypy src >"$typecheck" 2>&1 & mypy_pid=$!
bash scripts/test_wheel.sh
wait "$mypy_pid" || { cat "$typecheck"; echo "mypy found type errors in src/" >&2; exit 1; }
cat "$typecheck"
