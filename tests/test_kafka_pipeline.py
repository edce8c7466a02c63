"""The Kafka scorer against a real broker: exactly-once alerts, checkpoints, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from txfast.config import load_settings
from txfast.pipeline import Pipeline
from txfast.sources import SourceBatch

pytestmark = pytest.mark.kafka

PARTITIONS = 3


BAD = [
    b"",
    b"{not json",
    b"\xff\xfe\x00",
    b'{"transaction_id": "w1", "timestamp": "soon", "card_id": "c", "amount": 1, '
    b'"currency": "EUR", "merchant_id": "m"}',
    b'{"transaction_id": "w2", "card_id": "c", "amount": 1}',
    b'{"transaction_id": "w3", "timestamp": 1767225600000, "card_id": "4539148803436467", '
    b'"amount": 1, "currency": "EUR", "merchant_id": "m"}',
    b"[1, 2, 3]",
]


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> list[tuple[bytes, bytes | None, int]]:
    """(payload, key, partition) in produce order: simulated events plus bad ones."""
    from txfast.simulate import iter_json_batches, simulate

    n = int(os.environ.get("TXFAST_KAFKA_TEST_EVENTS", "200000"))
    table = simulate(max(200, n // 60), 30, seed=11, start="2026-01-01").slice(0, n)
    cards = table["card_id"].to_pylist()
    out = []
    k = 0
    rng = random.Random(5)
    for batch in iter_json_batches(table, 8192):
        for payload in batch:
            card = cards[k]
            k += 1
            out.append((payload, card.encode(), zlib.crc32(card.encode())))
            if rng.random() < 0.001:
                bad = BAD[rng.randrange(len(BAD))]
                out.append((bad, None, rng.randrange(1 << 30)))
    return out


def create_topics(bootstrap: str, names: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": bootstrap})  # alive until the futures resolve
    futures = client.create_topics(
        [
            NewTopic(
                t,
                num_partitions=p,
                replication_factor=1,
                config={"max.message.bytes": str(16 << 20)},
            )
            for t, p in names.items()
        ]
    )
    for f in futures.values():
        f.result(30)


def load_topic(bootstrap: str, topic: str, events, partitions: int = PARTITIONS) -> None:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "enable.idempotence": True,  # keeps each partition in produce order
            "message.max.bytes": 16 << 20,
        }
    )
    for payload, key, salt in events:
        part = salt % partitions
        while True:
            try:
                p.produce(topic, value=payload, key=key, partition=part)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def read_all(bootstrap: str, topic: str, timeout: float = 10.0) -> list:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16 << 20,
        }
    )
    c.subscribe([topic])
    out = []
    idle = time.monotonic()
    while time.monotonic() - idle < timeout:
        msgs = c.consume(10000, 0.5)
        good = [m for m in msgs if m.error() is None]
        if good:
            idle = time.monotonic()
            out.extend(good)
    c.close()
    return out


def expected_run(events, registry: Path, tmp_path: Path, partitions: int = PARTITIONS):
    """The in-memory run: one engine per partition, partitions in produce order."""
    settings = load_settings(
        env={},
        overrides={"store": f"duckdb:{tmp_path / 'expected.duckdb'}", "registry": str(registry)},
    )
    pipe = Pipeline.from_settings(settings)
    engines = {}
    alerts = {}
    rejected = []
    for part in range(partitions):
        payloads = [p for p, _, salt in events if salt % partitions == part]
        from txfast.pipeline import build_engine

        engines[part] = pipe.engine = build_engine(settings)
        for a in range(0, len(payloads), 8192):
            r = pipe.process(SourceBatch(0, payloads=payloads[a : a + 8192]), f"p{part}")
            t = r.stored.alerts
            for tid, feats in zip(
                t["transaction_id"].to_pylist(), t["features"].to_pylist(), strict=True
            ):
                alerts[tid] = feats
            rejected.extend(x.reason for x in r.decoded.rejected)
    pipe.store.close()
    return alerts, sorted(rejected)


def kafka_settings(tmp_path: Path, registry: Path, bootstrap: str, topic: str, group: str, **kafka):
    return load_settings(
        env={},
        overrides={
            "store": f"duckdb:{tmp_path / (kafka.get('instance', '0') + '.duckdb')}",
            "registry": str(registry),
            "kafka": {
                "bootstrap": bootstrap,
                "group": group,
                "topics": [topic],
                "alerts_topic": f"{topic}-alerts",
                "dlq_topic": f"{topic}-dlq",
                "checkpoint_dir": str(tmp_path / "checkpoints"),
                "checkpoint_interval_s": 1.0,
                "transaction_timeout_ms": 10000,
                **kafka,
            },
        },
    )


def store_alerts(store: Path | str) -> dict[str, list[float]]:
    """``transaction_id → features`` of a DuckDB file or a PostgreSQL URL's alerts."""
    if isinstance(store, str):
        import psycopg

        with psycopg.connect(store) as conn:
            rows = conn.execute("SELECT transaction_id, features FROM alerts").fetchall()
        return {tid: [float(x) for x in feats] for tid, feats in rows}
    from txfast.store.duckdb_store import DuckDBStore

    # Opened as txfast opens a store: the small batches a killed scorer had staged (durable,
    # its offsets committed) are written in full first (see DuckDBStore's defer_ms).
    with DuckDBStore(str(store)) as s:
        rows = s.query("SELECT transaction_id, features FROM alerts")
    return dict(rows)


