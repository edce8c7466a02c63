"""The Quix Streams peer: stateful processing on Kafka, the Quix way.

A ``StreamingDataFrame`` over the input topic (JSON values, key = card): validation, then
three stateful steps, each with its state in Quix's RocksDB stores (changelog topics for
recovery, committed with the offsets at each checkpoint):

1. per card (the message key): the card's retained events and last location in state, the
   34 card, amount and time features (``common.card_features``);
2. ``group_by("merchant_id")`` (a repartition topic): the merchant's event times in state,
   its 24 h and 7 d counts;
3. keyed by user through a topic of its own (``to_topic``, then a second dataframe: Quix
   allows one ``group_by`` per dataframe): the user's (time, card) pairs in state,
   distinct cards in 24 h.

Scikit-learn cannot score one row at a time at these rates (about 4.5 ms per call), so
scoring is a ``BatchingSink``: Quix hands it everything processed since the last checkpoint
(``commit_interval``: 1 s for the drain, 0.25 s for latency runs), it scores the batch with
``score_samples``, applies the default rules and publishes the alerts, flushed before the
checkpoint commits (at-least-once).

Quix's built-in window operators (``sliding_window(...).agg(...)``) emit one aggregate
stream per window definition, not one row per transaction with five windows' counts, sums,
means and maxima beside the event's own fields, so per-card windows are kept in state by
hand, as Quix's stateful-processing guide does.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from common import (
    Model,
    Status,
    add_common_args,
    alert_json,
    card_features,
    merchant_features,
    user_features,
    validate,
)
from confluent_kafka import Producer
from quixstreams import Application
from quixstreams.models.topics import TopicConfig
from quixstreams.sinks import BatchingSink, SinkBatch


class ScoringSink(BatchingSink):
    """Scores what Quix processed since the last checkpoint and publishes the alerts."""

    def __init__(self, model: Model, producer: Producer, topic: str, status: Status) -> None:
        super().__init__()
        self.model = model
        self.producer = producer
        self.topic = topic
        self.status = status

    def write(self, batch: SinkBatch) -> None:
        events = [item.value for item in batch]
        if not events:
            return
        X = np.asarray([e["f"] for e in events], dtype=np.float32)
        score = self.model.score(X)
        anomalous, level, action, fired = self.model.decide_events(score, X, events)
        alerts = 0
        for i in np.flatnonzero(action != 0).tolist():
            e = events[i]
            value = alert_json(
                e,
                float(score[i]),
                bool(anomalous[i]),
                int(level[i]),
                int(action[i]),
                int(fired[i]),
                self.model.version,
            )
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value=value,
                        key=e["card_id"].encode(),
                        headers=[("source_timestamp", str(e["src_ts"]).encode())],
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            alerts += 1
        self.producer.flush()  # delivered before Quix commits the checkpoint
        self.status.add(len(events), alerts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    args = ap.parse_args()
    model = Model(args.model_dir)
    rates = model.rates
    status = Status()
    latency = args.latency
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        # 0.25 s: the sink (scoring) runs at each checkpoint, so this bounds latency from
        # below; 0.1 s could not sustain 2,000 tx/s here, 0.5-1 s gave higher latency.
        commit_interval=0.25 if latency else 1.0,
        state_dir=str(Path(args.workdir) / "state"),
        loglevel=logging.WARNING,
        # Quix's own client settings: linger.ms=1 on its producer (changelog and repartition
        # messages) cost more throughput than it saved latency.
    )
    source = app.topic(args.topic, value_deserializer="json", key_deserializer="str")
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 1,
            "socket.nagle.disable": True,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )

    def check(e: dict) -> dict | None:
        status.seen_input()
        v = validate(e, rates)
        if v is None:
            status.add(1, 0)  # rejected: counted as processed, nothing downstream
        return v

    def per_card(e: dict, key: str, timestamp: int, headers: object, state) -> dict:
        events = deque(state.get("events", ()))
        row, loc = card_features(events, state.get("loc"), e)
        state.set("events", list(events))
        if loc is not None:
            state.set("loc", loc)
        e["f"] = row
        e["src_ts"] = timestamp
        return e

    def per_merchant(e: dict, state) -> dict:
        stamps = deque(state.get("ts", ()))
        e["f"] += merchant_features(stamps, e["ts"])
        state.set("ts", list(stamps))
        return e

    def per_user(e: dict, state) -> dict:
        if e.get("user_id"):
            seen = deque(state.get("seen", ()))
            e["f"].append(user_features(seen, e["ts"], e["card_id"]))
            state.set("seen", list(seen))
        else:
            e["f"].append(-1.0)
        return e

    # Quix allows one group_by per dataframe: the user step reads a topic of its own.
    by_user = app.topic(
        f"{args.topic}-{args.group}-by-user",
        key_deserializer="str",
        key_serializer="str",
        config=TopicConfig(num_partitions=6, replication_factor=1),
    )
    sdf = app.dataframe(source)
    sdf = sdf.apply(check).filter(lambda e: e is not None)
    sdf = sdf.apply(per_card, stateful=True, metadata=True)
    sdf = sdf.group_by("merchant_id")
    sdf = sdf.apply(per_merchant, stateful=True)
    sdf.to_topic(by_user, key=lambda e: e.get("user_id") or "~" + e["card_id"])
    users = app.dataframe(by_user)
    users = users.apply(per_user, stateful=True)
    users.sink(ScoringSink(model, producer, args.out_topic, status))

    if args.expect:

        def watch() -> None:
            while status.processed < args.expect:
                time.sleep(0.02)
            app.stop()

        threading.Thread(target=watch, daemon=True).start()
    app.run()
    producer.flush()
    status.final()


if __name__ == "__main__":
    main()
