"""The embedded DuckDB store: bulk appends from Arrow, idempotent by transaction id."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from txfast.exceptions import StoreError
from txfast.store.base import ScoredBatch, Store

__all__ = ["SCHEMA_VERSION", "DuckDBStore"]

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS transactions (
            transaction_id VARCHAR PRIMARY KEY,
            ts TIMESTAMP NOT NULL,
            card_id VARCHAR NOT NULL,
            user_id VARCHAR,
            merchant_id VARCHAR NOT NULL,
            merchant_category VARCHAR,
            country VARCHAR,
            channel VARCHAR,
            amount DOUBLE NOT NULL,
            currency VARCHAR NOT NULL,
            amount_base DOUBLE NOT NULL,
            score FLOAT NOT NULL,
            is_anomaly BOOLEAN NOT NULL,
            risk_level VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            model_version VARCHAR NOT NULL,
            label TINYINT,
            scored_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS alerts (
            transaction_id VARCHAR PRIMARY KEY,
            ts TIMESTAMP NOT NULL,
            card_id VARCHAR NOT NULL,
            user_id VARCHAR,
            merchant_id VARCHAR NOT NULL,
            merchant_category VARCHAR,
            country VARCHAR,
            channel VARCHAR,
            amount DOUBLE NOT NULL,
            currency VARCHAR NOT NULL,
            amount_base DOUBLE NOT NULL,
            score FLOAT NOT NULL,
            is_anomaly BOOLEAN NOT NULL,
            risk_level VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            model_version VARCHAR NOT NULL,
            rules VARCHAR[] NOT NULL,
            feature_version VARCHAR NOT NULL,
            features FLOAT[],
            explanation VARCHAR,
            status VARCHAR NOT NULL DEFAULT 'open',
            created_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS alerts_card ON alerts (card_id)",
        "CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts)",
        """CREATE TABLE IF NOT EXISTS dead_letters (
            source VARCHAR NOT NULL,
            position BIGINT NOT NULL,
            reason VARCHAR NOT NULL,
            message VARCHAR NOT NULL,
            payload BLOB NOT NULL,
            received_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (source, position)
        )""",
    ],
}


class DuckDBStore(Store):
    """Store in one DuckDB file (``:memory:`` for tests).

    Args:
        path: Database file; parent directories are created.
        read_only: Open without write access (for concurrent readers of a finished run).
    """

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.url = f"duckdb:{path}"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(path, read_only=read_only)
        except duckdb.Error as e:
            raise StoreError(f"cannot open DuckDB store {path}: {e}") from e
        self._lock = threading.Lock()
        if not read_only:
            self._migrate()

    def _migrate(self) -> None:
        con = self._con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
        )
        row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this txfast ({SCHEMA_VERSION})"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            con.execute("BEGIN")
            for stmt in _MIGRATIONS[version]:
                con.execute(stmt)
            con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])
            con.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """The applied schema version."""
        row = self._con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch in one transaction (see :meth:`Store.write_batch`)."""
        with self._lock:
            con = self._con
            try:
                con.execute("BEGIN")
                if batch.alerts.num_rows:
                    con.register("_alerts_batch", batch.alerts)
                    con.execute(
                        "INSERT INTO alerts BY NAME SELECT * FROM _alerts_batch "
                        "ON CONFLICT DO NOTHING"
                    )
                    con.unregister("_alerts_batch")
                tx = batch.transactions
                if history == "alerts":
                    tx = tx.filter(pa.compute.not_equal(tx["action"], "approve"))
                if history != "none" and tx.num_rows:
                    con.register("_tx_batch", tx)
                    con.execute(
                        "INSERT INTO transactions BY NAME SELECT * FROM _tx_batch "
                        "ON CONFLICT DO NOTHING"
                    )
                    con.unregister("_tx_batch")
                if batch.dead_letters:
                    dl = pa.table(
                        {
                            "source": [r.source or batch.source for r in batch.dead_letters],
                            "position": [r.index for r in batch.dead_letters],
                            "reason": [r.reason for r in batch.dead_letters],
                            "message": [r.message for r in batch.dead_letters],
                            "payload": pa.array(
                                [r.payload for r in batch.dead_letters], type=pa.binary()
                            ),
                        }
                    )
                    con.register("_dl_batch", dl)
                    con.execute(
                        "INSERT INTO dead_letters BY NAME SELECT * FROM _dl_batch "
                        "ON CONFLICT DO NOTHING"
                    )
                    con.unregister("_dl_batch")
                con.execute("COMMIT")
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                raise StoreError(f"writing a batch to {self.url} failed: {e}") from e

    def count(self, table: str) -> int:
        """Rows in ``alerts``, ``transactions`` or ``dead_letters``."""
        if table not in ("alerts", "transactions", "dead_letters"):
            raise StoreError(f"unknown table {table!r}")
        with self._lock:
            row = self._con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL and return all rows."""
        with self._lock:
            return self._con.execute(sql, params or []).fetchall()

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:  # already closed
                pass