def check_outputs(
    bootstrap: str, topic: str, stores: list[Path] | list[str], expected, expected_rejects
):
    topic_alerts = read_all(bootstrap, f"{topic}-alerts")
    ids = [json.loads(m.value())["transaction_id"] for m in topic_alerts]
    assert len(ids) == len(set(ids)), "an alert was published twice"
    assert set(ids) == set(expected), "alerts topic differs from the in-memory run"
    stored: dict[str, list[float]] = {}
    for s in stores:
        stored.update(store_alerts(s))
    assert set(stored) == set(expected), "alerts store differs from the in-memory run"
    for tid, feats in expected.items():
        # float32 on both sides: PostgreSQL prints a real in its shortest exact form.
        np.testing.assert_array_equal(
            np.asarray(stored[tid], dtype=np.float32),
            np.asarray(feats, dtype=np.float32),
            err_msg=tid,
        )
    dlq = read_all(bootstrap, f"{topic}-dlq", timeout=3.0)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in dlq)
    assert reasons == expected_rejects


def test_stream_equals_in_memory_run(kafka_broker, events, registry, tmp_path):
    from txfast.streaming import KafkaScorer

    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: PARTITIONS, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    load_topic(kafka_broker.bootstrap, topic, events)
    expected, expected_rejects = expected_run(events, registry, tmp_path)
    settings = kafka_settings(tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}")
    scorer = KafkaScorer(settings)
    stats = scorer.run(idle_timeout_s=5)
    print(stats.as_dict())
    assert stats.consumed == len(events)
    check_outputs(
        kafka_broker.bootstrap, topic, [tmp_path / "0.duckdb"], expected, expected_rejects
    )
    # The metrics count each committed batch once, with its Kafka stage and latency.
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics = scorer.pipeline.metrics
    assert metrics is not None
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
    }
    assert got[("txfast_events_total", (("outcome", "scored"),))] == stats.scored
    assert got[("txfast_events_total", (("outcome", "rejected"),))] == stats.rejected
    assert got[("txfast_batches_total", ())] == stats.batches
    assert got[("txfast_stage_seconds_count", (("stage", "kafka"),))] == stats.batches
    latency = got[("txfast_end_to_end_latency_seconds_count", ())]
    assert 0 < latency <= stats.consumed // 8 + stats.batches


