"""Replaying a history file through the native feature engine (training and ``txfast features``).

The same :class:`txfast.features.FeatureEngine` that scores online computes the features
here, event by event in file order, so training and serving cannot disagree.

With label features on (``[features] labels = true``), the history's own labels are the label
events: the label of a transaction at ``ts`` becomes known at ``ts + label_delay`` (default
7 days, always positive). Each batch's labels are given to the engine before the batch's
transactions; that is exactly "every label known by ``t`` is counted for a transaction at
``t``" because the engine never counts a label whose known time is after the transaction's
time (labels given early wait in the state until their known time). No label ever reaches
a transaction at or before its own time, so the features cannot leak the label being
predicted.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from txfast.config import Settings, parse_duration_ms
from txfast.decode import DecodedBatch, Rejected
from txfast.features import FeatureEngine, engine_from_settings
from txfast.pipeline import build_decoder
from txfast.sources import ColumnMapping, FileSource, SourceBatch

__all__ = [
    "FeatureSet",
    "feed_history_labels",
    "iter_feature_batches",
    "replay_features",
    "write_features",
]


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """Features of a whole history.

    Attributes:
        transaction_id: Ids of the accepted events, in file order (one chunk per batch
            read: joining them would copy every id once more).
        ts_ms: Event times (epoch ms).
        card: ``hash_id(card_id)`` of each event (as the engine keys cards).
        X: Feature matrix (float32, one row per accepted event).
        label: 1/0 labels, -1 where the file has none.
        feature_names: Column names of ``X``.
        feature_version: Feature-set version of the engine that computed them.
        rejected: Rows that failed validation (never silently dropped).
    """

    transaction_id: pa.ChunkedArray
    ts_ms: np.ndarray
    card: np.ndarray
    X: np.ndarray
    label: np.ndarray
    feature_names: list[str]
    feature_version: str
    rejected: list[Rejected]


def feed_history_labels(
    engine: FeatureEngine, columns: dict[str, np.ndarray], label_delay_ms: int
) -> int:
    """Give the engine the labels of a decoded batch, known ``label_delay_ms`` after each.

    Rows without a label (``label < 0``) are skipped. Call it before processing the batch's
    transactions (see the module docstring for why that is leak-free).

    Args:
        engine: The replaying engine (nothing happens when its label features are off).
        columns: Decoded columns with ``ts_ms``, ``card``, ``merchant`` and ``label``.
        label_delay_ms: Delay between a transaction and the time its label is known (> 0).

    Returns:
        The number of labels given.

    Raises:
        ValueError: If ``label_delay_ms`` is not positive.
    """
    if label_delay_ms <= 0:
        raise ValueError(
            f"label_delay_ms must be positive (no label at its own time): {label_delay_ms}"
        )
    if not engine.labels_enabled:
        return 0
    label = np.asarray(columns["label"])
    known = label >= 0
    if not known.any():
        return 0
    ts = np.asarray(columns["ts_ms"], dtype=np.int64)[known]
    return engine.process_labels(
        known_ms=ts + np.int64(label_delay_ms),
        card=np.asarray(columns["card"])[known],
        merchant=np.asarray(columns["merchant"])[known],
        label=label[known].astype(np.uint8),
    )


_CHUNK_ROWS = 1 << 20
"""Rows read and decoded at once, before their features are computed (see _replayed)."""


def _label_delay_ms(settings: Settings, label_delay_ms: int | None) -> int:
    if label_delay_ms is None:
        return parse_duration_ms(settings.features.label_delay)
    return label_delay_ms


def _history_source(
    settings: Settings, path: str | Path, mapping: ColumnMapping | None
) -> FileSource:
    return FileSource(
        path,
        batch_size=settings.pipeline.history_batch_size,
        mapping=mapping,
        base_currency=settings.decoder.base_currency,
    )


def _replayed(
    settings: Settings,
    source: FileSource,
    engine: FeatureEngine,
    label_delay_ms: int | None,
) -> Iterator[tuple[DecodedBatch, list[Rejected]]]:
    """``(decoded batch, rejected)`` per batch of a history file.

    The batch's labels have been given to ``engine``; the caller computes its features
    (``engine.process``) before taking the next batch.
    """
    delay = _label_delay_ms(settings, label_delay_ms)
    decoder = build_decoder(settings)
    # Two phases in turn: read and decode about a million rows, then compute their features
    # (the engine takes both cores). Within the first phase one thread reads the next batch
    # while the caller's decodes the last one: DuckDB's streaming read keeps only about one
    # core busy, the decoder the rest. Reading throughout the feature phase as well measured
    # slower on two cores, each phase's threads taking turns with the other's (only the one
    # batch read ahead at the end of a phase overlaps it). Only the ids and the numeric
    # columns are used: the other strings are not copied.
    batches = iter(source)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="txfast-history-read") as reader:
            pending = reader.submit(next, batches, None)
            while True:
                chunk: list[tuple[SourceBatch, DecodedBatch]] = []
                rows = 0
                while rows < _CHUNK_ROWS and (batch := pending.result()) is not None:
                    pending = reader.submit(next, batches, None)  # read ahead while decoding
                    decoded = batch.decode(decoder, ids_only=True)
                    rows += decoded.size
                    chunk.append((batch, decoded))
                if not chunk:
                    return
                for batch, decoded in chunk:
                    rejected = [
                        Rejected(r.index + batch.position, r.reason, r.message, r.payload)
                        for r in decoded.rejected
                    ]
                    feed_history_labels(engine, decoded.columns, delay)
                    yield decoded, rejected
    finally:
        # The reader's connection, also when the caller stops early (after the read in
        # flight, which the executor waited for).
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def iter_feature_batches(
    settings: Settings,
    path: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    label_delay_ms: int | None = None,
) -> Iterator[tuple[pa.Table, list[Rejected]]]:
    """Yield ``(table, rejected)`` per batch.

    The table has ``transaction_id``, ``ts_ms``, ``label`` and one column per feature. With
    label features on, the labels of the history are fed as label events known
    ``label_delay_ms`` (default ``settings.features.label_delay``) after their transaction.
    """
    engine = engine_from_settings(settings.features)
    source = _history_source(settings, path, mapping)
    for decoded, rejected in _replayed(settings, source, engine, label_delay_ms):
        X = engine.process(**decoded.feature_inputs())
        c = decoded.columns
        cols: dict[str, pa.Array] = {
            "transaction_id": c["transaction_id"],
            "ts_ms": pa.array(c["ts_ms"]),
            "label": pa.array(c["label"]),
        }
        XT = np.ascontiguousarray(X.T)  # one transpose, then each column is contiguous
        for j, name in enumerate(engine.feature_names):
            cols[name] = pa.array(XT[j])
        yield pa.table(cols), rejected


def replay_features(
    settings: Settings,
    path: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    label_delay_ms: int | None = None,
) -> FeatureSet:
    """Compute the features of every event of a history file, in memory.

    Args:
        settings: Settings (decoder, features, batch size).
        path: History file (JSON lines, CSV or Parquet).
        mapping: Column mapping for other column names.
        label_delay_ms: With label features on, delay after which a transaction's label is
            known; default ``settings.features.label_delay``.

    Returns:
        The features of every accepted event and the rejected rows.
    """
    engine = engine_from_settings(settings.features)
    names = list(engine.feature_names)
    source = _history_source(settings, path, mapping)
    rows = source.row_count()
    ids: list[pa.Array] = []
    ts: list[np.ndarray] = [np.zeros(0, np.int64)]
    cards: list[np.ndarray] = [np.zeros(0, np.uint64)]
    labels: list[np.ndarray] = [np.zeros(0, np.int8)]
    # Features are written straight into one matrix (sized from the file when it says how
    # many rows it has, grown by doubling otherwise): no per-batch matrix, no final copy.
    X = np.empty((0, len(names)), np.float32)
    filled = 0
    rejected: list[Rejected] = []
    for decoded, r in _replayed(settings, source, engine, label_delay_ms):
        n = len(decoded)
        if filled + n > len(X):
            grown = np.empty(
                (max(filled + n, rows or 0, 2 * len(X), 65536), len(names)), np.float32
            )
            grown[:filled] = X[:filled]
            X = grown
        engine.process(**decoded.feature_inputs(), out=X[filled : filled + n])
        filled += n
        c = decoded.columns
        ids.append(c["transaction_id"])
        ts.append(c["ts_ms"])
        cards.append(c["card"])
        labels.append(c["label"])
        rejected.extend(r)
    # Release what rejected rows or doubling left unused when it is a sizeable share.
    X = X[:filled] if filled >= 0.9 * len(X) else X[:filled].copy()
    return FeatureSet(
        transaction_id=pa.chunked_array(ids, pa.large_string()),
        ts_ms=np.concatenate(ts),
        card=np.concatenate(cards),
        X=X,
        label=np.concatenate(labels),
        feature_names=names,
        feature_version=engine.feature_version,
        rejected=rejected,
    )


def write_features(
    settings: Settings,
    path: str | Path,
    out: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    label_delay_ms: int | None = None,
) -> tuple[int, list[Rejected]]:
    """Stream the features of a history file into a Parquet file; returns (rows, rejected)."""
    writer: pq.ParquetWriter | None = None
    rows = 0
    rejected: list[Rejected] = []
    try:
        for table, r in iter_feature_batches(
            settings, path, mapping, label_delay_ms=label_delay_ms
        ):
            rejected.extend(r)
            if writer is None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(str(out), table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows, rejected
