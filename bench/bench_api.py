"""Alerts API benchmark: alert pages under a fixed load, beside a live scorer; live-feed latency.

    python bench/bench_api.py --json            # 1,000,000 stored alerts, both backends, 30 s
    python bench/bench_api.py --json --quick    # 100,000 alerts, 10 s each

For each backend (DuckDB in a temporary file; PostgreSQL in a throwaway cluster started with
``scripts/postgres.sh``, or ``--pg-url``), in this order:

1. The store is filled with ``--alerts`` alerts among ``--transactions`` scored transactions
   over 30 days (``bench/_store_data.py``, as ``bench_store.py``; written with
   ``write_batch``, PostgreSQL then ``VACUUM ANALYZE``d), and an API key is created.
2. One process runs what ``txfast run --source simulate --rate 10000 --api HOST:PORT
   --warm-from HISTORY`` runs: a real :class:`~txfast.pipeline.Pipeline` (feature state warmed
   with a week of simulated history, an Isolation Forest trained on it) scoring a
   :class:`~txfast.sources.SimulatedSource` paced at ``--rate`` transactions/s into that same
   store, in a thread, and ``create_app(settings, store=pipeline.store)`` served by
   :class:`~txfast.api.ApiServer` (uvicorn in a thread).
3. Two client processes, once the scorer has run ``--warmup`` seconds, for ``--duration``
   seconds:

   - an open-loop load of ``GET /alerts?risk=HIGH&limit=50`` at ``--qps`` requests/s:
     request *i* is due at ``t0 + i / qps`` whatever happened before; a pool of threads with
     keep-alive connections sends them, and a request's latency runs from its due time to the
     end of its response, so time spent queueing behind slow responses counts (no
     coordinated omission);
   - a ``GET /alerts/stream`` client: for every alert event received, the time from the alert's
     ``created_at`` to the arrival of its ``data`` line. ``created_at`` is stamped by the
     pipeline when the batch has been scored (scores, rules and explanations computed), just
     before the store write; so this is store commit + the feed's store read (woken by the
     pipeline after each write, as ``txfast run --api`` wires it) + encoding + delivery. Both
     processes run on this machine's clock (``time.time()``).

Before the scorer starts, the same load runs ``--baseline`` seconds against the same server
(``idle_*``: what the scorer adds). Each backend is measured twice by default
(``--nodelay both``), each time with a fresh scorer scoring days of its own: as shipped, and
with ``TCP_NODELAY`` also set on the listening socket (``with_tcp_nodelay``). ``ApiServer``
sets it on the accepted connections itself now, so the second run is the same code again.

Figures per backend: ``alerts_p50_ms``/``alerts_p99_ms``/``alerts_max_ms`` (open-loop latency),
``achieved_rps`` (responses per second over the load), ``errors`` (non-200 or failed requests),
``service_p99_ms`` (send to response, without the client queue), ``sse_*`` (live feed),
``scorer_tx_per_s`` (transactions the pipeline scored and stored per second while the load ran),
and what explains them: ``cpu`` (cores used by the process, the scorer thread, the event loop;
the machine), ``gc`` (garbage-collector pauses, which stop every thread), ``scorer_batch_ms_*``
(a batch's processing, decode to commit) and ``alerts_p99_ms_during_batches`` /
``_outside_batches`` (requests in flight while a batch was processed, and the others).
``sse_p99_ms`` at the top level is the worse of the backends' (as shipped).

Prints ``{"duckdb": {...}, "postgresql": {...}, "sse_p99_ms": ...}`` with ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

PAGE_PATH = "/alerts?risk=HIGH&limit=50"
LIVE_START = "2026-02-01"
"""First simulated day of the live stream (the stored history covers January 2026)."""


def log(msg: str) -> None:
    print(f"[bench_api] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# -- clients (separate processes) -------------------------------------------------------------


def load_client(
    url: str, token: str, qps: float, duration: float, start_at: float, workers: int
) -> dict[str, Any]:
    """Open-loop ``GET /alerts?risk=HIGH&limit=50`` at ``qps`` from wall time ``start_at``."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    headers = {"Authorization": f"Bearer {token}", "Connection": "keep-alive"}
    n = int(qps * duration)
    jobs: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
    results: list[tuple[float, float, float, int | str] | None] = [None] * n
    bad_pages: list[str] = []
    retried: list[int] = []  # requests sent again on a fresh connection
    ready = threading.Barrier(workers + 1)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host, port, timeout=30)

    def get(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        conn.request("GET", PAGE_PATH, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def worker() -> None:
        conn = connect()
        for _ in range(3):  # connection and server warm-up, not measured
            get(conn)
        ready.wait()
        while (job := jobs.get()) is not None:
            i, due = job
            started = time.perf_counter()
            try:
                try:
                    status, body = get(conn)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # The server closed the idle keep-alive connection as this request went
                    # out (uvicorn closes after 5 s idle): reconnect and send it again, as
                    # HTTP clients do for an idempotent request. The retry's time counts.
                    conn.close()
                    conn = connect()
                    retried.append(i)
                    status, body = get(conn)
                if status == 200 and i % 50 == 0:  # spot-check the pages
                    items = json.loads(body)["items"]
                    if len(items) != 50 or any(a["risk_level"] != "HIGH" for a in items):
                        bad_pages.append(f"request {i}: {len(items)} items")
            except Exception as e:  # a failed request is an error, never a stop
                status = f"{type(e).__name__}: {e}"
                conn.close()
                conn = connect()
            results[i] = (due, started, time.perf_counter(), status)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    ready.wait()
    # Wall clock for the rendezvous with the server and the feed client; perf_counter after.
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / qps
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((i, due))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(60)
    done = [r for r in results if r is not None]
    ok = [r for r in done if r[3] == 200]
    errors: dict[str, int] = {}
    for r in done:
        if r[3] != 200:
            errors[str(r[3])] = errors.get(str(r[3]), 0) + 1
    latency = [end - due for due, _, end, _ in ok]
    service = [end - started for _, started, end, _ in ok]
    wall = time.time() - time.perf_counter()  # perf_counter → wall clock, for the server
    due_wall = [due + wall for due, _, _, _ in ok]
    last = max((r[2] for r in done), default=t0)
    return {
        "requests": n,
        "completed": len(done),
        "ok": len(ok),
        "errors": n - len(ok),
        "error_kinds": errors,
        "retried_on_closed_connection": len(retried),
        "bad_pages": bad_pages[:5],
        "latency_s": latency,
        "service_s": service,
        "due_wall": due_wall,
        "span_s": last - t0,
        "late_dispatch_ms": _ms(max((r[1] - r[0] for r in done), default=0.0)),
    }


def sse_client(url: str, token: str, start_at: float, duration: float, conn: Any) -> dict[str, Any]:
    """Reads ``/alerts/stream``; the delay of each alert created in the measured window."""
    import httpx

    latencies: list[float] = []
    events = 0
    end_at = start_at + duration
    headers = {"Authorization": f"Bearer {token}"}
    error = None
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(30.0)) as http:
            with http.stream("GET", "/alerts/stream", headers=headers) as resp:
                resp.raise_for_status()
                conn.send("connected")
                for line in resp.iter_lines():
                    now = time.time()
                    if line.startswith("data:"):
                        events += 1
                        created = datetime.fromisoformat(json.loads(line[5:])["created_at"])
                        created_s = created.timestamp()
                        if start_at <= created_s < end_at:
                            latencies.append(now - created_s)
                        elif created_s >= end_at:  # the feed is in created_at order: done
                            break
                    if now > end_at + 15.0:  # the scorer stopped storing alerts?
                        error = "no alert created after the window arrived within 15 s"
                        break
    except Exception as e:  # reported, not raised: the load figures still count
        error = f"{type(e).__name__}: {e}"
    return {"events": events, "latency_s": latencies, "error": error}


def _run_in_process(target: Any, *args: Any) -> tuple[mp.Process, Any]:
    """``target(*args)`` in a spawned process; its result comes back on the returned pipe."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, target, args), daemon=True)
    proc.start()
    return proc, parent


def _child(conn: Any, target: Any, args: tuple[Any, ...]) -> None:
    if target is sse_client:
        result = target(*args, conn)
    else:
        result = target(*args)
    conn.send(result)
    conn.close()


def _load_figures(load: dict[str, Any]) -> dict[str, Any]:
    """The reported figures of one :func:`load_client` run."""
    return {
        "alerts_p50_ms": _ms(percentile(load["latency_s"], 50)),
        "alerts_p99_ms": _ms(percentile(load["latency_s"], 99)),
        "alerts_max_ms": _ms(max(load["latency_s"], default=None)),
        "service_p50_ms": _ms(percentile(load["service_s"], 50)),
        "service_p99_ms": _ms(percentile(load["service_s"], 99)),
        "achieved_rps": round(load["ok"] / load["span_s"], 1) if load["span_s"] else None,
        "requests": load["requests"],
        "errors": load["errors"],
        "error_kinds": load["error_kinds"],
        "retried_on_closed_connection": load["retried_on_closed_connection"],
        "bad_pages": load["bad_pages"],
        "late_dispatch_ms": load["late_dispatch_ms"],
    }


def cpu_snapshot() -> tuple[dict[int, float], float, float]:
    """CPU seconds of each thread of this process, and the machine's busy and total seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        threads[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:]]
    total = sum(jiffies[:8]) / tick
    idle = (jiffies[3] + jiffies[4]) / tick
    return threads, total - idle, total


def _sample_cpu(
    start_at: float, duration: float
) -> tuple[threading.Thread, list[tuple[dict[int, float], float, float]]]:
    """A started thread taking :func:`cpu_snapshot` at ``start_at`` and ``duration`` later."""
    snapshots: list[tuple[dict[int, float], float, float]] = []

    def sample() -> None:
        for at in (start_at, start_at + duration):
            time.sleep(max(0.0, at - time.time()))
            snapshots.append(cpu_snapshot())

    thread = threading.Thread(target=sample, name="cpu-sampler", daemon=True)
    thread.start()
    return thread, snapshots


def cpu_use(
    before: tuple[dict[int, float], float, float],
    after: tuple[dict[int, float], float, float],
    seconds: float,
    named: dict[str, int | None],
) -> dict[str, float]:
    """Cores used over ``seconds``: by this process, by the ``named`` threads, by the machine."""
    t0, busy0, _ = before
    t1, busy1, _ = after
    used = {tid: t1[tid] - t0.get(tid, 0.0) for tid in t1}
    out = {"process_cores": sum(used.values()) / seconds}
    for name, tid in named.items():
        out[f"{name}_cores"] = used.get(tid, 0.0) / seconds if tid is not None else 0.0
    out["machine_busy_cores"] = (busy1 - busy0) / seconds
    return {k: round(v, 2) for k, v in out.items()}


def _during_batches(
    load: dict[str, Any], busy: list[tuple[float, float]], start_at: float, end_at: float
) -> dict[str, Any]:
    """Latency of the requests in flight while the scorer processed a batch, and of the rest.

    A request overlaps a batch when ``[due, due + latency]`` meets the batch's processing
    (decode to store commit); ``scorer_batch_ms_*`` is that processing time. A request slower
    than the time between batches overlaps one by construction: compare the two only when
    latencies are well under it.
    """
    import bisect

    spans = sorted(b for b in busy if b[1] >= start_at and b[0] <= end_at + 5)
    starts = [b[0] for b in spans]
    during, outside = [], []
    for due, latency in zip(load["due_wall"], load["latency_s"], strict=True):
        i = bisect.bisect_right(starts, due + latency) - 1  # last batch started before the end
        hit = i >= 0 and spans[i][1] >= due
        (during if hit else outside).append(latency)
    batch_s = [e - b for b, e in spans]
    return {
        "alerts_p99_ms_during_batches": _ms(percentile(during, 99)),
        "alerts_p99_ms_outside_batches": _ms(percentile(outside, 99)),
        "requests_during_batches": len(during),
        "scorer_batch_ms_p50": _ms(percentile(batch_s, 50)),
        "scorer_batch_ms_max": _ms(max(batch_s, default=None)),
        "scorer_busy_share": round(sum(batch_s) / (end_at - start_at), 3) if spans else None,
    }


# -- the server side --------------------------------------------------------------------------


def fill_store(url: str, transactions: int, alerts: int, cards: int, batch: int) -> dict:
    """Write the stored history (not timed as a benchmark figure; the load time is reported)."""
    from _store_data import Shape, batches

    from txfast.store import open_store

    shape = Shape(transactions, 30, cards, 20_000, alert_rate=alerts / transactions)
    t0 = time.perf_counter()
    stored = 0
    with open_store(url) as store:
        for i, b in enumerate(batches(shape, batch)):
            store.write_batch(b)
            stored += b.alerts.num_rows
            if i % 100 == 0 and i:
                log(f"  {(i + 1) * batch:,} transactions, {stored:,} alerts")
    return {"fill_s": round(time.perf_counter() - t0, 1)}


def train(workdir: Path, cards: int, seed: int) -> tuple[Path, Path]:
    """A week of simulated history for ``cards`` cards and an Isolation Forest trained on it."""
    import numpy as np

    from txfast.config import load_settings
    from txfast.history import replay_features
    from txfast.registry import Registry
    from txfast.simulate import simulate, write_table
    from txfast.training.isolation_forest import train_isolation_forest

    history = workdir / "history.parquet"
    write_table(simulate(cards, 7, seed, start="2026-01-25"), history)
    fs = replay_features(load_settings(env={}), history)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(fs.X), size=min(len(fs.X), 200_000), replace=False)
    trained = train_isolation_forest(
        fs.X[rows], fs.feature_names, fs.feature_version, n_estimators=100, seed=seed
    )
    registry = workdir / "registry"
    trained.register(Registry(registry), promote=True)
    return history, registry