def test_a_batch_decided_while_a_failed_one_was_awaited_is_not_published(
    kafka_broker, events, registry, tmp_path, monkeypatch
):
    """A transaction whose outcome is unknown (committed here, reported failed) restarts every
    partition from its checkpoint; the batch that waited for it (back-pressure) was decided
    from the state before and must not be published: the restart publishes its events."""
    from confluent_kafka import KafkaError, KafkaException

    from txfast.streaming import KafkaScorer

    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: PARTITIONS, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    load_topic(kafka_broker.bootstrap, topic, events)
    expected, expected_rejects = expected_run(events, registry, tmp_path)
    settings = kafka_settings(
        tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}", max_in_flight=1
    )
    waiting = []  # set while _submit waits for the batch before its own
    injected = []
    submit, transaction = KafkaScorer._submit, KafkaScorer._transaction

    def waiting_submit(self, item):
        waiting.append(True)
        try:
            submit(self, item)
        finally:
            waiting.pop()

    def flaky_transaction(self, item):
        transaction(self, item)  # committed...
        if waiting and len(injected) < 2 and self.stats.batches >= 3:
            injected.append(self.stats.batches)  # ...but reported as an unknown outcome
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: outcome unknown"))

    monkeypatch.setattr(KafkaScorer, "_submit", waiting_submit)
    monkeypatch.setattr(KafkaScorer, "_transaction", flaky_transaction)
    scorer = KafkaScorer(settings)
    stats = scorer.run(idle_timeout_s=5)
    assert len(injected) == 2 and stats.recoveries == 2, (injected, stats.as_dict())
    check_outputs(
        kafka_broker.bootstrap, topic, [tmp_path / "0.duckdb"], expected, expected_rejects
    )


def run_cli(
    settings_path: Path, log: Path, instance: str = "0", idle_exit: float = 6.0
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "txfast.cli", "run", "--source", "kafka", "--json"]
    cmd += ["--config", str(settings_path), "--instance", instance, "--idle-exit", str(idle_exit)]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def last_json(log: str) -> dict:
    """The last ``--json`` summary printed into a log (it opens with a ``{`` line)."""
    text = "\n" + log
    return json.loads(text[text.rindex("\n{\n") + 1 :])


def write_settings(
    path: Path,
    settings,
    batch_size: int = 2000,
    consumer: dict[str, str] | None = None,
    store: str | None = None,
) -> Path:
    k = settings.kafka
    path.write_text(
        f"""store = "{store or settings.store}"
registry = "{settings.registry}"
[pipeline]
batch_size = {batch_size}
[kafka]
bootstrap = "{k.bootstrap}"
group = "{k.group}"
topics = {json.dumps(k.topics)}
alerts_topic = "{k.alerts_topic}"
dlq_topic = "{k.dlq_topic}"
checkpoint_dir = "{k.checkpoint_dir}"
checkpoint_interval_s = {k.checkpoint_interval_s}
transaction_timeout_ms = {k.transaction_timeout_ms}
[kafka.consumer]
{"".join(f'"{a}" = "{b}"' + chr(10) for a, b in (consumer or {}).items())}"""
    )
    return path


