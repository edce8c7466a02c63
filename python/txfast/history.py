"""Replaying a history file through the native feature engine (training and ``txfast features``).

The same :class:`txfast.features.FeatureEngine` that scores online computes the features
here, event by event in file order, so training and serving cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from txfast.config import Settings
from txfast.decode import Rejected
from txfast.pipeline import build_decoder, build_engine
from txfast.sources import ColumnMapping, FileSource

__all__ = ["FeatureSet", "iter_feature_batches", "replay_features", "write_features"]


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """Features of a whole history.

    Attributes:
        transaction_id: Ids of the accepted events, in file order.
        ts_ms: Event times (epoch ms).
        X: Feature matrix (float32, one row per accepted event).
        label: 1/0 labels, -1 where the file has none.
        feature_names: Column names of ``X``.
        feature_version: Feature-set version of the engine that computed them.
        rejected: Rows that failed validation (never silently dropped).
    """

    transaction_id: pa.Array
    ts_ms: np.ndarray
    X: np.ndarray
    label: np.ndarray
    feature_names: list[str]
    feature_version: str
    rejected: list[Rejected]


def iter_feature_batches(
    settings: Settings, path: str | Path, mapping: ColumnMapping | None = None
) -> Iterator[tuple[pa.Table, list[Rejected]]]:
    """Yield ``(table, rejected)`` per batch.

    The table has ``transaction_id``, ``ts_ms``, ``label`` and one column per feature.
    """
    source = FileSource(path, batch_size=settings.pipeline.batch_size, mapping=mapping)
    decoder = build_decoder(settings)
    engine = build_engine(settings)
    names = list(engine.feature_names)
    for batch in source:
        decoded = batch.decode(decoder)
        rejected = [
            Rejected(r.index + batch.position, r.reason, r.message, r.payload)
            for r in decoded.rejected
        ]
        c = decoded.columns
        X = engine.process(**decoded.feature_inputs())
        cols: dict[str, pa.Array] = {
            "transaction_id": c["transaction_id"],
            "ts_ms": pa.array(c["ts_ms"]),
            "label": pa.array(c["label"]),
        }
        for j, name in enumerate(names):
            cols[name] = pa.array(X[:, j])
        yield pa.table(cols), rejected


def replay_features(
    settings: Settings, path: str | Path, mapping: ColumnMapping | None = None
) -> FeatureSet:
    """Compute the features of every event of a history file, in memory."""
    engine = build_engine(settings)
    names = list(engine.feature_names)
    tables, rejected = [], []
    for t, r in iter_feature_batches(settings, path, mapping):
        tables.append(t)
        rejected.extend(r)
    if tables:
        table = pa.concat_tables(tables)
    else:
        table = pa.table(
            {
                "transaction_id": pa.array([], pa.large_string()),
                "ts_ms": pa.array([], pa.int64()),
                "label": pa.array([], pa.int8()),
                **{n: pa.array([], pa.float32()) for n in names},
            }
        )
    X = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, n in enumerate(names):
        X[:, j] = table[n].to_numpy()
    return FeatureSet(
        transaction_id=table["transaction_id"].combine_chunks(),
        ts_ms=table["ts_ms"].to_numpy(),
        X=X,
        label=table["label"].to_numpy(),
        feature_names=names,
        feature_version=engine.feature_version,
        rejected=rejected,
    )


def write_features(
    settings: Settings, path: str | Path, out: str | Path, mapping: ColumnMapping | None = None
) -> tuple[int, list[Rejected]]:
    """Stream the features of a history file into a Parquet file; returns (rows, rejected)."""
    writer: pq.ParquetWriter | None = None
    rows = 0
    rejected: list[Rejected] = []
    try:
        for table, r in iter_feature_batches(settings, path, mapping):
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