def bench_backend(
    name: str, url: str, args: argparse.Namespace, history: Path, registry: Path
) -> dict[str, Any]:
    """Fill the store, then measure each ``--nodelay`` variant (a fresh scorer each time)."""
    from txfast.store import open_store

    log(f"{name}: storing {args.alerts:,} alerts among {args.transactions:,} transactions")
    figures: dict[str, Any] = fill_store(
        url, args.transactions, args.alerts, args.cards_stored, args.batch
    )
    if name == "postgresql":
        import psycopg

        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        figures["vacuum_s"] = round(time.perf_counter() - t0, 1)
    with open_store(url) as store:
        figures["stored_alerts"] = store.count("alerts")
        figures["stored_transactions"] = store.count("transactions")
        _, token = store.create_api_key("bench", "viewer")
    log(f"{name}: {figures['stored_alerts']:,} alerts stored in {figures['fill_s']} s")
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.nodelay]
    for i, nodelay in enumerate(variants):
        # Each run scores days of its own (a replay would take the stores' slow path).
        measured = measure(name, url, args, history, registry, token, nodelay, day=i)
        if i == 0:
            figures.update(measured)
        else:
            figures["with_tcp_nodelay"] = measured
    return figures


def measure(
    name: str,
    url: str,
    args: argparse.Namespace,
    history: Path,
    registry: Path,
    token: str,
    nodelay: bool,
    day: int,
) -> dict[str, Any]:
    """The API under load beside a live scorer (see the module docstring)."""
    from datetime import date, timedelta

    from txfast.api import ApiServer, create_app, yield_cpu_to_api
    from txfast.config import load_settings
    from txfast.pipeline import Pipeline
    from txfast.sources import FileSource, SimulatedSource

    figures: dict[str, Any] = {}
    settings = load_settings(
        env={},
        overrides={
            "store": url,
            "registry": str(registry),
            "pipeline": {"batch_size": args.batch},
        },
    )
    # Enough events for warm-up, load and the feed's tail, at the offered rate.
    needed = args.rate * (args.warmup + args.duration + 15)
    live_days = max(1, math.ceil(needed / (args.cards * 2.8)))
    start = date.fromisoformat(LIVE_START) + timedelta(days=day * live_days)
    source = SimulatedSource(
        cards=args.cards,
        days=live_days,
        seed=args.seed,
        rate=args.rate,
        batch_size=args.batch,
        start=start.isoformat(),
        linger_ms=settings.pipeline.linger_ms,  # as `txfast run --rate` batches a paced source
    )
    source.table()  # simulated before the clock starts, as `txfast run` does
    pipeline = Pipeline.from_settings(settings)
    warmed = pipeline.warm(FileSource(history, batch_size=args.batch))
    log(f"{name}: feature state warmed with {warmed:,} events; {source.table().num_rows:,} live")

    stop = threading.Event()
    marks: list[tuple[float, int, int]] = []  # (wall time, scored, alerts) after each batch
    failure: list[BaseException] = []

    busy: list[tuple[float, float]] = []  # (start, end) wall times of each batch's processing

    def batches():
        for b in source:  # the source sleeps until the batch is due
            s = pipeline.summary
            started = time.time()
            marks.append((started, s.scored, s.alerts))
            if stop.is_set():
                return
            yield b
            busy.append((started, time.time()))

    scorer_tid: list[int] = []

    def score() -> None:
        scorer_tid.append(threading.get_native_id())
        yield_cpu_to_api(settings.pipeline.api_nice)  # as `txfast run --api` does
        try:
            pipeline.run(batches(), source=source.name)
        except BaseException as e:  # reported after the run
            failure.append(e)

    metrics = getattr(pipeline, "metrics", None)  # the scorer's Prometheus registry, if any
    gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
    gc_started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[:] = [time.time()]
        elif gc_started:
            gc_pauses.append((gc_started[0], time.time() - gc_started[0], info["generation"]))

    app = create_app(  # as `txfast run --api` does
        settings,
        store=pipeline.store,
        runtime_stats=pipeline.summary.as_dict,
        scorer_metrics=None if metrics is None else metrics.registry,
    )
    pipeline.on_stored.append(app.state["ctx"].alerts_stored)
    server = ApiServer(app, "127.0.0.1", 0).start()
    gc.collect()  # as `txfast run` does: start-up objects out of the collector's scans
    gc.freeze()
    if nodelay:
        # Kept from before ApiServer bound its socket with IPPROTO_TCP (asyncio then set no
        # TCP_NODELAY on the accepted connections, and a response written in two sends waited
        # for the client's delayed ACK): redundant now, the same code measured again.
        server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    figures["tcp_nodelay_workaround"] = nodelay
    tag = " (TCP_NODELAY set)" if nodelay else ""
    scorer = threading.Thread(target=score, name="scorer", daemon=True)
    try:
        if args.baseline > 0:
            # The same load on the same server with the scorer idle: what the scorer adds.
            start_at = time.time() + 3.0
            sampler, snapshots = _sample_cpu(start_at, args.baseline)
            proc, pipe = _run_in_process(
                load_client, server.url, token, args.qps, args.baseline, start_at, args.workers
            )
            alone = pipe.recv()
            proc.join(10)
            sampler.join(10)
            figures.update({f"idle_{k}": v for k, v in _load_figures(alone).items()})
            if len(snapshots) == 2:
                figures["idle_cpu"] = cpu_use(*snapshots, args.baseline, {})
            log(
                f"{name}{tag}: scorer idle: GET /alerts p50 {figures['idle_alerts_p50_ms']} ms, "
                f"p99 {figures['idle_alerts_p99_ms']} ms"
            )
        load_before = os.getloadavg()[0]
        figures["gc_tracked_objects"] = len(gc.get_objects())
        gc.callbacks.append(on_gc)
        scorer.start()
        start_at = time.time() + args.warmup
        sampler, snapshots = _sample_cpu(start_at, args.duration)
        sse_proc, sse_pipe = _run_in_process(sse_client, server.url, token, start_at, args.duration)
        load_proc, load_pipe = _run_in_process(
            load_client, server.url, token, args.qps, args.duration, start_at, args.workers
        )
        if not sse_pipe.poll(args.warmup + 30) or sse_pipe.recv() != "connected":
            raise RuntimeError("the live-feed client did not connect")
        log(f"{name}: scorer at {args.rate:,} tx/s; load of {args.qps} req/s in {args.warmup} s")
        load = load_pipe.recv()
        sse = sse_pipe.recv()
        load_proc.join(10)
        sse_proc.join(10)
        sampler.join(10)
        load_after = os.getloadavg()[0]
        if len(snapshots) == 2:
            api_loop = server._thread.native_id if server._thread is not None else None
            figures["cpu"] = cpu_use(
                *snapshots,
                args.duration,
                {"scorer": scorer_tid[0] if scorer_tid else None, "api_event_loop": api_loop},
            )
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        stop.set()
        scorer.join(60)
        server.stop()
        pipeline.store.close()
        gc.unfreeze()
    if failure:
        raise RuntimeError(f"the scorer failed: {failure[0]!r}") from failure[0]

    end_at = start_at + args.duration
    window = [m for m in marks if start_at <= m[0] <= end_at]
    if len(window) >= 2:
        span = window[-1][0] - window[0][0]
        scorer_rate = (window[-1][1] - window[0][1]) / span
        alert_rate = (window[-1][2] - window[0][2]) / span
    else:
        scorer_rate = alert_rate = float("nan")
    figures.update(_load_figures(load))
    figures.update(_during_batches(load, busy, start_at, end_at))
    pauses = [p for p in gc_pauses if start_at <= p[0] <= end_at]
    figures["gc"] = {  # the collector stops every thread of the process
        "collections": len(pauses),
        "gen2": sum(1 for p in pauses if p[2] == 2),
        "total_ms": _ms(sum(p[1] for p in pauses)),
        "max_ms": _ms(max((p[1] for p in pauses), default=0.0)),
    }
    figures.update(
        {
            "offered_rps": args.qps,
            "duration_s": args.duration,
            "scorer_tx_per_s": round(scorer_rate, 1),
            "scorer_target_tx_per_s": args.rate,
            "scorer_alerts_per_s": round(alert_rate, 1),
            "scorer_batch": args.batch,
            "sse_p50_ms": _ms(percentile(sse["latency_s"], 50)),
            "sse_p99_ms": _ms(percentile(sse["latency_s"], 99)),
            "sse_max_ms": _ms(max(sse["latency_s"], default=None)),
            "sse_events_measured": len(sse["latency_s"]),
            "sse_error": sse["error"],
            "load_avg_before": round(load_before, 2),
            "load_avg_after": round(load_after, 2),
        }
    )
    log(
        f"{name}{tag}: GET /alerts p50 {figures['alerts_p50_ms']} ms, "
        f"p99 {figures['alerts_p99_ms']} ms at {figures['achieved_rps']} req/s "
        f"({figures['errors']} errors); scorer {figures['scorer_tx_per_s']:,} tx/s; "
        f"feed p99 {figures['sse_p99_ms']} ms"
    )
    return figures