def test_sigkill_three_times_loses_and_doubles_nothing(kafka_broker, events, registry, tmp_path):
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: PARTITIONS, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    load_topic(kafka_broker.bootstrap, topic, events)
    expected, expected_rejects = expected_run(events, registry, tmp_path)
    settings = kafka_settings(tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}")
    cfg = write_settings(tmp_path / "txfast.toml", settings, batch_size=200)
    rng = random.Random(7)
    log = tmp_path / "scorer.log"
    progress = []
    for _ in range(3):
        proc = run_cli(cfg, log)
        time.sleep(rng.uniform(3.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        progress.append(len(read_all(kafka_broker.bootstrap, f"{topic}-alerts", timeout=2.0)))
    assert min(progress) < len(expected), f"no kill landed mid-run: {progress}"
    proc = run_cli(cfg, log)
    proc.wait(600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    final = last_json(log.read_text())
    assert final["restores"] > 0, final
    check_outputs(
        kafka_broker.bootstrap, topic, [tmp_path / "0.duckdb"], expected, expected_rejects
    )


def test_two_processes_split_the_load_and_survive_losing_one(
    kafka_broker, events, registry, tmp_path
):
    partitions = 6
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: partitions, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    load_topic(kafka_broker.bootstrap, topic, events, partitions)
    expected, expected_rejects = expected_run(events, registry, tmp_path, partitions)
    stores = []
    procs = {}
    for instance in ("a", "b"):
        settings = kafka_settings(
            tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}", instance=instance
        )
        cfg = write_settings(
            tmp_path / f"{instance}.toml",
            settings,
            batch_size=200,
            consumer={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
        )
        stores.append(tmp_path / f"{instance}.duckdb")
        # Idle long enough for the group to notice the lost member (session timeout 6 s).
        procs[instance] = run_cli(
            cfg, tmp_path / f"{instance}.log", instance=instance, idle_exit=20.0
        )
    time.sleep(6.0)
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait(30)
    procs["b"].wait(600)
    log_b = (tmp_path / "b.log").read_text()
    assert procs["b"].returncode == 0, log_b[-3000:]
    final = last_json(log_b)
    assert final["scored"] > 0
    check_outputs(kafka_broker.bootstrap, topic, stores, expected, expected_rejects)


def test_broker_restart_mid_run_loses_and_doubles_nothing(kafka_broker, events, registry, tmp_path):
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: PARTITIONS, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    load_topic(kafka_broker.bootstrap, topic, events)
    expected, expected_rejects = expected_run(events, registry, tmp_path)
    settings = kafka_settings(tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}")
    cfg = write_settings(tmp_path / "txfast.toml", settings, batch_size=200)
    log = tmp_path / "scorer.log"
    # Idle long enough to outlast the outage: the scorer must wait for the broker, not exit.
    proc = run_cli(cfg, log, idle_exit=30.0)
    time.sleep(5.0)
    assert proc.poll() is None, log.read_text()[-3000:]
    kafka_broker.stop(keep=True)
    time.sleep(5.0)
    kafka_broker.start()
    proc.wait(600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    final = last_json(log.read_text())
    assert final["consumed"] >= len(events), final
    check_outputs(
        kafka_broker.bootstrap, topic, [tmp_path / "0.duckdb"], expected, expected_rejects
    )


@pytest.mark.postgres
def test_postgres_outage_mid_stream_loses_and_doubles_nothing(
    kafka_broker, pg_server, pg_database, events, registry, tmp_path
):
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topics(
        kafka_broker.bootstrap, {topic: PARTITIONS, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    )
    half = len(events) // 2
    load_topic(kafka_broker.bootstrap, topic, events[:half])
    expected, expected_rejects = expected_run(events, registry, tmp_path)
    settings = kafka_settings(tmp_path, registry, kafka_broker.bootstrap, topic, f"g-{topic}")
    cfg = write_settings(tmp_path / "txfast.toml", settings, batch_size=500, store=pg_database)
    log = tmp_path / "scorer.log"
    proc = run_cli(cfg, log, idle_exit=30.0)
    deadline = time.monotonic() + 120
    while not read_all(kafka_broker.bootstrap, f"{topic}-alerts", timeout=1.0):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
    # The database goes away while the scorer works and the second half arrives meanwhile.
    pg_server.stop(keep=True)
    t0 = time.monotonic()
    load_topic(kafka_broker.bootstrap, topic, events[half:])
    time.sleep(max(0.0, 10.0 - (time.monotonic() - t0)))
    assert proc.poll() is None, log.read_text()[-3000:]
    pg_server.start()
    proc.wait(600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    # The outage was felt: a write failed and was retried, or waited for a new connection.
    assert "store write failed" in text or "error connecting in 'txfast-store'" in text
    check_outputs(kafka_broker.bootstrap, topic, [pg_database], expected, expected_rejects)
