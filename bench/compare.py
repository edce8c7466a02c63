"""txfast side by side with the usual alternatives, on the same Kafka topic, in one command.

    python bench/compare.py --json                # txfast, python, spark, quix (~15 min)
    python bench/compare.py --quick --json        # txfast and the python peer (CI, ~2 min)

Every system runs as its own process against the same local broker (``scripts/kafka.sh``,
or ``TXFAST_KAFKA_BOOTSTRAP``), on the same simulated transactions (``txfast.simulate``,
JSON, key = ``card_id``, 6 partitions), with the same 37 features (``docs/features.md``;
the peers' Python implementation, ``bench/peers/common.py``, is checked against txfast's
engine first: ``feature_parity``), the same Isolation Forest (txfast trains it and exports
it to ONNX; the peers score the fitted scikit-learn forest with ``score_samples`` per
micro-batch), the same calibration, bands and default rules, and the same alert document
on an output topic with the source message's Kafka timestamp in a header.

- ``txfast``: ``txfast run --source kafka`` (``KafkaScorer``, via ``peers/txfast_runner.py``):
  DuckDB store of every transaction and exactly-once alerts (Kafka transactions).
- ``python``: a confluent-kafka consumer, per-event features in dicts and deques,
  scikit-learn per micro-batch, at-least-once alerts (``peers/python_peer.py``).
- ``spark``: pyspark Structured Streaming with the spark-sql-kafka connector from Maven
  Central, per-card, per-merchant and per-user state in three chained
  ``transformWithStateInPandas`` operators (Spark refuses a second
  ``applyInPandasWithState``), scikit-learn in ``mapInPandas`` (``peers/spark_peer.py``).
- ``quix``: Quix Streams, per-card (then per-merchant, per-user, through ``group_by``)
  RocksDB state, scikit-learn in a batching sink (``peers/quix_peer.py``).

Figures per system:

- ``drain_tx_per_s``: a preloaded topic drained from the beginning: events / (time from the
  first message seen to the last output flushed). txfast drains ``--events``; the peers
  drain the first ``--peer-events`` of the same transactions (rates are per second; txfast
  is also timed on the peers' topic, ``drain_same_events``).
- ``latency``: for each offered load in ``--rates`` (tx/s, paced for ``--seconds`` after a
  warm-up of ``--warmup`` events): p50/p95/p99/max from the input message's Kafka timestamp
  to the arrival of its alert at a consumer of the output topic (only alerts are
  published, about 1 % of events, so the samples are the alerted transactions).
  ``kept_up`` is false when the system was more than one second of input behind as the
  load ended or did not finish the backlog within ``2 * --seconds`` (20-120 s) after it;
  its percentiles are reported anyway: over the alerts that arrived, raised to a lower
  bound when enough events were still unprocessed at the stop (an unprocessed event's
  latency is at least stop time - send time; ``p99_ms_is_lower_bound``).
- ``processed`` (every run) is checked against the number of input events, and the output
  topic's record count against the alerts the system reports.

Peers that cannot run carry ``drain_tx_per_s: null`` and the reason in ``error``. Spark and
Quix need packages that are not txfast dependencies (and Quix pins an older
confluent-kafka), so they run under ``--peers-python`` (default ``$TXFAST_PEERS_PYTHON``, else
``.venv-peers/bin/python`` when it exists):

    python -m venv .venv-peers
    .venv-peers/bin/pip install scikit-learn==X.Y.Z numpy "pandas<3" pyarrow protobuf \\
        pyspark==4.2.0 quixstreams

with X.Y.Z the scikit-learn of txfast's environment (the peers unpickle its forest). pyspark
must match a spark-sql-kafka connector that Maven Central serves (4.3.0 had none when this
was written); pandas < 3 is what pyspark supports, protobuf what
``transformWithStateInPandas`` needs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
sys.path.insert(0, str(HERE))

from bench_kafka import broker, create_topics, payloads, preload, producer, stop_broker  # noqa: E402

PEER_NAMES = ("python", "spark", "quix")
PEER_MODULES = {
    "python": ("confluent_kafka", "sklearn"),
    "spark": ("pyspark", "pandas", "sklearn"),
    "quix": ("quixstreams", "sklearn"),
}
STARTUP_S = {"txfast": 60.0, "python": 60.0, "spark": 600.0, "quix": 120.0}


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# -- model -------------------------------------------------------------------------------------


def train(tmp: Path, events: list[tuple[bytes, bytes]]) -> tuple[Path, Path, dict]:
    """Train txfast's Isolation Forest on the first events, register it, export it for peers.

    Returns:
        The registry, the peers' model directory (``model.pkl`` + ``model.json``) and
        details for the report.
    """
    from txfast.config import DEFAULT_BANDS, load_settings
    from txfast.pipeline import build_decoder, build_engine
    from txfast.registry import Registry
    from txfast.scoring import Calibrator
    from txfast.training.isolation_forest import train_isolation_forest

    settings = load_settings(env={})
    decoder, engine = build_decoder(settings), build_engine(settings)
    sample = [p for p, _ in events[:300_000]]
    X = np.concatenate(
        [
            engine.process(**decoder.decode(sample[a : a + 8192]).feature_inputs())
            for a in range(0, len(sample), 8192)
        ]
    )
    trained = train_isolation_forest(X, list(engine.feature_names), engine.feature_version)
    registry = tmp / "registry"
    mv = trained.register(Registry(registry), promote=True)
    meta = mv.metadata
    bands = meta.risk_bands
    cal = Calibrator(meta.calibration.quantiles)
    model_dir = tmp / "peer-model"
    model_dir.mkdir()
    with open(model_dir / "model.pkl", "wb") as f:
        pickle.dump(trained.model, f, protocol=5)
    (model_dir / "model.json").write_text(
        json.dumps(
            {
                "feature_names": list(meta.feature_names),
                "calibration_xp": cal._xp.tolist(),
                "calibration_fp": cal._fp.tolist(),
                "threshold": meta.threshold,
                "bands": list(DEFAULT_BANDS)
                if bands is None
                else [bands.medium, bands.high, bands.critical],
                "model_version": mv.version,
                "rates": dict(settings.decoder.rates),
            }
        )
    )
    return (
        registry,
        model_dir,
        {
            "training_rows": int(X.shape[0]),
            "n_estimators": len(trained.model.estimators_),
            "threshold": meta.threshold,
            "version": mv.version,
            "onnx": trained.onnx_bytes,
        },
    )


def feature_parity(events: list[tuple[bytes, bytes]], model_dir: Path, onnx: bytes) -> dict:
    """The peers' features and scores against txfast's engine and ONNX model on a prefix."""
    import onnxruntime as ort

    sys.path.insert(0, str(PEERS))
    from common import FeatureState, Model, parse

    from txfast.config import load_settings
    from txfast.pipeline import build_decoder, build_engine

    settings = load_settings(env={})
    decoder, engine = build_decoder(settings), build_engine(settings)
    sample = [p for p, _ in events[:50_000]]
    X = np.concatenate(
        [
            engine.process(**decoder.decode(sample[a : a + 8192]).feature_inputs())
            for a in range(0, len(sample), 8192)
        ]
    )
    model = Model(model_dir)
    state = FeatureState()
    Y = np.asarray([state.row(parse(p, model.rates)) for p in sample], dtype=np.float32)
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: X})[0].reshape(-1)
    txfast_score = np.interp(raw, model.xp, model.fp, left=0.0, right=1.0)
    peer_score = model.score(Y)
    rel = np.abs(X.astype(np.float64) - Y) / np.maximum(1.0, np.abs(X))
    return {
        "events": len(sample),
        "max_rel_feature_diff": float(rel.max()),
        "max_abs_score_diff": float(np.abs(txfast_score - peer_score).max()),
        "note": "one engine over all partitions (the peers keep merchant and user windows "
        "across partitions; txfast keeps them per partition)",
    }


# -- one system as a subprocess -------------------------------------------------------------


class Proc:
    """A system under test: a subprocess printing progress JSON lines (``peers/common.py``)."""

    def __init__(self, name: str, argv: list[str], logfile: Path, env: dict | None = None):
        self.name = name
        self.logfile = logfile
        self.processed = 0
        self.progress_wall = 0.0
        self.final: dict | None = None
        self.started_wall = time.time()
        self._err = open(logfile, "w")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(
            argv,
            cwd=PEERS,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "final" in msg:
                self.final = msg["final"]
                self.processed = self.final["processed"]
            elif "processed" in msg:
                self.processed = msg["processed"]
                self.progress_wall = msg["wall"]

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait_processed(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processed >= n:
                return True
            if not self.alive():
                return self.processed >= n
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 60.0) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        self.wait(timeout)

    def wait(self, timeout: float) -> int | None:
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(30)
        self._reader.join(10)
        self._err.close()
        return self.p.returncode

    def error_tail(self, lines: int = 15) -> str:
        text = self.logfile.read_text(errors="replace").strip().splitlines()
        keep = [t for t in text if t.strip()][-lines:]
        return "\n".join(keep)


class Harness:
    def __init__(
        self,
        args: argparse.Namespace,
        bootstrap: str,
        tmp: Path,
        registry: Path,
        model_dir: Path,
        events: list[tuple[bytes, bytes]],
    ):
        self.args = args
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.registry = registry
        self.model_dir = model_dir
        self.events = events

    # the command of each system
    def start(self, name: str, topic: str, out_topic: str, *, expect: int, latency: bool) -> Proc:
        tag = f"{name}-{uuid.uuid4().hex[:6]}"
        work = self.tmp / tag
        work.mkdir()
        linger = 2 if latency else 100
        if name == "txfast":
            settings = {
                "store": f"duckdb:{work / 'txfast.duckdb'}",
                "registry": str(self.registry),
                "pipeline": {"batch_size": 8192, "linger_ms": linger},
                "kafka": {
                    "bootstrap": self.bootstrap,
                    "group": f"g-{tag}",
                    "topics": [topic],
                    "alerts_topic": out_topic,
                    "dlq_topic": f"{out_topic}-dlq",
                    "checkpoint_dir": str(work / "checkpoints"),
                    "checkpoint_interval_s": 30.0,
                    "consumer": {"fetch.wait.max.ms": "5"},
                },
            }
            (work / "settings.json").write_text(json.dumps(settings))
            argv = [
                sys.executable,
                "txfast_runner.py",
                "--settings",
                str(work / "settings.json"),
                "--expect",
                str(expect),
            ]
            create_topics(self.bootstrap, {f"{out_topic}-dlq": 1})
        else:
            python = sys.executable if name == "python" else self.args.peers_python
            argv = [
                python,
                f"{name}_peer.py",
                "--bootstrap",
                self.bootstrap,
                "--topic",
                topic,
                "--out-topic",
                out_topic,
                "--group",
                f"g-{tag}",
                "--model-dir",
                str(self.model_dir),
                "--workdir",
                str(work),
                "--expect",
                str(expect),
                "--batch",
                "8192",
                "--linger-ms",
                str(linger),
            ]
            if latency:
                argv.append("--latency")
        env = {"PYTHONPATH": str(PEERS)}
        return Proc(name, argv, work / "stderr.log", env)

    def drain(self, name: str, topic: str, n: int) -> dict:
        out_topic = f"{topic}-{name}-out-{uuid.uuid4().hex[:4]}"
        create_topics(self.bootstrap, {out_topic: 1})
        proc = self.start(name, topic, out_topic, expect=n, latency=False)
        timeout = STARTUP_S[name] + max(120.0, n / 1000)
        code = proc.wait(timeout)
        f = proc.final
        if f is None or code != 0:
            raise RuntimeError(
                f"{name} exited {code} without finishing the drain "
                f"({proc.processed:,} of {n:,} processed):\n{proc.error_tail()}"
            )
        if f["processed"] != n:
            raise RuntimeError(f"{name} processed {f['processed']:,} of {n:,} events")
        seconds = f["done_wall"] - f["first_input_wall"]
        records = count_records(self.bootstrap, out_topic)
        out = {
            "drain_tx_per_s": round(n / seconds, 1),
            "events": n,
            "processed": f["processed"],
            "alerts": f["alerts"],
            "output_records": records,
            "seconds": round(seconds, 3),
            "startup_s": round(f["first_input_wall"] - proc.started_wall, 2),
        }
        if records != f["alerts"]:
            out["warning"] = f"{records} output records for {f['alerts']} alerts"
        if "stats" in f:
            out["stats"] = {
                k: f["stats"][k]
                for k in ("consumed", "scored", "alerts", "active_tx_per_s", "stage_s")
            }
        return out

    def latency(self, name: str, rate: int) -> dict:
        a = self.args
        topic = f"lat-{name}-{rate}-{uuid.uuid4().hex[:6]}"
        out_topic = f"{topic}-out"
        create_topics(self.bootstrap, {topic: 6, out_topic: 1})
        n = int(rate * a.seconds)
        warm = a.warmup
        total = warm + n
        proc = self.start(name, topic, out_topic, expect=0, latency=True)
        reader = OutputReader(self.bootstrap, out_topic)
        try:
            p = producer(self.bootstrap, linger_ms=1)
            send(p, topic, self.events, 0, warm, rate=0)
            if not proc.wait_processed(warm, STARTUP_S[name]):
                raise RuntimeError(
                    f"{name} did not process the {warm:,} warm-up events within "
                    f"{STARTUP_S[name]:.0f} s ({proc.processed:,}):\n"
                    f"{proc.error_tail()}"
                )
            time.sleep(1.0)
            reader.since_ms = int(time.time() * 1000)
            t0 = time.perf_counter()
            send(p, topic, self.events, warm, total, rate=rate)
            sent_s = time.perf_counter() - t0
            load_end = time.time()
            at_end = proc.processed
            wait = min(120.0, max(20.0, a.seconds * 2))
            finished = proc.wait_processed(total, wait)
            stopped, done = time.time(), proc.processed
            time.sleep(1.5)  # the last alerts reach the reader
        finally:
            proc.stop()
            reader.close()
        f = proc.final or {}
        behind = max(0, total - at_end)
        samples = np.asarray(reader.samples, dtype=np.float64)
        res: dict[str, Any] = {
            "offered_tx_per_s": rate,
            "achieved_tx_per_s": round(n / sent_s, 1),
            "seconds": a.seconds,
            "events": n,
            "processed": f.get("processed", proc.processed) - warm,
            "alerts_incl_warmup": f.get("alerts"),
            "samples": int(samples.size),
            "behind_at_load_end_s": round(behind / rate, 2),
            "kept_up": bool(finished and behind <= rate),
        }
        if samples.size:
            res.update(
                p50_ms=round(float(np.percentile(samples, 50)), 2),
                p95_ms=round(float(np.percentile(samples, 95)), 2),
                p99_ms=round(float(np.percentile(samples, 99)), 2),
                max_ms=round(float(samples.max()), 2),
            )
        else:
            res.update(p50_ms=None, p95_ms=None, p99_ms=None, max_ms=None)
        unprocessed = max(0, total - done)
        if unprocessed:
            # Events never processed have a latency of at least (stop - sent); with the
            # load sent evenly, the (n * (1 - q))-th largest of those bounds the q-quantile of
            # all events from below once they are that many.
            res["unprocessed_at_stop"] = unprocessed
            for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
                above = n * (1 - q)
                if unprocessed >= above:
                    bound = (stopped - load_end + (unprocessed - above) / rate) * 1000
                    if res[key] is None or res[key] < bound:
                        res[key] = round(bound, 2)
                        res[f"{key}_is_lower_bound"] = True
        if not finished:
            res["note"] = (
                f"{proc.processed - warm:,} of {n:,} processed {wait:.0f} s after the load"
            )
        if proc.p.returncode not in (0, None) or proc.final is None:
            report = "missing" if proc.final is None else "present"
            res["exit"] = f"exit code {proc.p.returncode}, final report {report}"
            log(f"{name} stderr:\n{proc.error_tail()}")
        return res


def send(p: Any, topic: str, events: list, start: int, stop: int, rate: float) -> None:
    """Produce ``events[start:stop]`` (cycling), paced at ``rate`` per second (0: at once)."""
    t0 = time.perf_counter()
    m = len(events)
    i = start
    while i < stop:
        if rate:
            due = start + min(stop - start, int((time.perf_counter() - t0) * rate) + 1)
            if due <= i:
                time.sleep(0.0005)
                continue
        else:
            due = stop
        while i < due:
            value, key = events[i % m]
            try:
                p.produce(topic, value=value, key=key)
            except BufferError:
                p.poll(0.01)
                continue
            i += 1
        p.poll(0)
    p.flush(60)


class OutputReader:
    """Reads an output topic (read_committed) and keeps the latency of every alert."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.since_ms = 1 << 62
        self.samples: list[float] = []
        self.c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # A waiting read_committed fetch is answered when a commit makes data
                # visible (bench_kafka.py's bare relay shows it), so this adds no latency;
                # 1 ms made the broker serve a thousand empty fetches a second.
                "fetch.wait.max.ms": 100,
                "socket.nagle.disable": True,
                "enable.auto.commit": False,
            }
        )
        self.c.subscribe([topic])
        self._done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        # poll, not consume(n, timeout): consume waits for n messages or the whole timeout,
        # which would add up to the timeout to every sample.
        while not self._done.is_set():
            m = self.c.poll(0.05)
            if m is not None and m.error() is None:
                now = time.time() * 1000
                stamp = int(dict(m.headers() or [])["source_timestamp"])
                if stamp >= self.since_ms:
                    self.samples.append(now - stamp)

    def close(self) -> None:
        self._done.set()
        self._t.join(10)
        self.c.close()


