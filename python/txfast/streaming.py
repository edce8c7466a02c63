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

import collections
import logging
import os
import queue
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from txfast.config import KafkaSettings, Settings
from txfast.decode import Rejected
from txfast.exceptions import SnapshotError, StoreError
from txfast.features import FeatureEngine
from txfast.pipeline import BatchResult, Pipeline, build_engine

__all__ = ["CheckpointDir", "KafkaScorer", "StreamStats"]

log = logging.getLogger("txfast.streaming")

_CKPT_MAGIC = b"TXCK"
_CKPT_VERSION = 2  # 2 added the label cursor; 1 still loads (cursor 0)


class CheckpointDir:
    """Per-partition state checkpoints as files, replaced atomically.

    ``<root>/<group>/<topic>-<partition>.ckpt`` holds the engine snapshot, the offset of
    the next message it has not seen and the last store label event it was given. Processes
    of one group on one host share the directory; across hosts, put it on shared storage.
    """

    def __init__(self, root: str | os.PathLike[str], group: str) -> None:
        self.dir = Path(root) / group
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}-{partition}.ckpt"

    def save(
        self, topic: str, partition: int, offset: int, snapshot: bytes, label_cursor: int = 0
    ) -> None:
        """Write a checkpoint (temp file, fsync, rename: never a torn file)."""
        header = _CKPT_MAGIC + struct.pack(
            "<IqqI", _CKPT_VERSION, offset, label_cursor, zlib.crc32(snapshot)
        )
        path = self._path(topic, partition)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(snapshot)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, topic: str, partition: int) -> tuple[int, bytes, int] | None:
        """The latest checkpoint ``(offset, snapshot, label_cursor)``, or ``None``."""
        path = self._path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < 8 or data[:4] != _CKPT_MAGIC:
            raise SnapshotError(f"checkpoint {path} is not a txfast checkpoint")
        (version,) = struct.unpack("<I", data[4:8])
        if version == 1 and len(data) >= 20:
            _, offset, crc = struct.unpack("<IqI", data[4:20])
            cursor, snapshot = 0, data[20:]
        elif version == 2 and len(data) >= 28:
            _, offset, cursor, crc = struct.unpack("<IqqI", data[4:28])
            snapshot = data[28:]
        else:
            raise SnapshotError(f"checkpoint {path} has unknown version {version} or is torn")
        if zlib.crc32(snapshot) != crc:
            raise SnapshotError(f"checkpoint {path} is corrupted")
        return offset, snapshot, cursor


@dataclass
class _Partition:
    """State of one assigned partition.

    ``committed`` advances when a batch's Kafka transaction commits (after its store write).
    """

    engine: FeatureEngine
    replay_until: int  # below it, messages were committed before we owned them: state only
    position: int  # next offset this engine has not seen
    committed: int  # next offset whose results are not committed yet
    checkpointed: int  # offset of the latest checkpoint written
    label_cursor: int = 0  # the last store label event given to the engine


@dataclass
class _Pending:
    """One decided batch on its way to the sinks."""

    result: BatchResult
    rejected: list[Rejected]
    next_offsets: dict[tuple[str, int], int]
    msgs: Sequence[Any]  # kept for the alerts' source timestamps


class _BatchFailed(Exception):
    """The sinks gave up on a batch; its partitions restart from their checkpoints."""


MAX_RECOVERIES = 10
"""Consecutive sink failures (each followed by a restart from checkpoints) before giving up."""

STAGES = ("consume", "decode", "features", "decide", "store", "kafka", "checkpoint")


