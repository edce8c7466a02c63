#!/usr/bin/env bash
# The demo on embedded defaults: simulate a month of history, train an Isolation Forest on
# features computed by the Rust core, score a simulated day into DuckDB, then serve the
# analyst dashboard from a scorer fed by a paced simulated stream, until Ctrl-C.
#
# Usage: scripts/demo.sh VENV_DIR
# Environment:
#   DEMO_CARDS (5000), DEMO_DAYS (30): the simulated history;
#   DEMO_DIR (var/demo): where the history, the registry and the DuckDB store go;
#   DEMO_RATE (200 events/s), DEMO_LIVE_DAYS (30): the live stream behind the dashboard;
#   DEMO_HOST (127.0.0.1), DEMO_PORT (8000): where the dashboard is served;
#   DEMO_SERVE (1): 0 stops after the scored day, without the dashboard.
set -euo pipefail
venv=${1:-.venv}
txfast="$venv/bin/txfast"
python="$venv/bin/python"
cards=${DEMO_CARDS:-5000}
days=${DEMO_DAYS:-30}
dir=${DEMO_DIR:-var/demo}
rate=${DEMO_RATE:-200}
live_days=${DEMO_LIVE_DAYS:-30}
host=${DEMO_HOST:-127.0.0.1}
port=${DEMO_PORT:-8000}
serve=${DEMO_SERVE:-1}
mkdir -p "$dir"
store="duckdb:$dir/txfast.duckdb"
registry="$dir/registry"
steps=4
[ "$serve" = 0 ] && steps=3

echo "== 1/$steps simulate $days days of history for $cards cards"
"$txfast" simulate --cards "$cards" --days "$days" --seed 1 --start 2026-01-01 --out "$dir/history.parquet"
echo "== 2/$steps train an Isolation Forest on features from the Rust core"
"$txfast" train --data "$dir/history.parquet" --model isolation-forest --registry "$registry" --promote
echo "== 3/$steps score a live simulated stream (the next day) into a new DuckDB store"
rm -f "$dir/txfast.duckdb" "$dir/txfast.duckdb.wal"  # a re-run starts afresh
"$txfast" run --source simulate --cards "$cards" --days 1 --seed 1 --start 2026-01-31 \
  --warm-from "$dir/history.parquet" --store "$store" --registry "$registry"
echo
echo "Most severe alerts:"
"$txfast" alerts --store "$store" --risk CRITICAL --risk HIGH --limit 5
cat <<TXT

Query the alerts yourself:
  $txfast alerts --store $store --risk CRITICAL --limit 20
  $python -c "import duckdb; print(duckdb.connect('$dir/txfast.duckdb', read_only=True).sql('SELECT risk_level, action, count(*) FROM alerts GROUP BY ALL ORDER BY ALL'))"
TXT
[ "$serve" = 0 ] && exit 0

# The dashboard: an admin key (DuckDB allows one writing process, so it is created before
# the scorer opens the store), then the scorer with the API in-process, paced at $rate
# events/s in batches of a quarter second.
echo
echo "== 4/$steps serve the analyst dashboard, fed by a simulated stream at $rate events/s"
key_json=$("$txfast" keys create --role admin --name demo \
  --store "$store" --json)
token=$("$python" -c 'import json, sys; print(json.loads(sys.argv[1])["token"])' "$key_json")
url="http://$host:$port/"
[[ $host == *:* ]] && url="http://[$host]:$port/"
log="$dir/live.log"
# Batches of a quarter of a second of events, so that alerts arrive as they are scored.
batch_env=()
rate_int=${rate%.*}
if [ "${rate_int:-0}" -gt 0 ]; then
  batch_env=("TXFAST_BATCH_SIZE=$(( rate_int >= 4 ? rate_int / 4 : 1 ))")
fi

# Prints where the dashboard is once it answers (the scorer's own output goes to $log, so
# these are the last lines on the terminal).
announce() {
  local _
  for _ in $(seq 1 600); do
    if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "${url}health" 2>/dev/null; then
      cat <<TXT
   the scorer scores $live_days simulated days from 2026-02-01 at $rate events/s, then keeps
   serving; its log: $log. Stop it with Ctrl-C.

Sign in with this API key (admin; shown once, only its hash is stored):
   $token
Open the live dashboard:
   $url
TXT
      return 0
    fi
    sleep 0.2
  done
  echo "the dashboard did not answer at $url within 2 minutes; see $log" >&2
}
announce &
announcer=$!
interrupted=0
trap 'interrupted=1' INT TERM
set +e
env "${batch_env[@]}" "$txfast" run --source simulate --cards "$cards" \
  --days "$live_days" --seed 2 --start 2026-02-01 --rate "$rate" \
  --warm-from "$dir/history.parquet" --store "$store" --registry "$registry" \
  --api "$host:$port" --keep-serving >"$log" 2>&1
status=$?
set -e
trap - INT TERM
kill "$announcer" 2>/dev/null || true
wait "$announcer" 2>/dev/null || true
if [ "$status" -ne 0 ] && [ "$interrupted" = 0 ]; then
  echo "the scorer stopped with status $status; the end of $log:" >&2
  tail -n 20 "$log" >&2
  exit "$status"
fi
echo "dashboard stopped (the scorer's log: $log)"