def count_records(bootstrap: str, topic: str) -> int:
    """Committed records in a (one-partition) topic, read to its end."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"count-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    n = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = False
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                n += 1
            elif m.error().code() == -191:  # _PARTITION_EOF
                done = True
        if done:
            break
    c.close()
    return n


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def peer_unavailable(name: str, python: str) -> str | None:
    """Why a peer cannot run under ``python`` (a missing interpreter or package), or None."""
    if not Path(python).exists():
        return f"peer interpreter {python} not found (see --peers-python)"
    code = "; ".join(f"import {m}" for m in PEER_MODULES[name])
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"cannot import {', '.join(PEER_MODULES[name])} under {python} ({last}); "
            "install them in a separate venv (see bench/compare.py --help)"
        )
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, txfast and python only")
    ap.add_argument("--events", type=int, default=None, help="txfast drain (default 1,000,000)")
    ap.add_argument("--peer-events", type=int, default=None, help="peers' drain (200,000)")
    ap.add_argument("--rates", default=None, help="offered loads, tx/s (default 2000,10000)")
    ap.add_argument("--seconds", type=float, default=None, help="per load (30; quick 10)")
    ap.add_argument("--warmup", type=int, default=2000, help="events before each load")
    ap.add_argument("--peers", default=None, help="comma-separated subset of python,spark,quix")
    ap.add_argument("--peers-python", default=None, help="interpreter for spark and quix")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    q = args.quick
    args.events = args.events or (50_000 if q else 1_000_000)
    args.peer_events = min(args.peer_events or (50_000 if q else 200_000), args.events)
    args.seconds = args.seconds or (10.0 if q else 30.0)
    rates = [int(r) for r in (args.rates or "2000,10000").split(",")]
    wanted = [p.strip() for p in (args.peers or ",".join(PEER_NAMES)).split(",") if p.strip()]
    for p in wanted:
        if p not in PEER_NAMES:
            ap.error(f"unknown peer {p!r}")
    venv = ROOT / ".venv-peers" / "bin" / "python"
    args.peers_python = (
        args.peers_python
        or os.environ.get("TXFAST_PEERS_PYTHON")
        or (str(venv) if venv.exists() else sys.executable)
    )

    started = time.monotonic()
    result: dict[str, Any] = {
        "txfast": {"drain_tx_per_s": None, "p99_ms_at_10k": None},
        "peers": {},
        "throughput_ratio_vs_best_peer": None,
        "p99_ratio_vs_best_peer": None,
        "quick": q,
        "config": {
            "events_txfast": args.events,
            "events_peers": args.peer_events,
            "rates": rates,
            "seconds_per_rate": args.seconds,
            "warmup_events": args.warmup,
            "partitions": 6,
            "batch_size": 8192,
            "linger_ms": {"drain": 100, "latency": 2},
            "peers_python": args.peers_python,
            "note": "rates are per second; the peers drain fewer events than txfast when "
            "events_peers < events_txfast (txfast is also timed on the peers' topic: "
            "txfast.drain_same_events)",
        },
        "machine": machine(),
    }
    plan: dict[str, str | None] = {}
    for name in PEER_NAMES:
        if name not in wanted:
            plan[name] = "not requested (--peers)"
        elif q and name != "python":
            plan[name] = "skipped in --quick"
        else:
            plan[name] = peer_unavailable(
                name, sys.executable if name == "python" else args.peers_python
            )

    bootstrap, started_broker = broker()
    log(f"broker at {bootstrap}")
    try:
        with tempfile.TemporaryDirectory(prefix="txfast-compare-") as d:
            tmp = Path(d)
            n_events = max(args.events, args.warmup + int(max(rates) * args.seconds))
            log(f"simulating {n_events:,} events")
            events = payloads(n_events, args.seed)
            log("training the Isolation Forest (txfast train) and exporting it for the peers")
            registry, model_dir, info = train(tmp, events)
            onnx = info.pop("onnx")
            result["model"] = info
            log("checking the peers' features and scores against txfast")
            result["feature_parity"] = feature_parity(events, model_dir, onnx)
            log(f"parity: {result['feature_parity']}")
            h = Harness(args, bootstrap, tmp, registry, model_dir, events)

            topic = f"drain-{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, {topic: 6})
            log(f"preloading {args.events:,} events")
            result["config"]["preload_tx_per_s"] = round(
                preload(bootstrap, topic, events[: args.events]), 1
            )
            peer_topic = topic
            if args.peer_events < args.events:
                peer_topic = f"drain-peers-{uuid.uuid4().hex[:6]}"
                create_topics(bootstrap, {peer_topic: 6})
                preload(bootstrap, peer_topic, events[: args.peer_events])

            tx = result["txfast"]
            systems = ["txfast"] + [p for p in PEER_NAMES if plan[p] is None]
            for name in PEER_NAMES:
                result["peers"][name] = {
                    "drain_tx_per_s": None,
                    "p99_ms_at_10k": None,
                    "error": plan[name],
                }
            for name in systems:
                entry = tx if name == "txfast" else result["peers"][name]
                try:
                    if name == "txfast":
                        log(f"txfast drain of {args.events:,} events")
                        entry["drain"] = h.drain("txfast", topic, args.events)
                        entry["drain_tx_per_s"] = entry["drain"]["drain_tx_per_s"]
                        if peer_topic != topic:
                            log(f"txfast drain of the peers' {args.peer_events:,} events")
                            entry["drain_same_events"] = h.drain(
                                "txfast", peer_topic, args.peer_events
                            )
                    else:
                        log(f"{name} drain of {args.peer_events:,} events")
                        entry["drain"] = h.drain(name, peer_topic, args.peer_events)
                        entry["drain_tx_per_s"] = entry["drain"]["drain_tx_per_s"]
                    log(f"{name} drain: {entry['drain_tx_per_s']:,} tx/s")
                    entry["latency"] = {}
                    for rate in rates:
                        log(f"{name} latency at {rate:,} tx/s for {args.seconds:.0f} s")
                        lat = entry["latency"][str(rate)] = h.latency(name, rate)
                        log(
                            f"{name} at {rate:,} tx/s: p50 {lat['p50_ms']} ms, p99 "
                            f"{lat['p99_ms']} ms, kept up {lat['kept_up']}"
                        )
                    at10 = entry["latency"].get("10000")
                    if at10:
                        entry["p50_ms_at_10k"] = at10["p50_ms"]
                        entry["p99_ms_at_10k"] = at10["p99_ms"]
                        entry["kept_up"] = at10["kept_up"]
                except Exception as exc:  # a system that fails is reported, never dropped
                    log(f"{name} failed: {exc}")
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    if name != "txfast" and "drain" not in entry:
                        entry["drain_tx_per_s"] = None
            ratios(result)
    finally:
        if started_broker:
            stop_broker()
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text if args.json else summary(result))


def ratios(result: dict) -> None:
    """txfast over the best peer: throughput (higher is better), p99 at 10k (lower)."""
    tx = result["txfast"]
    peers = result["peers"].values()
    drains = [p["drain_tx_per_s"] for p in peers if p.get("drain_tx_per_s")]
    if tx.get("drain_tx_per_s") and drains:
        result["throughput_ratio_vs_best_peer"] = round(tx["drain_tx_per_s"] / max(drains), 2)
        result["best_peer_drain"] = max(
            (p for p in result["peers"] if result["peers"][p].get("drain_tx_per_s")),
            key=lambda p: result["peers"][p]["drain_tx_per_s"],
        )
    kept = {
        n: p["p99_ms_at_10k"]
        for n, p in result["peers"].items()
        if p.get("p99_ms_at_10k") is not None and p.get("kept_up")
    }
    if tx.get("p99_ms_at_10k") is not None and kept:
        best = min(kept, key=kept.get)
        result["p99_ratio_vs_best_peer"] = round(tx["p99_ms_at_10k"] / kept[best], 3)
        result["best_peer_p99"] = best
    elif tx.get("p99_ms_at_10k") is not None:
        result["p99_note"] = "no peer kept up with 10,000 tx/s"
    anyp = {
        n: p["p99_ms_at_10k"]
        for n, p in result["peers"].items()
        if p.get("p99_ms_at_10k") is not None
    }
    if tx.get("p99_ms_at_10k") is not None and anyp:
        # Peers that fell behind included: their p99 covers only the alerts that arrived.
        result["p99_ratio_vs_best_peer_incl_behind"] = round(
            tx["p99_ms_at_10k"] / min(anyp.values()), 4
        )


def summary(result: dict) -> str:
    lines = [f"{'system':8} {'drain tx/s':>12} {'p50@10k ms':>11} {'p99@10k ms':>11}  note"]
    rows = [("txfast", result["txfast"])] + list(result["peers"].items())
    for name, r in rows:
        lines.append(
            f"{name:8} {r.get('drain_tx_per_s') or '-':>12} {r.get('p50_ms_at_10k') or '-':>11} "
            f"{r.get('p99_ms_at_10k') or '-':>11}  "
            f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}"
        )
    lines.append(f"throughput ratio vs best peer: {result['throughput_ratio_vs_best_peer']}")
    lines.append(f"p99 ratio vs best peer: {result['p99_ratio_vs_best_peer']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