@dataclass
class StreamStats:
    """Counters of a streaming run (``txfast run --source kafka --json``).

    ``stage_s`` holds the seconds spent per stage; ``store`` and ``kafka`` run on the sink
    thread, overlapping the main thread's ``consume``/``decode``/``features``/``decide``.
    """

    consumed: int = 0
    replayed: int = 0
    scored: int = 0
    rejected: int = 0
    alerts: int = 0
    batches: int = 0
    transactions: int = 0
    aborted: int = 0
    store_retries: int = 0
    recoveries: int = 0
    checkpoints: int = 0
    restores: int = 0
    labels_fed: int = 0  # store label events given to partition engines
    seconds: float = 0.0
    first_message_s: float | None = None  # when the first message arrived, from the start
    model_version: str = ""
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dict(self.__dict__)
        d["stage_s"] = {k: round(v, 3) for k, v in self.stage_s.items()}
        d["tx_per_s"] = round(self.consumed / self.seconds, 1) if self.seconds else 0.0
        # The rate once messages flow (group join and idle time before them left out).
        active = self.seconds - (self.first_message_s or 0.0)
        d["active_tx_per_s"] = round(self.consumed / active, 1) if active > 0 else 0.0
        return d


class _Watchdog:
    """Runs calls on a daemon thread and abandons one that outlives its deadline.

    librdkafka's ``send_offsets_to_transaction`` can block past its own timeout when the
    group coordinator goes away (confluentinc/librdkafka#5456). The main thread must not
    hang with it: a stuck call is left behind on its thread (with its producer, which is
    never touched again) and the caller starts over with a new producer.
    """

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(
            target=self._loop, args=(self._calls,), name="txfast-kafka-txn", daemon=True
        ).start()

    @staticmethod
    def _loop(calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]) -> None:
        while (call := calls.get()) is not None:
            fn, future = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller
                    future.set_exception(e)

    def call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """``fn()``'s result; :class:`_Hung` when it takes longer than ``timeout_s``."""
        future: Future[Any] = Future()
        self._calls.put((fn, future))
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            self._calls.put(None)  # the stuck thread ends if its call ever returns
            self._start()
            raise _Hung(f"a Kafka call did not return in {timeout_s:.0f} s") from None

    def close(self) -> None:
        """Let the thread end."""
        self._calls.put(None)


class _Hung(Exception):
    """A Kafka client call blocked past its deadline; its producer is abandoned."""


