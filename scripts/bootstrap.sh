#!/usr/bin/env bash
# Create (or refresh) a virtual environment with the build and development tools.
# Usage: scripts/bootstrap.sh VENV_DIR
set -euo pipefail
venv=${1:-.venv}
py=${PYTHON:-python3}
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    echo "error: Rust (cargo) is required to build the native core: https://rustup.rs" >&2; exit 1
  fi
fi
stamp="$venv/.txfast-bootstrap"
reqs="maturin>=1.7,<2 ruff mypy"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$reqs" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q $reqs
  echo "$reqs" > "$stamp"
fi
