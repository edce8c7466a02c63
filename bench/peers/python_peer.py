"""The plain-Python peer: what most teams write first, done carefully.

One confluent-kafka consumer (a group member, like txfast) reads micro-batches with
``consume(batch, linger)``; each event is parsed with ``json.loads`` and checked, its 37
features come from per-card, per-merchant and per-user ``dict`` + ``deque`` state (one
process, so merchant and user windows see every partition), the batch is scored with
scikit-learn's ``score_samples`` on the same Isolation Forest txfast exported to ONNX, the
default rules decide, alerts go to the output topic (JSON, key = card, header
``source_timestamp``), and the offsets are committed once the batch's alerts are delivered
(at-least-once; no store).

    python bench/peers/python_peer.py --bootstrap HOST:PORT --topic T --out-topic A \\
        --group G --model-dir DIR --workdir DIR [--expect N]
"""

from __future__ import annotations

import argparse
import signal

import numpy as np
from common import FeatureState, Model, Status, add_common_args, alert_json, parse
from confluent_kafka import Consumer, KafkaException, Producer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    args = ap.parse_args()
    model = Model(args.model_dir)
    state = FeatureState()
    status = Status()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "socket.nagle.disable": True,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 1,
            "socket.nagle.disable": True,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    consumer.subscribe([args.topic])
    linger = args.linger_ms / 1000
    rejected = 0
    while not stop:
        msgs = consumer.consume(args.batch, linger)
        if not msgs:
            continue
        status.seen_input()
        events, rows, stamps = [], [], []
        good = 0
        for m in msgs:
            if m.error() is not None:
                continue
            good += 1
            e = parse(m.value(), model.rates)
            if e is None:
                rejected += 1  # a real team would publish it to a dead-letter topic
                continue
            events.append(e)
            rows.append(state.row(e))
            stamps.append(m.timestamp()[1])
        alerts = 0
        if rows:
            X = np.asarray(rows, dtype=np.float32)
            score = model.score(X)
            anomalous, level, action, fired = model.decide_events(score, X, events)
            for i in np.flatnonzero(action != 0).tolist():
                e = events[i]
                value = alert_json(
                    e,
                    float(score[i]),
                    bool(anomalous[i]),
                    int(level[i]),
                    int(action[i]),
                    int(fired[i]),
                    model.version,
                )
                while True:
                    try:
                        producer.produce(
                            args.out_topic,
                            value=value,
                            key=e["card_id"].encode(),
                            headers=[("source_timestamp", str(stamps[i]).encode())],
                        )
                        break
                    except BufferError:
                        producer.poll(0.01)
                alerts += 1
        producer.flush()  # the batch's alerts are delivered before its offsets are committed
        consumer.commit(asynchronous=True)
        status.add(good, alerts)
        if args.expect and status.processed >= args.expect:
            break
    producer.flush()
    try:
        consumer.commit(asynchronous=False)
    except KafkaException:  # nothing new since the last asynchronous commit
        pass
    status.final(rejected=rejected)
    consumer.close()


if __name__ == "__main__":
    main()
