"""Kafka benchmark against the repository's local broker (scripts/kafka.sh).

    python bench/bench_kafka.py --json

- ``drain_tx_per_s``: preload ``--events`` (2,000,000) transactions into a 6-partition
  topic, then one txfast process scores them all (alerts to Kafka and DuckDB, exactly once).
- ``bare_consume_tx_per_s``: a bare confluent-kafka consumer loop reading the same topic in
  the same run (the physical limit here); ``drain_vs_bare`` is their ratio.
- ``latency``: for offered loads of 1,000, 10,000 and 50,000 tx/s for ``--seconds`` (60)
  each: p50/p95/p99/max from the transaction's Kafka timestamp to the moment a
  ``read_committed`` consumer receives its alert (only alerts are published, so the samples
  are the alerted transactions).
- ``bare_relay_latency``: the same measurement, at ``--relay-rates`` (10,000 tx/s), of a bare
  exactly-once relay (:class:`BareRelay`: consume, then one Kafka transaction per micro-batch
  with the consumed offsets, nothing else): the floor that Kafka transactions on this
  machine put under txfast's latency, as ``bare_consume_tx_per_s`` is for the drain.

``TXFAST_KAFKA_BOOTSTRAP`` points it at an existing broker instead of starting one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WARMUP_S = 2.0
"""Seconds of load before the latency samples count: a consumer's first fetches and a
producer's first transaction (coordinator lookups, partitions added) are once per process."""


def log(msg: str) -> None:
    print(f"[bench_kafka] {msg}", file=sys.stderr, flush=True)


def broker() -> tuple[str, bool]:
    if os.environ.get("TXFAST_KAFKA_BOOTSTRAP"):
        return os.environ["TXFAST_KAFKA_BOOTSTRAP"], False
    env = {**os.environ, "TXFAST_KAFKA_DIR": tempfile.mkdtemp(prefix="txfast-bench-kafka-")}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/kafka.sh"), "start"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    os.environ["TXFAST_KAFKA_DIR"] = env["TXFAST_KAFKA_DIR"]
    return out.stdout.strip().splitlines()[-1], True


def stop_broker() -> None:
    subprocess.run(["bash", str(ROOT / "scripts/kafka.sh"), "stop"], check=False)


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": bootstrap})
    fs = client.create_topics(
        [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]
    )
    for f in fs.values():
        f.result(30)


