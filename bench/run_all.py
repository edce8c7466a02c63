"""Every benchmark in one command (``make bench``): one JSON file and one markdown table.

    python bench/run_all.py [--quick] [--skip kafka,compare,...]

Runs, each in its own process (a crash or a missing service is reported, never fatal):
``bench_core.py``, ``bench_kafka.py``, ``bench_store.py``, ``bench_api.py`` and
``compare.py``, with their ``--json`` output. Writes ``bench/results/<date>.json`` (every
figure, the machine, the commit) and rewrites the table between the ``<!-- bench:table -->``
markers of ``bench/README.md`` with the headline figures and their targets.

``--quick`` runs the small sizes each script offers (minutes instead of an hour); the
figures are then indicative only, and the file is named ``<date>-quick.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (script, full arguments, quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "core": ("bench_core.py", [], ["--events", "200000", "--cards", "20000", "--skip-state"]),
    "kafka": (
        "bench_kafka.py",
        [],
        ["--events", "200000", "--seconds", "10", "--rates", "1000,10000"],
    ),
    "store": ("bench_store.py", [], ["--quick"]),
    "api": ("bench_api.py", [], ["--quick"]),
    "compare": ("compare.py", [], ["--quick"]),
}

# (label, bench, path into its JSON, target, higher is better)
HEADLINES: list[tuple[str, str, tuple[str, ...], str, bool]] = [
    ("whole path, tx/s", "core", ("tx_per_s",), "≥ 250,000", True),
    ("whole path vs pure Python", "core", ("ratio",), "≥ 50×", True),
    ("features, tx/s", "core", ("features_tx_per_s",), "≥ 3,000,000", True),
    ("state bytes per card", "core", ("bytes_per_card",), "≤ 1,024", False),
    (
        "explanations on/off (forest)",
        "core",
        ("explain", "isolation_forest", "ratio"),
        "≥ 0.90",
        True,
    ),
    ("explanations on/off (boosted trees)", "core", ("explain", "gbt", "ratio"), "≥ 0.90", True),
    ("metrics on/off", "core", ("metrics", "ratio"), "≥ 0.97", True),
    ("Kafka drain, tx/s", "kafka", ("drain_tx_per_s",), "≥ 100,000", True),
    ("Kafka drain vs bare consume", "kafka", ("drain_vs_bare",), "≥ 0.5", True),
    ("Kafka p99 at 10k tx/s, ms", "kafka", ("latency", "10000", "p99_ms"), "≤ 25", False),
    ("DuckDB write, rows/s", "store", ("duckdb", "write_rows_per_s"), "≥ 400,000", True),
    ("DuckDB alerts page p99, ms", "store", ("duckdb", "alerts_page_p99_ms"), "≤ 10", False),
    ("DuckDB 30-day stats, ms", "store", ("duckdb", "stats_ms"), "≤ 200", False),
    ("PostgreSQL write, rows/s", "store", ("postgresql", "write_rows_per_s"), "≥ 100,000", True),
    (
        "PostgreSQL alerts page p99, ms",
        "store",
        ("postgresql", "alerts_page_p99_ms"),
        "≤ 10",
        False,
    ),
    ("PostgreSQL 30-day stats, ms", "store", ("postgresql", "stats_ms"), "≤ 200", False),
    ("API GET /alerts p99 (DuckDB), ms", "api", ("duckdb", "alerts_p99_ms"), "≤ 20", False),
    ("API GET /alerts p99 (PostgreSQL), ms", "api", ("postgresql", "alerts_p99_ms"), "≤ 20", False),
    ("SSE scored → received p99, ms", "api", ("sse_p99_ms",), "≤ 500", False),
    ("drain vs best peer", "compare", ("throughput_ratio_vs_best_peer",), "≥ 10×", True),
    ("p99 at 10k vs best peer", "compare", ("p99_ratio_vs_best_peer",), "≤ 0.1", False),
]

BEGIN, END = "<!-- bench:table -->", "<!-- /bench:table -->"


def log(msg: str) -> None:
    print(f"[run_all] {msg}", file=sys.stderr, flush=True)


def run_bench(name: str, quick: bool, timeout_s: float) -> dict[str, Any]:
    script, full, small = BENCHES[name]
    path = HERE / script
    if not path.exists():
        return {"error": f"{script} does not exist"}
    cmd = [sys.executable, str(path), "--json", *(small if quick else full)]
    log(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    seconds = round(time.perf_counter() - t0, 1)
    out = proc.stdout
    start = out.find("{")
    if proc.returncode != 0 or start < 0:
        tail = (proc.stderr or out).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "seconds": seconds}
    try:
        figures = json.loads(out[start:])
    except json.JSONDecodeError as e:
        return {"error": f"unreadable JSON: {e}", "seconds": seconds}
    figures["_seconds"] = seconds
    return figures


def pick(results: dict[str, Any], bench: str, path: tuple[str, ...]) -> Any:
    node: Any = results.get(bench)
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def meets(value: Any, target: str, higher: bool) -> str:
    if not isinstance(value, int | float):
        return ""
    number = float(target.strip("≥≤ ×").replace(",", ""))
    return "✓" if (value >= number if higher else value <= number) else "✗"


def table(results: dict[str, Any], stamp: str, quick: bool) -> str:
    lines = [
        f"Headline figures of `make bench` ({stamp}{', --quick' if quick else ''}; "
        f"every figure: `bench/results/{stamp}{'-quick' if quick else ''}.json`).",
        "",
        "| figure | value | target | |",
        "| --- | ---: | --- | --- |",
    ]
    for label, bench, path, target, higher in HEADLINES:
        err = pick(results, bench, ("error",))
        value = pick(results, bench, path)
        shown = fmt(value) if err is None else f"not run: {str(err)[:60]}"
        lines.append(f"| {label} | {shown} | {target} | {meets(value, target, higher)} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "loadavg": list(os.getloadavg()),
        "commit": commit,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (indicative figures)")
    ap.add_argument("--skip", default="", help="comma-separated benches to leave out")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(BENCHES)
    if unknown:
        ap.error(f"unknown benches {sorted(unknown)}; known: {', '.join(BENCHES)}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    for name in BENCHES:
        results[name] = (
            {"error": "skipped"} if name in skip else run_bench(name, args.quick, args.timeout)
        )
    out = HERE / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out}")
    md = table(results, stamp, args.quick)
    if not args.no_readme:
        readme = HERE / "README.md"
        text = readme.read_text()
        block = f"{BEGIN}\n{md}\n{END}"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n## All benchmarks — `make bench`\n\n" + block + "\n"
        readme.write_text(text)
        log(f"updated the table in {readme}")
    print(md)


if __name__ == "__main__":
    main()
