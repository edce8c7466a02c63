"""Store benchmark: bulk writes, a filtered first page of alerts, dashboard statistics.

    python bench/bench_store.py --json            # 10,000,000 transactions, both backends
    python bench/bench_store.py --json --quick    # 500,000 transactions, a few minutes less

For each backend (DuckDB in a temporary file; PostgreSQL in a throwaway cluster started with
``scripts/postgres.sh``, or ``--pg-url``):

- ``write_rows_per_s``: scored transactions written per second of ``write_batch`` (batches of
  8192, history ``all``, features stored for the alerts only, 5 % alerts), over the whole
  load; the data is generated column-wise between batches and not timed.
- ``alerts_page_p99_ms``: p99 of the first page (limit 50) of ``risk=HIGH`` alerts of one
  card or of one day (half each, random cards that have alerts, random days), over
  ``--queries`` queries after a warm-up.
- ``stats_ms``: median of ``stats()`` over a 30-day window (``--stats-runs`` runs).

PostgreSQL reads are measured after ``ANALYZE`` (``*_before_vacuum``) and again after
``VACUUM ANALYZE`` (the main keys): the steady state autovacuum keeps. The 1-minute load
average before and after each phase is recorded: the figures are only comparable on a quiet
machine.

Prints ``{"duckdb": {...}, "postgresql": {...}}`` (``--json``); extra keys per backend give the
rows stored, the per-batch rate at the start and the end of the load, p50s and maxima.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _store_data import Shape, batches  # noqa: E402

from txfast.store import AlertQuery, Store, open_store  # noqa: E402

START = datetime(2026, 1, 1)


def log(msg: str) -> None:
    print(f"[bench_store] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load(store: Store, shape: Shape, batch_size: int) -> dict[str, Any]:
    """Write the generated history; returns write figures and query targets."""
    write_s = 0.0
    rates: list[float] = []
    alert_cards: list[np.ndarray] = []
    rows = alerts = 0
    t_wall = time.perf_counter()
    for batch in batches(shape, batch_size):
        t0 = time.perf_counter()
        store.write_batch(batch)
        dt = time.perf_counter() - t0
        write_s += dt
        rates.append(batch.transactions.num_rows / dt)
        rows += batch.transactions.num_rows
        alerts += batch.alerts.num_rows
        high = batch.alerts.filter(
            batch.alerts["risk_level"].to_numpy(zero_copy_only=False) == "HIGH"
        )
        if high.num_rows:
            alert_cards.append(high["card_id"].to_numpy(zero_copy_only=False)[:4])
        if len(rates) % 100 == 0:
            log(f"  {rows:,} rows, {rows / write_s:,.0f}/s so far")
    tenth = max(1, len(rates) // 10)
    return {
        "write_rows_per_s": rows / write_s,
        "write_s": write_s,
        "load_wall_s": time.perf_counter() - t_wall,
        "rows": rows,
        "alerts": alerts,
        "batches": len(rates),
        "batch_rows_per_s_first_10pct_median": statistics.median(rates[:tenth]),
        "batch_rows_per_s_last_10pct_median": statistics.median(rates[-tenth:]),
        "_cards": np.concatenate(alert_cards),
    }


def read(store: Store, cards: np.ndarray, days: int, queries: int, stats_runs: int, seed: int):
    """Alert pages and statistics timings."""
    rng = np.random.default_rng(seed)

    def page(i: int) -> float:
        if i % 2 == 0:
            q = AlertQuery(risk_levels=("HIGH",), card_id=str(rng.choice(cards)))
        else:
            day = START + timedelta(days=int(rng.integers(0, days)))
            q = AlertQuery(risk_levels=("HIGH",), since=day, until=day + timedelta(days=1))
        t0 = time.perf_counter()
        result = store.list_alerts(q, limit=50)
        dt = (time.perf_counter() - t0) * 1000
        assert result.items, q
        return dt

    for i in range(min(50, queries)):  # warm-up
        page(i)
    pages = [page(i) for i in range(queries)]
    stats = []
    for _ in range(stats_runs):
        t0 = time.perf_counter()
        st = store.stats(START, START + timedelta(days=30))
        stats.append((time.perf_counter() - t0) * 1000)
    return {
        "alerts_page_p99_ms": percentile(pages, 99),
        "alerts_page_p50_ms": percentile(pages, 50),
        "alerts_page_max_ms": max(pages),
        "alerts_page_queries": queries,
        "stats_ms": statistics.median(stats),
        "stats_max_ms": max(stats),
        "stats_runs": stats_runs,
        "stats_transactions": st.transactions,
        "stats_alerts": st.alerts,
    }


def bench_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    shape = Shape(args.transactions, args.days, args.cards, args.merchants, args.alert_rate)
    log(f"{name}: writing {shape.transactions:,} transactions to {url}")
    load_before = os.getloadavg()[0]
    with open_store(url) as store:
        figures = load(store, shape, args.batch)
        figures["load_avg_before"] = load_before
        figures["load_avg_after_write"] = os.getloadavg()[0]
        log(
            f"{name}: {figures['write_rows_per_s']:,.0f} rows/s "
            f"({figures['rows']:,} rows, {figures['alerts']:,} alerts)"
        )
        cards = figures.pop("_cards")
        if name == "postgresql":
            # As autovacuum would have done by then: planner statistics first, then reads;
            # then a VACUUM (visibility map, the rollups' dead rows) and the reads again.
            _maintain(url, "ANALYZE", figures, "analyze_s")
            before = read(store, cards, args.days, args.queries, args.stats_runs, args.seed)
            figures.update({f"{k}_before_vacuum": v for k, v in before.items()})
            _maintain(url, "VACUUM ANALYZE", figures, "vacuum_s")
        figures.update(read(store, cards, args.days, args.queries, args.stats_runs, args.seed))
        figures["load_avg_after"] = os.getloadavg()[0]
        log(
            f"{name}: alerts page p99 {figures['alerts_page_p99_ms']:.2f} ms, "
            f"stats {figures['stats_ms']:.1f} ms"
        )
        t0 = time.perf_counter()
    figures["close_s"] = time.perf_counter() - t0
    return figures


def _maintain(url: str, statement: str, figures: dict[str, Any], key: str) -> None:
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)
    figures[key] = time.perf_counter() - t0


def start_postgres(workdir: Path) -> tuple[str, dict[str, str]]:
    env = {
        **os.environ,
        "TXFAST_PG_DIR": str(workdir / "pg"),
        # A production-like memory setting; durability settings stay at their defaults
        # (fsync on, synchronous_commit on: every batch is durable when write_batch returns).
        "TXFAST_PG_OPTIONS": "-c shared_buffers=2GB -c max_wal_size=8GB",
    }
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/postgres.sh"), "start"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout.strip().splitlines()[-1], env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quick", action="store_true", help="500,000 transactions, fewer queries")
    p.add_argument("--transactions", type=int, default=None)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--cards", type=int, default=None)
    p.add_argument("--merchants", type=int, default=20_000)
    p.add_argument("--alert-rate", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--stats-runs", type=int, default=15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backends", default="duckdb,postgresql")
    p.add_argument("--pg-url", default=None, help="an existing server (a database to fill)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.transactions is None:
        args.transactions = 500_000 if args.quick else 10_000_000
    if args.cards is None:
        args.cards = max(1000, args.transactions // 20)
    if args.queries is None:
        args.queries = 200 if args.quick else 1000

    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="txfast-bench-store-", dir="/tmp"))
    os.chmod(workdir, 0o755)  # as root, the server's user must reach the cluster directory
    try:
        for name in args.backends.split(","):
            if name == "duckdb":
                results[name] = bench_backend(name, f"duckdb:{workdir / 'bench.duckdb'}", args)
                size = sum(f.stat().st_size for f in workdir.glob("bench.duckdb*"))
                results[name]["file_bytes"] = size
            elif name == "postgresql":
                env = None
                url = args.pg_url
                if url is None:
                    url, env = start_postgres(workdir)
                try:
                    results[name] = bench_backend(name, url, args)
                finally:
                    if env is not None:
                        subprocess.run(
                            ["bash", str(ROOT / "scripts/postgres.sh"), "stop"],
                            env=env,
                            capture_output=True,
                            check=False,
                        )
            else:
                raise SystemExit(f"unknown backend {name!r}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    shape = {
        "transactions": args.transactions,
        "days": args.days,
        "cards": args.cards,
        "merchants": args.merchants,
        "alert_rate": args.alert_rate,
        "batch": args.batch,
    }
    for r in results.values():
        r["shape"] = shape
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for name, r in results.items():
            print(
                f"{name}: write {r['write_rows_per_s']:,.0f} rows/s, alerts page p99 "
                f"{r['alerts_page_p99_ms']:.2f} ms, stats {r['stats_ms']:.1f} ms"
            )


if __name__ == "__main__":
    main()
