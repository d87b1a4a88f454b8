# Sourced by the other scripts: pick the project's virtual environment and put it first on PATH.
# The active one when VIRTUAL_ENV is set, else .venv in the checkout (HEADKIT_VENV overrides).
# Nothing is ever installed into the interpreter that creates it.
if [ -n "${VIRTUAL_ENV:-}" ]; then
    HEADKIT_VENV=$VIRTUAL_ENV
else
    HEADKIT_VENV=${HEADKIT_VENV:-$PWD/.venv}
fi
export HEADKIT_VENV
export PATH="$HEADKIT_VENV/bin:$PATH"
