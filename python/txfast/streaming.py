"""Scoring a Kafka topic with exactly-once alerts, per-partition state and checkpoints.

The loop, per micro-batch:

1. ``consume(batch_size, linger)``: raw messages from the assigned partitions.
2. Decode the whole batch natively; give each partition's rows to that partition's
   :class:`~txfast.features.FeatureEngine` (state is kept per partition, so features depend
   only on the partition's order, never on how partitions interleave or move).
3. Rows below the group's committed offset are *replay* (after a restore from a checkpoint):
   they update state only. Live rows are scored, decided and written to the store
   (idempotent by ``transaction_id``).
4. In one Kafka transaction: alerts to ``transactions_anomalies`` (key ``card_id``), dead
   letters to ``transactions_dlq`` (original bytes, reason and source in headers), optional
   feature vectors, and the consumed offsets (``send_offsets_to_transaction``). Offsets are
   committed only after the store write succeeded.
5. Every ``checkpoint_interval_s``, and for partitions being revoked, each partition's state
   snapshot is written atomically with the offset it reflects.

On assignment a partition's state is restored from its checkpoint and the consumer seeks
to the checkpoint's offset; messages between it and the committed offset are replayed into
state only. Without a checkpoint the partition is replayed from its beginning. SIGKILL at
any point therefore loses nothing and doubles nothing: uncommitted work is aborted and
redone; committed work is replayed into state without output.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from txfast.config import KafkaSettings, Settings
from txfast.decode import DecodedBatch, Rejected
from txfast.exceptions import SnapshotError
from txfast.features import FeatureEngine
from txfast.pipeline import Pipeline, build_engine

__all__ = ["CheckpointDir", "KafkaScorer", "StreamStats"]

log = logging.getLogger("txfast.streaming")

_CKPT_MAGIC = b"TXCK"
_CKPT_VERSION = 1


class CheckpointDir:
    """Per-partition state checkpoints as files, replaced atomically.

    ``<root>/<group>/<topic>-<partition>.ckpt`` holds the engine snapshot and the offset of
    the next message it has not seen. Processes of one group on one host share the directory;
    across hosts, put it on shared storage.
    """

    def __init__(self, root: str | os.PathLike[str], group: str) -> None:
        self.dir = Path(root) / group
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}-{partition}.ckpt"

    def save(self, topic: str, partition: int, offset: int, snapshot: bytes) -> None:
        """Write a checkpoint (temp file, fsync, rename: never a torn file)."""
        header = _CKPT_MAGIC + struct.pack("<IqI", _CKPT_VERSION, offset, zlib.crc32(snapshot))
        path = self._path(topic, partition)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(snapshot)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, topic: str, partition: int) -> tuple[int, bytes] | None:
        """The latest checkpoint ``(offset, snapshot)``, or ``None`` when there is none."""
        path = self._path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < 20 or data[:4] != _CKPT_MAGIC:
            raise SnapshotError(f"checkpoint {path} is not a txfast checkpoint")
        version, offset, crc = struct.unpack("<IqI", data[4:20])
        snapshot = data[20:]
        if version != _CKPT_VERSION or zlib.crc32(snapshot) != crc:
            raise SnapshotError(f"checkpoint {path} is corrupted or of version {version}")
        return offset, snapshot


@dataclass
class _Partition:
    """State of one assigned partition."""

    engine: FeatureEngine
    committed: int  # first offset not yet committed: below it, messages are replay
    position: int  # next offset this engine has not seen
    checkpointed: int  # offset of the latest checkpoint written


@dataclass
class StreamStats:
    """Counters of a streaming run (``txfast run --source kafka --json``)."""

    consumed: int = 0
    replayed: int = 0
    scored: int = 0
    rejected: int = 0
    alerts: int = 0
    batches: int = 0
    transactions: int = 0
    aborted: int = 0
    checkpoints: int = 0
    restores: int = 0
    seconds: float = 0.0
    model_version: str = ""
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        d["tx_per_s"] = round(self.consumed / self.seconds, 1) if self.seconds else 0.0
        return d


class KafkaScorer:
    """Consumes ``settings.kafka.topics`` and scores them with exactly-once alerts.

    Args:
        settings: Settings; ``settings.kafka`` names the cluster, group, topics and sinks.
        pipeline: Scorer, rules and store (one is built from ``settings`` when omitted).
        on_batch: Called after each committed batch (tests and benchmarks use it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: Pipeline | None = None,
        on_batch: Callable[[KafkaScorer], None] | None = None,
    ) -> None:
        from confluent_kafka import Consumer, Producer

        self.settings = settings
        self.k: KafkaSettings = settings.kafka
        self.pipeline = pipeline or Pipeline.from_settings(settings)
        self.checkpoints = CheckpointDir(self.k.checkpoint_dir, self.k.group)
        self.on_batch = on_batch
        self.stats = StreamStats(model_version=self.pipeline.scorer.model_version)
        self.partitions: dict[tuple[str, int], _Partition] = {}
        self._stop = threading.Event()
        self._last_checkpoint = time.monotonic()
        consumer_conf = {
            "bootstrap.servers": self.k.bootstrap,
            "group.id": self.k.group,
            # Static membership: a restarted instance takes its partitions back at once.
            "group.instance.id": f"txfast-{self.k.group}-{self.k.instance}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 16 << 20,
            **self.k.consumer,
        }
        self.consumer = Consumer(consumer_conf, logger=log)
        producer_conf = {
            "bootstrap.servers": self.k.bootstrap,
            "transactional.id": f"txfast-{self.k.group}-{self.k.instance}",
            "transaction.timeout.ms": self.k.transaction_timeout_ms,
            "linger.ms": 5,
            "message.max.bytes": 16 << 20,
            "compression.type": "lz4",
            **self.k.producer,
        }
        self.producer = Producer(producer_conf, logger=log)
        self.producer.init_transactions(60)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit, checkpoint and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain the current batch, commit and checkpoint."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(
        self, *, max_messages: int | None = None, idle_timeout_s: float | None = None
    ) -> StreamStats:
        """Consume until stopped (or ``max_messages`` consumed / ``idle_timeout_s`` idle)."""
        self.consumer.subscribe(
            list(self.k.topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        t0 = time.perf_counter()
        idle_since = time.monotonic()
        batch_size = self.settings.pipeline.batch_size
        linger = self.settings.pipeline.linger_ms / 1000
        try:
            while not self._stop.is_set():
                msgs = self.consumer.consume(batch_size, linger)
                if msgs or not self.partitions:  # idle only counts once partitions are ours
                    idle_since = time.monotonic()
                if msgs:
                    self._process(msgs)
                elif idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    break
                if time.monotonic() - self._last_checkpoint > self.k.checkpoint_interval_s:
                    self.checkpoint_all()
                if max_messages is not None and self.stats.consumed >= max_messages:
                    break
            self.checkpoint_all()
        finally:
            self.stats.seconds = time.perf_counter() - t0
            self.consumer.close()  # revokes: checkpoints what is still assigned
            self.producer.flush(30)
            self.pipeline.store.close()
        return self.stats

    # -- rebalancing ------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, assigned: list[Any]) -> None:
        consumer.assign(self._restore(assigned, reuse=True))

    def _recover(self, keys: list[tuple[str, int]]) -> None:
        """Throw away the in-memory state of ``keys`` and restart them from checkpoints."""
        from confluent_kafka import TopicPartition

        for key in keys:
            self.partitions.pop(key, None)
        for tp in self._restore([TopicPartition(t, p) for t, p in keys], reuse=False):
            self.consumer.seek(tp)

    def _restore(self, assigned: list[Any], *, reuse: bool) -> list[Any]:
        """Bring each partition's state to a checkpoint; return where to consume from."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.consumer.committed(assigned, timeout=30)
        }
        start = []
        for tp in assigned:
            key = (tp.topic, tp.partition)
            c = committed.get(key, -1)
            c = c if c is not None and c >= 0 else 0
            held = self.partitions.get(key)
            if reuse and held is not None and held.position == c:
                start.append(TopicPartition(tp.topic, tp.partition, c))
                held.committed = c
                continue
            ckpt = self.checkpoints.load(tp.topic, tp.partition)
            if ckpt is not None and ckpt[0] <= c:
                offset, snap = ckpt
                engine = FeatureEngine.from_snapshot(snap)
                self.stats.restores += 1
                log.info("restored %s[%d] at offset %d (committed %d)", *key, offset, c)
            else:
                offset, engine = 0, build_engine(self.settings)
                log.info("no usable checkpoint for %s[%d]: replaying from the start", *key)
            self.partitions[key] = _Partition(engine, c, offset, offset)
            start.append(
                TopicPartition(tp.topic, tp.partition, offset if offset > 0 else OFFSET_BEGINNING)
            )
        return start

    def _on_revoke(self, consumer: Any, revoked: list[Any]) -> None:
        for tp in revoked:
            key = (tp.topic, tp.partition)
            part = self.partitions.pop(key, None)
            if part is not None and part.position >= part.committed:
                self._checkpoint(key, part)
        consumer.unassign()

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, key: tuple[str, int], part: _Partition) -> None:
        # Only committed work may be checkpointed: position == committed after each batch.
        if part.position != part.committed or part.position == part.checkpointed:
            return
        self.checkpoints.save(key[0], key[1], part.position, part.engine.snapshot())
        part.checkpointed = part.position
        self.stats.checkpoints += 1

    def checkpoint_all(self) -> None:
        """Checkpoint every assigned partition whose state moved since its last checkpoint."""
        for key, part in list(self.partitions.items()):
            self._checkpoint(key, part)
        self._last_checkpoint = time.monotonic()

    # -- one batch --------------------------------------------------------------------------

    def _process(self, msgs: Sequence[Any]) -> None:
        from confluent_kafka import KafkaException

        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        if not good:
            return
        keys = [(m.topic(), m.partition()) for m in good]
        offsets = np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good))
        payloads = [m.value() for m in good]
        pipe = self.pipeline
        if pipe.scorer.reload_if_changed():
            self.stats.model_version = pipe.scorer.model_version
        decoded = pipe.decoder.decode(payloads)
        accepted_idx = decoded.columns["index"].astype(np.int64)
        features = np.empty((len(decoded), len(pipe.feature_names)), dtype=np.float32)
        live = np.zeros(len(good), dtype=bool)
        next_offsets: dict[tuple[str, int], int] = {}
        key_codes = _codes(keys)
        for code, key in enumerate(sorted(set(keys))):
            part = self.partitions.get(key)
            rows_all = np.flatnonzero(key_codes == code)
            if part is None:  # revoked while the batch was in flight: leave it to the owner
                continue
            po = offsets[rows_all]
            fresh = po >= part.position  # never feed an offset twice
            live[rows_all] = fresh & (po >= part.committed)
            acc = np.flatnonzero(np.isin(accepted_idx, rows_all[fresh]))
            if len(acc):
                sub = decoded.take(acc)
                features[acc] = part.engine.process(**sub.feature_inputs())
            next_offsets[key] = int(po.max()) + 1
        live_acc = np.flatnonzero(live[accepted_idx])
        rejected = [
            Rejected(
                int(offsets[r.index]),
                r.reason,
                r.message,
                r.payload,
                source=f"kafka:{keys[r.index][0]}/{keys[r.index][1]}",
            )
            for r in decoded.rejected
            if live[r.index]
        ]
        self.stats.consumed += len(good)
        self.stats.replayed += int(len(good) - np.count_nonzero(live))
        if not live.any():
            for key, off in next_offsets.items():
                self.partitions[key].position = max(self.partitions[key].position, off)
            return
        live_decoded = decoded.take(live_acc)
        result = pipe.finish(live_decoded, features[live_acc], rejected, "kafka")
        for attempt in range(1, 11):
            try:
                self._transaction(result, live_decoded, rejected, next_offsets, good)
                break
            except KafkaException as e:
                kerr = e.args[0]
                if kerr.fatal():
                    raise
                self.stats.aborted += 1
                log.warning(
                    "transaction failed (%s), attempt %d; retrying the sinks", kerr, attempt
                )
                if kerr.txn_requires_abort():
                    self.producer.abort_transaction(60)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        else:
            # The group moved on (or the cluster is gone for long): nothing of this batch was
            # committed; restart its partitions from their checkpoints and redo the work.
            log.error("giving up on a batch after 10 attempts; restoring its partitions")
            self._recover(list(next_offsets))
            return
        for key, off in next_offsets.items():
            part = self.partitions.get(key)
            if part is not None:
                part.position = max(part.position, off)
                part.committed = max(part.committed, off)
        self.stats.batches += 1
        self.stats.transactions += 1
        self.stats.scored += len(live_decoded)
        self.stats.rejected += len(rejected)
        self.stats.alerts += result.stored.alerts.num_rows
        if self.on_batch is not None:
            self.on_batch(self)

    def _transaction(
        self,
        result: Any,
        decoded: DecodedBatch,
        rejected: list[Rejected],
        next_offsets: dict[tuple[str, int], int],
        msgs: Sequence[Any],
    ) -> None:
        from confluent_kafka import TopicPartition

        p = self.producer
        p.begin_transaction()
        alerts = result.stored.alerts
        if alerts.num_rows:
            cards = alerts["card_id"].to_pylist()
            # Each alert carries its source message's Kafka timestamp, for end-to-end latency.
            rows = np.flatnonzero(result.decisions.is_alert)
            sources = decoded.columns["index"][rows].tolist()
            for card, value, i in zip(cards, _alert_json(alerts), sources, strict=True):
                stamp = str(msgs[i].timestamp()[1]).encode()
                _produce(
                    p, self.k.alerts_topic, value, card.encode(), [("source_timestamp", stamp)]
                )
        for r in rejected:
            topic, _, partition = r.source[len("kafka:") :].rpartition("/")
            _produce(
                p,
                self.k.dlq_topic,
                r.payload,
                None,
                headers=[
                    ("reason", r.reason.encode()),
                    ("message", r.message.encode()),
                    ("source_topic", topic.encode()),
                    ("source_partition", partition.encode()),
                    ("source_offset", str(r.index).encode()),
                ],
            )
        if self.k.features_topic and len(decoded):
            ids = decoded.columns["transaction_id"].to_pylist()
            for tid, row in zip(ids, result.features, strict=True):
                _produce(p, self.k.features_topic, row.tobytes(), tid.encode())
        offsets = [TopicPartition(t, part, off) for (t, part), off in next_offsets.items()]
        p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
        p.commit_transaction(60)


def _codes(keys: list[tuple[str, int]]) -> np.ndarray:
    order = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.fromiter((order[k] for k in keys), dtype=np.int64, count=len(keys))


def _produce(p: Any, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> None:
    while True:
        try:
            p.produce(topic, value=value, key=key, headers=headers)
            return
        except BufferError:  # local queue full: let deliveries drain
            p.poll(0.05)


_ALERT_FIELDS = (
    "transaction_id",
    "ts",
    "card_id",
    "user_id",
    "merchant_id",
    "merchant_category",
    "country",
    "channel",
    "amount",
    "currency",
    "amount_base",
    "score",
    "is_anomaly",
    "risk_level",
    "action",
    "model_version",
    "rules",
)


def _alert_json(alerts: pa.Table) -> list[bytes]:
    t = alerts.select(list(_ALERT_FIELDS))
    t = t.set_column(1, "ts", pa.compute.cast(t["ts"], pa.int64()))
    enc = msgspec.json.Encoder()
    return [enc.encode(row) for row in t.to_pylist()]
