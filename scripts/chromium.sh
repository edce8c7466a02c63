#!/usr/bin/env bash
# The headless Chromium the dashboard's browser tests drive (Playwright with executable_path).
#
# Usage: scripts/chromium.sh
#
# Prints the path of a Chromium executable on stdout (its version goes to stderr), looking at
# $TXFAST_CHROMIUM, then chromium, chromium-browser, google-chrome and google-chrome-stable on
# PATH. When none is found and the script runs as root with apt-get, Debian's `chromium`
# package is installed (apt-get update first; fonts-liberation beside it, for screenshots
# with real fonts). Exits 1, saying why, when no browser can be had.
#
# Environment:
#   TXFAST_CHROMIUM   A Chromium (or Chrome) executable to use as it is.
set -euo pipefail

die() { echo "chromium.sh: error: $*" >&2; exit 1; }
note() { echo "chromium.sh: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

[ $# -eq 0 ] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

find_browser() {
  local name path
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if path=$(command -v "$name" 2>/dev/null); then echo "$path"; return 0; fi
  done
  return 1
}

install_browser() {
  [ "$(id -u)" -eq 0 ] \
    || die "Chromium not found; install it (Debian: sudo apt-get install chromium) or set TXFAST_CHROMIUM"
  command -v apt-get >/dev/null 2>&1 \
    || die "Chromium not found and apt-get is not available; install Chromium or set TXFAST_CHROMIUM"
  local t0; t0=$(now)
  note "Chromium not found: installing Debian's chromium package (apt-get)…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends chromium fonts-liberation >&2 \
    || die "apt-get install chromium failed"
  note "installed chromium in $(since "$t0")"
}

report() {
  local version
  version=$("$1" --version 2>/dev/null) || die "$1 --version failed"
  note "$version"
  echo "$1"
}

if [ -n "${TXFAST_CHROMIUM:-}" ]; then
  [ -x "$TXFAST_CHROMIUM" ] || die "TXFAST_CHROMIUM=$TXFAST_CHROMIUM is not an executable"
  report "$TXFAST_CHROMIUM"
  exit 0
fi
# One install at a time (the test suite and a developer may ask together).
if command -v flock >/dev/null 2>&1; then
  exec 9>>"${TMPDIR:-/tmp}/txfast-chromium.lock"
  flock -w 900 9 || die "another chromium.sh holds ${TMPDIR:-/tmp}/txfast-chromium.lock"
fi
if ! browser=$(find_browser); then
  install_browser
  browser=$(find_browser) || die "chromium is installed but not on PATH"
fi
report "$browser"