def payloads(events: int, seed: int) -> list[tuple[bytes, bytes]]:
    from txfast.simulate import iter_json_batches, simulate

    cards = max(1000, events // 90)
    table = simulate(cards, 30, seed, start="2026-01-01").slice(0, events)
    ids = table["card_id"].to_pylist()
    out = []
    k = 0
    for batch in iter_json_batches(table, 8192):
        for p in batch:
            out.append((p, ids[k].encode()))
            k += 1
    return out


def producer(bootstrap: str, linger_ms: int = 5):
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "socket.nagle.disable": True,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def send(p, topic: str, value: bytes, key: bytes) -> None:  # noqa: ANN001 - a Producer
    """Produce one message, letting deliveries drain while the local queue is full."""
    while True:
        try:
            p.produce(topic, value=value, key=key)
            return
        except BufferError:
            p.poll(0.01)


def preload(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    p = producer(bootstrap)
    t0 = time.perf_counter()
    for value, key in events:
        send(p, topic, value, key)
    assert p.flush(120) == 0
    return len(events) / (time.perf_counter() - t0)


def bare_consume(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got = 0
    t0 = None
    while got < n:
        msgs = c.consume(8192, 1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        got += sum(1 for m in msgs if m.error() is None)
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    c.close()
    return n / seconds


def settings_for(tmp: Path, registry: Path, bootstrap: str, topic: str, linger_ms: int):
    from txfast.config import load_settings

    return load_settings(
        env={},
        overrides={
            "store": f"duckdb:{tmp / (topic + '.duckdb')}",
            "registry": str(registry),
            "pipeline": {"batch_size": 8192, "linger_ms": linger_ms},
            "kafka": {
                "bootstrap": bootstrap,
                "group": f"g-{topic}",
                "topics": [topic],
                "alerts_topic": f"{topic}-alerts",
                "dlq_topic": f"{topic}-dlq",
                "checkpoint_dir": str(tmp / "checkpoints"),
                "checkpoint_interval_s": 30.0,
                "consumer": {"fetch.wait.max.ms": "5"},
            },
        },
    )


def train(tmp: Path, events: list[tuple[bytes, bytes]]) -> Path:
    from txfast.config import load_settings
    from txfast.pipeline import build_decoder, build_engine
    from txfast.registry import Registry
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
    root = tmp / "registry"
    Registry(root).register("default", trained.onnx_bytes, trained.metadata, promote=True)
    return root


def drain(bootstrap: str, tmp: Path, registry: Path, topic: str, n: int) -> dict:
    from txfast.streaming import KafkaScorer

    create_topics(bootstrap, {f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    scorer = KafkaScorer(settings_for(tmp, registry, bootstrap, topic, linger_ms=100))
    freeze_startup()
    stats = scorer.run(max_messages=n, idle_timeout_s=30)
    d = stats.as_dict()
    log(f"drain stats: {d}")
    # Like the bare consumer's rate: from the first message to the last batch committed (the
    # group join before it is left out; the final checkpoint and close are counted).
    return d


def freeze_startup() -> None:
    """What ``txfast run`` does once started: start-up objects out of the collector's scans.

    Here they include the benchmark's own millions of payloads, which every full collection
    would otherwise rescan (pauses of hundreds of ms that a deployed scorer does not have).
    """
    gc.collect()
    gc.freeze()


def _generate(bootstrap: str, topic: str, rate: int, seconds: float, events_path: str) -> None:
    """Child process: send ``rate`` transactions per second for ``seconds``.

    Every millisecond it produces the transactions that are due by then (a message's Kafka
    timestamp is set when it is produced, so this lateness is not counted as txfast's; a
    sleep per message cost a quarter of a core at 10,000 tx/s, taken from the scorer and
    the broker on this machine). A process of its own: a Python loop per event in the
    scorer's process would compete for its GIL.
    """
    import pickle

    with open(events_path, "rb") as f:
        events = pickle.load(f)
    p = producer(bootstrap, linger_ms=1)
    # The topic's metadata first: a cold producer holds its first messages while it looks
    # the partitions up, which would count as txfast's latency.
    p.list_topics(topic, timeout=30)
    n = int(rate * seconds)
    sent = 0
    t0 = time.perf_counter()
    while sent < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        for i in range(sent, due):
            value, key = events[i % len(events)]
            send(p, topic, value, key)
        sent = due
        p.poll(0)
        # Sleep until the next message is due, and at least a millisecond.
        wake = max(t0 + sent / rate, time.perf_counter() + 0.001)
        delay = wake - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    p.flush(60)


def _read(bootstrap: str, topic: str, ready, done, out) -> None:  # noqa: ANN001 - mp objects
    """Child process: ``(source_timestamp, now - source_timestamp)`` of every alert received."""
    from confluent_kafka import Consumer

    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # The broker answers a waiting read_committed fetch as soon as a commit makes
            # data visible (see transaction_floor), so a long wait adds no latency; 1 ms
            # made the broker serve a thousand empty fetches a second, taken from the
            # scorer's CPU on this machine.
            "fetch.wait.max.ms": 100,
            "socket.nagle.disable": True,
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    samples: list[tuple[int, float]] = []  # (source timestamp, latency), ms
    ready.set()
    # poll, not consume(n, timeout): consume waits for n messages or the whole timeout, which
    # would add up to the timeout to every sample.
    while not done.is_set():
        m = reader.poll(0.05)
        if m is not None and m.error() is None:
            now = time.time() * 1000
            stamp = dict(m.headers() or [])["source_timestamp"]
            samples.append((int(stamp), now - int(stamp)))
    reader.close()
    out.send(samples)


class BareRelay:
    """The floor of exactly-once latency: consume, then one Kafka transaction, nothing else.

    A confluent-kafka loop with the scorer's client settings and micro-batching (2 ms linger)
    and no decoding, features, scoring or store: each batch's every 40th message (about
    txfast's alert rate) goes to the output topic with its ``source_timestamp`` header, in a
    transaction with the consumed offsets. Measured like the scorer, under the same load.
    """

    def __init__(self, bootstrap: str, topic: str, linger_ms: int = 2) -> None:
        from confluent_kafka import Consumer, Producer

        self.topic, self.out, self.linger = topic, f"{topic}-alerts", linger_ms / 1000
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"relay-{topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "socket.nagle.disable": True,
                "fetch.wait.max.ms": 5,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"relay-{topic}",
                "linger.ms": 1,
                "retry.backoff.ms": 2,
                "retry.backoff.max.ms": 20,
                "socket.nagle.disable": True,
                "compression.type": "lz4",
            }
        )
        self.producer.init_transactions(60)
        self._stop = threading.Event()
        self.stats = types.SimpleNamespace(batches=0, stage_s={"consume": 0.0, "kafka": 0.0})

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_timeout_s: float = 10) -> None:
        from confluent_kafka import TopicPartition

        self.consumer.subscribe([self.topic])
        p, stage = self.producer, self.stats.stage_s
        while not self._stop.is_set():
            t0 = time.perf_counter()
            msgs = [m for m in self.consumer.consume(8192, self.linger) if m.error() is None]
            t1 = time.perf_counter()
            stage["consume"] += t1 - t0
            if not msgs:
                continue
            p.begin_transaction()
            ends: dict[tuple[str, int], int] = {}
            for m in msgs:
                ends[(m.topic(), m.partition())] = m.offset() + 1
                if m.offset() % 40 == 0:
                    stamp = str(m.timestamp()[1]).encode()
                    p.produce(self.out, m.value(), m.key(), headers=[("source_timestamp", stamp)])
            offsets = [TopicPartition(t, part, off) for (t, part), off in ends.items()]
            p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            p.commit_transaction(60)
            stage["kafka"] += time.perf_counter() - t1
            self.stats.batches += 1
        self.consumer.close()


def latency(
    bootstrap: str, tmp: Path, registry: Path, rate: int, seconds: float, events, *, bare=False
) -> dict[str, float]:
    """The scorer (or the bare relay) in this process; the load and the reader in others."""
    import multiprocessing
    import pickle

    from txfast.streaming import KafkaScorer

    mp = multiprocessing.get_context("spawn")
    topic = f"lat-{rate}-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 6, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    events_path = tmp / "latency-events.pkl"
    if not events_path.exists():
        with open(events_path, "wb") as f:
            pickle.dump(events[:1_000_000], f, protocol=pickle.HIGHEST_PROTOCOL)
    scorer: Any
    if bare:
        scorer = BareRelay(bootstrap, topic, linger_ms=2)
    else:
        scorer = KafkaScorer(settings_for(tmp, registry, bootstrap, topic, linger_ms=2))
    freeze_startup()
    runner = threading.Thread(target=scorer.run, kwargs={"idle_timeout_s": 10}, daemon=True)
    runner.start()
    ready, done = mp.Event(), mp.Event()
    receive, send = mp.Pipe(duplex=False)
    reader = mp.Process(target=_read, args=(bootstrap, f"{topic}-alerts", ready, done, send))
    reader.start()
    ready.wait(60)
    time.sleep(3)  # group joins before the load starts
    load_start_ms = time.time() * 1000
    gen = mp.Process(
        target=_generate,
        args=(bootstrap, topic, rate, seconds + WARMUP_S, str(events_path)),
    )
    gen.start()
    gen.join()
    time.sleep(3)
    scorer.stop()
    runner.join(60)
    done.set()
    pairs = receive.recv() if receive.poll(30) else []
    reader.join(10)
    batches = max(1, scorer.stats.batches)
    breakdown = {k: round(v * 1000 / batches, 3) for k, v in scorer.stats.stage_s.items()}
    stamps = np.asarray([p[0] for p in pairs], dtype=np.float64)
    lat = np.asarray([p[1] for p in pairs], dtype=np.float64)
    measured = stamps >= load_start_ms + WARMUP_S * 1000
    a = lat[measured]
    out: dict[str, Any] = {
        "p50_ms": float("nan"),
        "p95_ms": float("nan"),
        "p99_ms": float("nan"),
        "max_ms": float("nan"),
        "samples": int(len(a)),
        "offered_tx_per_s": rate,
        "batches": scorer.stats.batches,
        "stage_ms_per_batch": breakdown,
        "warmup_s": WARMUP_S,
        "warmup_max_ms": float(lat[~measured].max()) if (~measured).any() else float("nan"),
    }
    if len(a):
        out.update(
            p50_ms=float(np.percentile(a, 50)),
            p95_ms=float(np.percentile(a, 95)),
            p99_ms=float(np.percentile(a, 99)),
            max_ms=float(a.max()),
            # Where the slowest samples were: seconds into the measured period.
            slowest_at_s=sorted(
                round(float(t - load_start_ms) / 1000 - WARMUP_S, 2)
                for t in stamps[measured][np.argsort(a)[-5:]]
            ),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rates", default="1000,10000,50000")
    ap.add_argument(
        "--relay-rates",
        default="10000",
        help="offered loads for the bare exactly-once relay ('' for none)",
    )
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    bootstrap, started = broker()
    log(f"broker at {bootstrap}")
    result: dict = {"events": args.events}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            log(f"simulating {args.events:,} events")
            events = payloads(args.events, args.seed)
            registry = train(tmp, events)
            topic = f"drain-{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, {topic: 6})
            log("preloading the topic")
            result["preload_tx_per_s"] = preload(bootstrap, topic, events)
            log("bare consumer")
            result["bare_consume_tx_per_s"] = bare_consume(bootstrap, topic, len(events))
            log("txfast drain")
            stats = drain(bootstrap, tmp, registry, topic, len(events))
            result["drain_tx_per_s"] = stats["active_tx_per_s"]
            result["drain_stats"] = stats
            result["drain_vs_bare"] = result["drain_tx_per_s"] / result["bare_consume_tx_per_s"]
            result["latency"] = {}
            for rate in (int(r) for r in args.rates.split(",") if r):
                log(f"latency at {rate:,} tx/s for {args.seconds:.0f} s")
                result["latency"][str(rate)] = latency(
                    bootstrap, tmp, registry, rate, args.seconds, events
                )
            result["bare_relay_latency"] = {}
            for rate in (int(r) for r in args.relay_rates.split(",") if r):
                log(f"bare exactly-once relay at {rate:,} tx/s for {args.seconds:.0f} s")
                result["bare_relay_latency"][str(rate)] = latency(
                    bootstrap, tmp, registry, rate, args.seconds, events, bare=True
                )
    finally:
        if started:
            stop_broker()
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
