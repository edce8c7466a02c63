#!/usr/bin/env bash
# The whole test suite: Rust unit tests, then the Python tests against the built wheel
# installed in a fresh virtual environment (so a file missing from the wheel fails).
# Usage: scripts/test.sh BUILD_VENV TEST_VENV DIST_DIR [pytest args...]
set -euo pipefail
venv=${1:-.venv}; test_venv=${2:-.venv-test}; dist=${3:-dist}; shift 3 || true
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo test"
cargo test --quiet 2>&1 | tail -n 20

echo "== fresh test environment"
rm -rf "$test_venv"
"$venv/bin/python" -m venv "$test_venv"
"$test_venv/bin/python" -m pip install -q --upgrade pip
wheel=$(ls "$dist"/txfast-*.whl)
"$test_venv/bin/python" -m pip install -q "${wheel}[test,train]"

echo "== headless Chromium (the dashboard's browser tests)"
# Installs Debian's chromium when missing (as root); without it the browser tests skip, and
# fail when CI=true.
if chromium=$(bash "$(dirname "$0")/chromium.sh"); then
  export TXFAST_CHROMIUM="$chromium"
else
  echo "no Chromium: the browser tests will be skipped (or fail under CI=true)" >&2
fi

echo "== pytest"
# Run from the repository root without python/ on sys.path: `import txfast` resolves to the
# installed wheel.
"$test_venv/bin/python" -c 'import txfast, sys; p = txfast.__file__; sys.exit(0 if "site-packages" in p else f"txfast imported from {p}, not from the wheel")'
"$test_venv/bin/pytest" "$@"
