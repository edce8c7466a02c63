"""Training-set features: replay a large history file through the Rust core.

    python bench/bench_history.py --json                       # 10,000,000 transactions
    python bench/bench_history.py --json --events 1000000      # a quicker look

Simulates ``--events`` transactions (``--cards`` cards, as many days as that takes), writes
them to a Parquet file (not timed), then times what ``txfast train`` and ``txfast features``
do first: :func:`txfast.history.replay_features` reads the file batch by batch, decodes and
validates it natively, and computes every feature of every event with the streaming engine
(one engine, event order), into one float32 matrix. ``--label-features`` also turns on the
label-aware features (label events a delay after each transaction).

Prints ``features_tx_per_s`` (events per second over the replay, median of ``--repeat``
runs), the rows and columns of the matrix and the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench_history] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--cards", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--label-features", action="store_true", help="label-aware features on")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from txfast.config import load_settings
    from txfast.history import replay_features
    from txfast.simulate import simulate

    settings = load_settings(env={})
    if args.label_features:
        settings = settings.replace(features=settings.features.__class__(labels=True))
    days = max(1, math.ceil(args.events / (args.cards * 2.8)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.parquet"
        log(f"simulating {args.cards:,} cards x {days} days")
        table = simulate(args.cards, days, args.seed, start="2026-01-01")
        table = table.slice(0, min(args.events, table.num_rows))
        pq.write_table(table, path)
        n = table.num_rows
        del table
        log(f"{n:,} transactions in {path.stat().st_size / 1e6:,.0f} MB of Parquet")
        rates, shape = [], (0, 0)
        for i in range(args.repeat):
            t0 = time.perf_counter()
            fs = replay_features(settings, path)
            seconds = time.perf_counter() - t0
            shape = fs.X.shape
            rates.append(n / seconds)
            log(f"run {i + 1}: {seconds:.2f} s, {n / seconds:,.0f} tx/s")
            del fs
    result = {
        "events": n,
        "cards": args.cards,
        "label_features": args.label_features,
        "features_tx_per_s": statistics.median(rates),
        "runs_tx_per_s": rates,
        "rows": shape[0],
        "columns": shape[1],
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
