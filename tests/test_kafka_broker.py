"""The development Kafka broker (scripts/kafka.sh) against the confluent-kafka client.

These check the broker the later Kafka tests rely on: keyed messages, transactions seen by a
``read_committed`` consumer, 10 MB messages, and data and committed offsets surviving a
restart of the broker.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from kafka_fixtures import KafkaBroker

if os.environ.get("CI") != "true":  # in CI a missing client is an error, not a skip
    pytest.importorskip("confluent_kafka")
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

pytestmark = pytest.mark.kafka

TopicFactory = Callable[..., str]
BIG = 10 * 1024 * 1024
"""Size of the large message: dead letters carry payloads up to this size."""


def _producer(broker: KafkaBroker, extra: Mapping[str, Any] | None = None) -> Producer:
    return Producer(broker.config({"acks": "all", "linger.ms": 5, **(extra or {})}))


def _produce(producer: Producer, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) pairs and wait until every one is acknowledged."""
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for key, value in items:
        producer.produce(topic, key=key, value=value, on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still in flight after 60 s"
    assert not errors, errors


def _read_all(
    broker: KafkaBroker,
    topic: str,
    partitions: int,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[Message]:
    """Read every partition of ``topic`` from the beginning to its end (no consumer group)."""
    consumer = Consumer(
        broker.config(
            {
                "group.id": f"read-all-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **(extra or {}),
            }
        )
    )
    out: list[Message] = []
    at_end: set[int] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"partitions at end: {at_end} of {partitions}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_end.add(msg.partition())
                continue
            out.append(msg)
    finally:
        consumer.close()
    return out


def _consume_group(
    broker: KafkaBroker, topic: str, group: str, count: int, timeout: float = 30.0
) -> list[Message]:
    """Consume ``count`` messages as member of ``group``, commit their offsets, leave."""
    consumer = Consumer(
        broker.config(
            {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
        )
    )
    out: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"consumed {len(out)} of {count}"
            for msg in consumer.consume(num_messages=count - len(out), timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def test_keyed_messages_keep_their_partition_and_order(
    kafka_broker: KafkaBroker, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(partitions=3, prefix="keyed")
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    items = []
    for i in range(300):
        key, value = f"card-{i % 10}".encode(), f"event-{i}".encode()
        items.append((key, value))
        sent[key].append(value)
    _produce(_producer(kafka_broker, {"enable.idempotence": True}), topic, items)

    got: dict[bytes, list[bytes]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for msg in _consume_group(kafka_broker, topic, f"keyed-{uuid.uuid4().hex[:8]}", 300):
        got[msg.key()].append(msg.value())
        partitions[msg.key()].add(msg.partition())
    assert got == sent  # nothing lost or duplicated, and per-key order kept
    assert all(len(p) == 1 for p in partitions.values())  # one partition per key
    assert len(set().union(*partitions.values())) > 1  # and the keys spread over partitions


def test_read_committed_sees_committed_transactions_only(
    kafka_broker: KafkaBroker, kafka_topic: TopicFactory
) -> None:
    topic = kafka_topic(partitions=2, prefix="txn")
    producer = Producer(
        kafka_broker.config({"transactional.id": f"txfast-test-{uuid.uuid4().hex}", "linger.ms": 5})
    )
    producer.init_transactions(30)

    def transaction(label: str, n: int, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, key=f"k{i}".encode(), value=f"{label}-{i}".encode())
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)  # the aborted records do reach the log
            producer.abort_transaction(30)

    transaction("first", 5, commit=True)
    transaction("aborted", 5, commit=False)
    transaction("second", 5, commit=True)

    committed = _read_all(kafka_broker, topic, 2, {"isolation.level": "read_committed"})
    values = sorted(m.value().decode() for m in committed)
    assert values == sorted([f"first-{i}" for i in range(5)] + [f"second-{i}" for i in range(5)])

    everything = _read_all(kafka_broker, topic, 2, {"isolation.level": "read_uncommitted"})
    assert sum(m.value().startswith(b"aborted-") for m in everything) == 5
    assert len(everything) == 15


def test_ten_megabyte_message(kafka_broker: KafkaBroker, kafka_topic: TopicFactory) -> None:
    topic = kafka_topic(prefix="big", config={"max.message.bytes": str(16 * 1024 * 1024)})
    payload = os.urandom(BIG)  # incompressible
    producer = _producer(
        kafka_broker, {"message.max.bytes": 16 * 1024 * 1024, "compression.type": "none"}
    )
    _produce(producer, topic, [(b"big", payload), (b"small", b"after")])

    msgs = _read_all(kafka_broker, topic, 1)
    assert [m.key() for m in msgs] == [b"big", b"small"]
    assert len(msgs[0].value()) == BIG
    assert hashlib.sha256(msgs[0].value()).digest() == hashlib.sha256(payload).digest()


def test_messages_and_group_offsets_survive_a_broker_restart(
    kafka_broker: KafkaBroker, kafka_topic: TopicFactory
) -> None:
    if kafka_broker.external:
        pytest.skip("the broker is external (TXFAST_KAFKA_BOOTSTRAP): not restarted by tests")
    topic = kafka_topic(partitions=2, prefix="restart")
    values = [f"event-{i}".encode() for i in range(50)]
    _produce(
        _producer(kafka_broker), topic, [(f"k{i % 7}".encode(), v) for i, v in enumerate(values)]
    )
    group = f"restart-{uuid.uuid4().hex[:8]}"
    first = _consume_group(kafka_broker, topic, group, 20)

    before = kafka_broker.bootstrap
    host, port = before.rsplit(":", 1)
    kafka_broker.stop(keep=True)
    try:
        with socket.socket() as s:
            assert s.connect_ex((host, int(port))) != 0, "the broker still accepts connections"
    finally:
        assert kafka_broker.start() == before  # same address after the restart

    assert sorted(m.value() for m in _read_all(kafka_broker, topic, 2)) == sorted(values)
    # The group resumes after its committed offsets: the remaining 30, none of the first 20.
    rest = _consume_group(kafka_broker, topic, group, 30)
    assert sorted(m.value() for m in first + rest) == sorted(values)


def test_script_reports_the_running_broker(kafka_broker: KafkaBroker) -> None:
    if kafka_broker.external:
        pytest.skip("the broker is external (TXFAST_KAFKA_BOOTSTRAP)")
    status = kafka_broker.run_script("status", timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert kafka_broker.bootstrap in status.stdout
    env = kafka_broker.run_script("env", timeout=30)
    assert f"export KAFKA_BOOTSTRAP={kafka_broker.bootstrap}\n" in env.stdout
    again = kafka_broker.run_script("start", timeout=60)  # idempotent: finds it running
    assert again.returncode == 0 and again.stdout.strip() == kafka_broker.bootstrap