class KafkaScorer:
    """Consumes ``settings.kafka.topics`` and scores them with exactly-once alerts.

    Two threads share the work: the main thread consumes, decodes, computes features and
    decides batch *n + 1* while a sink thread makes batch *n* durable (store write, then one
    Kafka transaction with the alerts, dead letters and consumed offsets). At most
    ``settings.kafka.max_in_flight`` decided batches wait for the sinks, which bounds memory
    and applies back-pressure when a sink is slow or down.

    Args:
        settings: Settings; ``settings.kafka`` names the cluster, group, topics and sinks.
        pipeline: Scorer, rules and store (one is built from ``settings`` when omitted).
        on_batch: Called on the sink thread after each committed batch (tests and
            benchmarks use it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: Pipeline | None = None,
        on_batch: Callable[[KafkaScorer], None] | None = None,
    ) -> None:
        from confluent_kafka import Consumer

        self.settings = settings
        self.k: KafkaSettings = settings.kafka
        self.pipeline = pipeline or Pipeline.from_settings(settings)
        self.checkpoints = CheckpointDir(self.k.checkpoint_dir, self.k.group)
        self.on_batch = on_batch
        self.stats = StreamStats(model_version=self.pipeline.scorer.model_version)
        self.partitions: dict[tuple[str, int], _Partition] = {}
        self._stop = threading.Event()
        self._last_checkpoint = time.monotonic()
        self._lag_t = 0.0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="txfast-store")
        self._in_flight: collections.deque[tuple[Future[None], _Pending]] = collections.deque()
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
            "socket.nagle.disable": True,  # small requests go out at once (latency)
            **self.k.consumer,
        }
        self.consumer = Consumer(consumer_conf, logger=log)
        self._failures = 0  # failed batches since the last committed one
        # Per partition, the end of our latest commit the cluster acknowledged: a floor for
        # the group's committed offset, which can read stale right after a broker restart.
        self._acked: dict[tuple[str, int], int] = {}
        self._watchdog = _Watchdog()
        # Producers whose call hung: kept referenced, never used or destroyed again.
        self._abandoned: list[Any] = []
        # Longest wait for one transactional call before the producer is replaced.
        self._call_deadline_s = self.k.transaction_timeout_ms / 1000 + 30.0
        self._new_producer()

    def _new_producer(self, *, abandon: bool = False) -> None:
        from confluent_kafka import KafkaException, Producer

        old = getattr(self, "producer", None)
        if old is not None and abandon:
            self._abandoned.append(old)
        elif old is not None:
            old.purge()  # drop what a fenced producer still holds; its transaction is aborted
        producer_conf = {
            "bootstrap.servers": self.k.bootstrap,
            "transactional.id": f"txfast-{self.k.group}-{self.k.instance}",
            "transaction.timeout.ms": self.k.transaction_timeout_ms,
            "linger.ms": 1,
            # A transaction's first requests often meet the previous one's markers still
            # being written (CONCURRENT_TRANSACTIONS) and are retried: after 100 ms by
            # default, which would be most of each batch's latency.
            "retry.backoff.ms": 2,
            # Retries back off exponentially up to this (1 s by default): a few consecutive
            # CONCURRENT_TRANSACTIONS answers then held a batch for half a second.
            "retry.backoff.max.ms": 20,
            "socket.nagle.disable": True,
            "message.max.bytes": 16 << 20,
            "compression.type": "lz4",
            **self.k.producer,
        }
        self.producer = Producer(producer_conf, logger=log)
        for attempt in range(1, 11):  # the cluster may be restarting
            try:
                self.producer.init_transactions(60)
                return
            except KafkaException as e:
                if not e.args[0].retriable() or attempt == 10:
                    raise
                log.warning("init_transactions failed (%s), attempt %d", e.args[0], attempt)

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
        idle_since: float | None = None
        batch_size = self.settings.pipeline.batch_size
        linger = self.settings.pipeline.linger_ms / 1000
        stage = self.stats.stage_s
        try:
            while not self._stop.is_set():
                self._complete(wait=False)
                c0 = time.perf_counter()
                # With batches in flight, come back soon to publish them once they are stored.
                msgs = self.consumer.consume(
                    batch_size, min(linger, 0.005) if self._in_flight else linger
                )
                stage["consume"] += time.perf_counter() - c0
                # Idle: consecutive empty polls with nothing in flight (time spent waiting
                # on a sink, e.g. through an outage, is not idle).
                if msgs or not self.partitions or self._in_flight:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    break
                if msgs:
                    if self.stats.first_message_s is None:
                        self.stats.first_message_s = c0 - t0
                    self._process(msgs)
                if time.monotonic() - self._last_checkpoint > self.k.checkpoint_interval_s:
                    self.checkpoint_all()
                self._observe()
                if max_messages is not None and self.stats.consumed >= max_messages:
                    break
            self.checkpoint_all()
        finally:
            try:
                self._complete(wait=True)
            finally:
                self._writer.shutdown(wait=True)
                self._watchdog.close()
            self.stats.seconds = time.perf_counter() - t0
            self.pipeline.batch_log.flush()
            self.consumer.close()  # revokes: checkpoints what is still assigned
            self.producer.flush(30)
            self.pipeline.store.close()
        return self.stats

    def _observe(self) -> None:
        """Refresh the slow-moving metrics: lag, state size, feedback quality (throttled)."""
        metrics = self.pipeline.metrics
        if metrics is None:
            return
        now = time.monotonic()
        if now - self._lag_t >= 5.0:
            from confluent_kafka import TopicPartition

            self._lag_t = now
            for (topic, partition), part in list(self.partitions.items()):
                tp = TopicPartition(topic, partition)
                try:
                    _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                except Exception:  # noqa: BLE001 - not fetched yet
                    continue
                if high is not None and high >= 0:
                    metrics.observe_lag(topic, partition, high - part.position)
        metrics.observe_state(lambda: [p.engine.stats() for p in self.partitions.values()])
        metrics.observe_quality(
            self.pipeline.store, window_days=self.settings.metrics.quality_window_days
        )

    # -- the sinks ----------------------------------------------------------------------------
    #
    # Store writes run on a worker thread, overlapping the next batch's decode, features and
    # scoring. Kafka transactions run on the main thread, in batch order, only between calls
    # to consume() or inside the rebalance callbacks: a transaction never races a rebalance.

    def _submit(self, item: _Pending) -> None:
        """Start the store write of a decided batch; waits while ``max_in_flight`` are.

        If a batch it waits for fails, every partition restarts from its checkpoint
        (:meth:`_fail`) and ``item``, decided from the state before, is dropped: its events
        are consumed again after the seek. Published by the new producer, it would have
        advanced the committed offsets past events the restart then publishes again.
        """
        recoveries = self.stats.recoveries
        while len(self._in_flight) >= max(1, self.k.max_in_flight):
            self._complete(wait=True, limit=1)  # back-pressure: a slow or absent store
            if self.stats.recoveries != recoveries:
                return
        future = self._writer.submit(self._store, item)
        self._in_flight.append((future, item))

    def _store(self, item: _Pending) -> None:
        """Worker thread: write one batch to the store, retrying while it is down."""
        t0 = time.perf_counter()
        retries = self.pipeline.summary.store_retries
        try:
            # Retries while the store is down (no offsets are committed meanwhile); only a
            # stop request ends the wait, leaving the batch to be redone after the restart.
            self.pipeline.write(
                item.result, give_up=lambda a: self._stop.is_set() and a >= 3, observe=False
            )
        except StoreError as e:
            raise _BatchFailed(f"store unavailable while stopping: {e}") from e
        finally:
            self.stats.store_retries += self.pipeline.summary.store_retries - retries
            self.stats.stage_s["store"] += time.perf_counter() - t0

    def _complete(self, *, wait: bool, limit: int | None = None) -> None:
        """Publish the stored batches in order: one Kafka transaction each.

        Args:
            wait: Wait for batches still being stored; else stop at the first of them.
            limit: Publish at most this many batches.
        """
        from confluent_kafka import KafkaException

        done = 0
        while self._in_flight and (limit is None or done < limit):
            future, item = self._in_flight[0]
            if not wait and not future.done():
                return
            try:
                future.result()
                self._publish(item)
            except (_BatchFailed, _Hung, KafkaException) as e:
                self._fail(e)
                return
            self._in_flight.popleft()
            done += 1

    def _fail(self, err: Exception) -> None:
        """A batch could not be made durable: restart every partition from its checkpoint."""
        for future, _ in self._in_flight:  # later batches depend on the failed one's state
            future.exception()  # wait: their (idempotent) store writes end before the restart
        self._in_flight.clear()
        self._failures += 1
        if self._failures > MAX_RECOVERIES:
            log.error(
                "%d batches failed in a row; giving up",
                self._failures,
                extra={"event": "kafka_gave_up", "failures": self._failures, "error": str(err)},
            )
            raise err
        # A new producer with the same transactional id fences this one: its open
        # transaction, if any, is resolved (committed if its commit had begun, else aborted)
        # before init_transactions returns, so the committed offsets read below are final.
        # That also covers a producer fenced by the broker (a transaction that outlived
        # transaction.timeout.ms while the broker was away) and one stuck in a call.
        log.error(
            "a batch failed (%s); new producer, every partition from its checkpoint",
            err,
            extra={"event": "kafka_batch_failed", "failures": self._failures, "error": str(err)},
        )
        self._new_producer(abandon=isinstance(err, _Hung))
        # Nothing after the last committed batch is known durable: throw away the in-memory
        # state of every partition and redo the work from the checkpoints and committed
        # offsets (what did commit is replayed into state only).
        self.stats.recoveries += 1
        self._recover(list(self.partitions))

    def _publish(self, item: _Pending) -> None:
        """One Kafka transaction: alerts, dead letters, features and the consumed offsets."""
        from confluent_kafka import KafkaException

        t0 = time.perf_counter()
        for attempt in range(1, 11):
            try:
                self._transaction(item)
                break
            except KafkaException as e:
                kerr = e.args[0]
                if kerr.fatal() or not kerr.txn_requires_abort():
                    # Fatal, or an outcome we cannot know (the commit may have happened):
                    # never redo it in place; restart from the committed offsets instead.
                    raise
                self.stats.aborted += 1
                log.warning(
                    "transaction failed (%s), attempt %d; aborting it and retrying", kerr, attempt
                )
                self._abort()
                time.sleep(min(5.0, 0.2 * 2**attempt))
        else:
            raise _BatchFailed("giving up on a batch after 10 aborted transactions")
        kafka_s = time.perf_counter() - t0
        self.stats.stage_s["kafka"] += kafka_s
        item.result.stages["kafka"] = kafka_s
        self.pipeline.observe(item.result)  # metrics and the batch summary log
        metrics = self.pipeline.metrics
        if metrics is not None:
            # Event received (its Kafka timestamp) to results durable; every 8th event.
            now_ms = time.time() * 1000
            stamps = np.fromiter(
                (m.timestamp()[1] for m in item.msgs[::8]), np.float64, len(item.msgs[::8])
            )
            metrics.observe_latency((now_ms - stamps[stamps > 0]) / 1000)
        for key, off in item.next_offsets.items():
            self._acked[key] = max(self._acked.get(key, 0), off)
            part = self.partitions.get(key)
            if part is not None:
                part.committed = max(part.committed, off)
        self._failures = 0
        result = item.result
        self.stats.batches += 1
        self.stats.transactions += 1
        self.stats.scored += len(result.decoded)
        self.stats.rejected += len(item.rejected)
        self.stats.alerts += result.stored.alerts.num_rows
        if self.on_batch is not None:
            self.on_batch(self)

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

    def _committed(self, partitions: list[Any]) -> dict[tuple[str, int], int]:
        """The group's committed offsets (0 where none), never below our acknowledged commits."""
        out = {}
        for tp in self.consumer.committed(partitions, timeout=30):
            key, off = (tp.topic, tp.partition), tp.offset
            out[key] = max(off if off is not None and off >= 0 else 0, self._acked.get(key, 0))
        return out

    def _restore(self, assigned: list[Any], *, reuse: bool) -> list[Any]:
        """Bring each partition's state to a checkpoint; return where to consume from."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        committed = self._committed(assigned)
        ckpts = {
            (tp.topic, tp.partition): self.checkpoints.load(tp.topic, tp.partition)
            for tp in assigned
        }
        # A checkpoint is written only once its offset was committed: a group offset behind it
        # is our own commit not visible yet (a broker restarting and still completing it).
        deadline = time.monotonic() + 30.0
        while ahead := [
            tp
            for tp in assigned
            if (ck := ckpts[(tp.topic, tp.partition)]) is not None
            and ck[0] > committed[(tp.topic, tp.partition)]
        ]:
            if time.monotonic() > deadline:
                for tp in ahead:
                    key = (tp.topic, tp.partition)
                    log.warning(
                        "%s[%d]: the group's offset %d is still behind the checkpoint's %d; "
                        "trusting the checkpoint (reset offsets? delete the checkpoints too)",
                        *key,
                        committed[key],
                        ckpts[key][0],  # type: ignore[index]
                    )
                    committed[key] = ckpts[key][0]  # type: ignore[index]
                break
            time.sleep(0.5)
            committed.update(self._committed(ahead))
        start = []
        for tp in assigned:
            key = (tp.topic, tp.partition)
            c = committed[key]
            held = self.partitions.get(key)
            if reuse and held is not None and held.position == c == held.committed:
                start.append(TopicPartition(tp.topic, tp.partition, c))
                held.replay_until = c
                continue
            ckpt = ckpts[key]
            cursor = 0
            if ckpt is not None and ckpt[0] <= c:
                offset, snap, cursor = ckpt
                engine = FeatureEngine.from_snapshot(snap)
                self.stats.restores += 1
                log.info("restored %s[%d] at offset %d (committed %d)", *key, offset, c)
            else:
                offset, engine = 0, build_engine(self.settings)
                log.info(
                    "no usable checkpoint for %s[%d] (checkpoint %s, committed %d): replaying"
                    " from the start",
                    *key,
                    None if ckpt is None else ckpt[0],
                    c,
                )
            self.partitions[key] = _Partition(engine, c, offset, offset, offset, cursor)
            start.append(
                TopicPartition(tp.topic, tp.partition, offset if offset > 0 else OFFSET_BEGINNING)
            )
        return start

    def _on_revoke(self, consumer: Any, revoked: list[Any]) -> None:
        self._complete(wait=True)  # batches in flight commit before the new owner reads
        for tp in revoked:
            key = (tp.topic, tp.partition)
            part = self.partitions.pop(key, None)
            if part is not None:
                self._checkpoint(key, part)
            if self.pipeline.metrics is not None:
                self.pipeline.metrics.forget_partition(*key)
        consumer.unassign()

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, key: tuple[str, int], part: _Partition) -> None:
        # Only committed work may be checkpointed: the state must not run ahead of the offset.
        if part.position != part.committed or part.position == part.checkpointed:
            return
        c0 = time.perf_counter()
        self.checkpoints.save(
            key[0], key[1], part.position, part.engine.snapshot(), part.label_cursor
        )
        self.stats.stage_s["checkpoint"] += time.perf_counter() - c0
        part.checkpointed = part.position
        self.stats.checkpoints += 1

    def checkpoint_all(self) -> None:
        """Checkpoint every assigned partition whose state moved since its last checkpoint.

        Waits for the batches in flight to commit first, so each snapshot matches its offset.
        """
        self._complete(wait=True)
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
                log.warning(
                    "consumer error: %s", err, extra={"event": "consumer_error", "error": str(err)}
                )
        if not good:
            return
        stage = self.stats.stage_s
        t0 = time.perf_counter()
        index: dict[tuple[str, int], int] = {}
        codes = np.fromiter(
            (index.setdefault((m.topic(), m.partition()), len(index)) for m in good),
            dtype=np.int64,
            count=len(good),
        )
        offsets = np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good))
        payloads = [m.value() for m in good]
        pipe = self.pipeline
        if pipe.scorer.reload_if_changed():
            self.stats.model_version = pipe.scorer.model_version
            if pipe.metrics is not None:
                pipe.metrics.observe_model(pipe.scorer.metadata, pipe.feature_names)
        decoded = pipe.decoder.decode(payloads)
        self._feed_labels()
        t1 = time.perf_counter()
        stage["decode"] += t1 - t0
        stages = {"decode": t1 - t0}
        accepted_idx = decoded.columns["index"].astype(np.int64)
        features = np.empty((len(decoded), len(pipe.feature_names)), dtype=np.float32)
        live = np.zeros(len(good), dtype=bool)
        next_offsets: dict[tuple[str, int], int] = {}
        accepted_code = codes[accepted_idx]
        inputs = decoded.feature_inputs()
        for key, code in index.items():
            part = self.partitions.get(key)
            if part is None:  # revoked while the batch was in flight: leave it to the owner
                continue
            rows_all = np.flatnonzero(codes == code)
            po = offsets[rows_all]
            fresh = po >= part.position  # never feed an offset twice
            live[rows_all] = fresh & (po >= part.replay_until)
            acc = np.flatnonzero((accepted_code == code) & (offsets[accepted_idx] >= part.position))
            if len(acc):
                features[acc] = part.engine.process(**{k: v[acc] for k, v in inputs.items()})
            part.position = max(part.position, int(po.max()) + 1)
            next_offsets[key] = part.position
        t2 = time.perf_counter()
        stage["features"] += t2 - t1
        stages["features"] = t2 - t1
        live_acc = np.flatnonzero(live[accepted_idx])
        rejected = [
            Rejected(
                int(offsets[r.index]),
                r.reason,
                r.message,
                r.payload,
                source=f"kafka:{good[r.index].topic()}/{good[r.index].partition()}",
            )
            for r in decoded.rejected
            if live[r.index]
        ]
        self.stats.consumed += len(good)
        replayed = int(len(good) - np.count_nonzero(live))
        self.stats.replayed += replayed
        if pipe.metrics is not None and replayed:
            pipe.metrics.events.labels("replayed").inc(replayed)
        if not live.any():
            # Pure replay: nothing to write; the offsets were committed by an earlier owner.
            for key, off in next_offsets.items():
                part = self.partitions[key]
                part.committed = max(part.committed, off)
            return
        live_decoded = decoded.take(live_acc)
        result = pipe.decide(live_decoded, features[live_acc], rejected, "kafka", stages=stages)
        stage["decide"] += time.perf_counter() - t2
        self._submit(_Pending(result, rejected, next_offsets, good))

    def _feed_labels(self) -> None:
        """Give every partition's engine the store labels it has not seen (see txfast.labels).

        Card labels go to every partition (only the card's own has its windows) and
        merchant labels too, since merchant state is kept per partition.
        """
        if not self.partitions:
            return
        after = min(p.label_cursor for p in self.partitions.values())
        force = False
        while (batch := self.pipeline.fetch_labels(after, force=force)) is not None:
            if not len(batch):
                return
            for part in self.partitions.values():
                self.stats.labels_fed += batch.feed(part.engine, part.label_cursor)
                part.label_cursor = max(part.label_cursor, batch.cursor)
            after, force = batch.cursor, True

    def _abort(self) -> None:
        """Abort the open transaction, if any, retrying while the cluster is unreachable."""
        from confluent_kafka import KafkaError, KafkaException

        for attempt in range(1, 31):
            try:
                self._watchdog.call(
                    lambda: self.producer.abort_transaction(30), self._call_deadline_s
                )
                return
            except KafkaException as e:
                kerr = e.args[0]
                if kerr.fatal():
                    raise
                if kerr.code() == KafkaError._STATE:  # no transaction open: nothing to abort
                    return
                log.warning("aborting the transaction failed (%s), attempt %d", kerr, attempt)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        raise _BatchFailed("the open transaction could not be aborted")

    def _transaction(self, item: _Pending) -> None:
        from confluent_kafka import TopicPartition

        p = self.producer
        result, msgs = item.result, item.msgs
        p.begin_transaction()
        alerts = result.stored.alerts
        if alerts.num_rows:
            cards = alerts["card_id"].to_pylist()
            # Each alert carries its source message's Kafka timestamp, for end-to-end latency.
            rows = np.flatnonzero(result.decisions.is_alert)
            sources = result.decoded.columns["index"][rows].tolist()
            for card, value, i in zip(cards, _alert_json(alerts), sources, strict=True):
                stamp = str(msgs[i].timestamp()[1]).encode()
                _produce(
                    p, self.k.alerts_topic, value, card.encode(), [("source_timestamp", stamp)]
                )
        for r in item.rejected:
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
        if self.k.features_topic and len(result.decoded):
            ids = result.decoded.columns["transaction_id"].to_pylist()
            for tid, row in zip(ids, result.features, strict=True):
                _produce(p, self.k.features_topic, row.tobytes(), tid.encode())
        offsets = [TopicPartition(t, part, off) for (t, part), off in item.next_offsets.items()]
        group = self.consumer.consumer_group_metadata()
        self._call(lambda: p.send_offsets_to_transaction(offsets, group, 30))
        # A commit that timed out may have happened: it is retried, never aborted and redone.
        self._call(lambda: p.commit_transaction(60))

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One transactional call, retried while its error is retriable, under the watchdog."""
        from confluent_kafka import KafkaException

        for attempt in range(1, 11):
            try:
                return self._watchdog.call(fn, self._call_deadline_s)
            except KafkaException as e:
                kerr = e.args[0]
                if not kerr.retriable() or kerr.txn_requires_abort() or attempt == 10:
                    raise
                log.warning("%s (attempt %d); retrying the call", kerr, attempt)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")


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