def start_postgres(workdir: Path) -> tuple[str, dict[str, str]]:
    env = {
        **os.environ,
        "TXFAST_PG_DIR": str(workdir / "pg"),
        # As bench_store.py: production-like memory; fsync and synchronous_commit on.
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
    p.add_argument("--quick", action="store_true", help="100,000 alerts, 10 s of load")
    p.add_argument("--alerts", type=int, default=None, help="stored alerts (1,000,000)")
    p.add_argument(
        "--transactions", type=int, default=None, help="stored transactions (4 × alerts)"
    )
    p.add_argument("--cards-stored", type=int, default=500_000, help="cards of the stored data")
    p.add_argument("--qps", type=float, default=200.0, help="offered GET /alerts per second")
    p.add_argument("--duration", type=float, default=None, help="seconds of load (30)")
    p.add_argument("--warmup", type=float, default=5.0, help="scorer seconds before the load")
    p.add_argument(
        "--baseline", type=float, default=None, help="seconds of load with the scorer idle (10)"
    )
    p.add_argument("--workers", type=int, default=16, help="client threads (connections)")
    p.add_argument("--rate", type=int, default=10_000, help="scorer transactions per second")
    p.add_argument("--cards", type=int, default=50_000, help="cards of the live stream")
    p.add_argument("--batch", type=int, default=8192, help="pipeline batch size")
    p.add_argument(
        "--nodelay",
        choices=["off", "on", "both"],
        default="both",
        help="TCP_NODELAY also set on the API's listening socket (ApiServer sets it on each "
        "connection already): off (as shipped), on, or both (default: as shipped, then on, "
        "as `with_tcp_nodelay`: a second run of the same code)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backends", default="duckdb,postgresql")
    p.add_argument("--pg-url", default=None, help="an existing server (a database to fill)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.alerts is None:
        args.alerts = 100_000 if args.quick else 1_000_000
    if args.transactions is None:
        args.transactions = 4 * args.alerts
    if args.duration is None:
        args.duration = 10.0 if args.quick else 30.0
    if args.baseline is None:
        args.baseline = 5.0 if args.quick else 10.0

    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="txfast-bench-api-", dir="/tmp"))
    os.chmod(workdir, 0o755)  # as root, the server's user must reach the cluster directory
    try:
        t0 = time.perf_counter()
        # In another process: the server process imports what `txfast run` does, not
        # scikit-learn (whose objects would lengthen every full garbage collection).
        proc, pipe = _run_in_process(train, workdir, args.cards, args.seed)
        history, registry = pipe.recv()
        proc.join(30)
        log(f"model trained on a week of {args.cards:,} cards in {time.perf_counter() - t0:.0f} s")
        for name in args.backends.split(","):
            if name == "duckdb":
                url = f"duckdb:{workdir / 'bench.duckdb'}"
                results[name] = bench_backend(name, url, args, history, registry)
            elif name == "postgresql":
                env = None
                url = args.pg_url
                if url is None:
                    url, env = start_postgres(workdir)
                try:
                    results[name] = bench_backend(name, url, args, history, registry)
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
    sse = [r["sse_p99_ms"] for r in results.values() if r.get("sse_p99_ms") is not None]
    results["sse_p99_ms"] = max(sse) if sse else None
    results["setup"] = {
        "alerts": args.alerts,
        "transactions": args.transactions,
        "qps": args.qps,
        "duration_s": args.duration,
        "rate": args.rate,
        "batch": args.batch,
        "live_cards": args.cards,
        "nodelay": args.nodelay,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for name in ("duckdb", "postgresql"):
            if name in results:
                r = results[name]
                print(
                    f"{name}: GET /alerts p99 {r['alerts_p99_ms']} ms at {r['achieved_rps']} "
                    f"req/s, scorer {r['scorer_tx_per_s']} tx/s, feed p99 {r['sse_p99_ms']} ms"
                )


if __name__ == "__main__":
    main()
