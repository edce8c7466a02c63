#!/usr/bin/env bash
# The demo on embedded defaults: simulate a month of history, train an Isolation Forest on
# features computed by the Rust core, then score a live simulated stream into DuckDB.
# Usage: scripts/demo.sh VENV_DIR   (environment: DEMO_CARDS, DEMO_DAYS, DEMO_DIR)
set -euo pipefail
venv=${1:-.venv}
txfast="$venv/bin/txfast"
cards=${DEMO_CARDS:-5000}
days=${DEMO_DAYS:-30}
dir=${DEMO_DIR:-var/demo}
mkdir -p "$dir"
store="duckdb:$dir/txfast.duckdb"
registry="$dir/registry"

echo "== 1/3 simulate $days days of history for $cards cards"
"$txfast" simulate --cards "$cards" --days "$days" --seed 1 --start 2026-01-01 --out "$dir/history.parquet"
echo "== 2/3 train an Isolation Forest on features from the Rust core"
"$txfast" train --data "$dir/history.parquet" --model isolation-forest --registry "$registry" --promote
echo "== 3/3 score a live simulated stream (the next day) into DuckDB"
"$txfast" run --source simulate --cards "$cards" --days 1 --seed 1 --start 2026-01-31 \
  --warm-from "$dir/history.parquet" --store "$store" --registry "$registry"
echo
echo "Most severe alerts:"
"$txfast" alerts --store "$store" --risk CRITICAL --risk HIGH --limit 5
cat <<TXT

Query the alerts yourself:
  $txfast alerts --store $store --risk CRITICAL --limit 20
  $venv/bin/python -c "import duckdb; print(duckdb.connect('$dir/txfast.duckdb', read_only=True).sql('SELECT risk_level, action, count(*) FROM alerts GROUP BY ALL ORDER BY ALL'))"
TXT
