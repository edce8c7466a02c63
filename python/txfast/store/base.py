"""The store interface used by the pipeline, the API and training."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from txfast.decode import Rejected
from txfast.exceptions import StoreError

__all__ = ["ScoredBatch", "Store", "open_store"]


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """One batch ready to be stored.

    Attributes:
        transactions: One row per scored transaction (schema: :data:`TRANSACTION_SCHEMA`).
        alerts: The rows that became alerts, with ``rules``, ``features`` and ``explanation``.
        dead_letters: Rejected payloads.
        source: Where the batch came from (``file:PATH``, ``simulate:SEED``, ``kafka:TOPIC``…);
            with each dead letter's position it forms the dead letter's idempotency key.
    """

    transactions: pa.Table
    alerts: pa.Table
    dead_letters: list[Rejected]
    source: str


class Store(abc.ABC):
    """Durable storage of scored transactions, alerts and dead letters.

    Writes are idempotent: alerts and transactions by ``transaction_id``, dead letters by
    ``(source, position)``; writing the same batch twice stores it once, and the first write
    wins (a replay never overwrites an analyst's status).
    """

    url: str

    @abc.abstractmethod
    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch atomically (one transaction). Called once per pipeline batch.

        Args:
            batch: The batch.
            history: ``all`` stores every transaction, ``alerts`` only alerted ones,
                ``none`` no transaction history.
        """

    @abc.abstractmethod
    def count(self, table: str) -> int:
        """Rows in ``alerts``, ``transactions`` or ``dead_letters``."""

    @abc.abstractmethod
    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (for the CLI and tests)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and close."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str, **options: Any) -> Store:
    """Open a store from its URL.

    Args:
        url: ``duckdb:PATH`` (``duckdb::memory:`` for a throw-away store), or a PostgreSQL URL
            ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?PARAMS]`` (``postgres://`` also
            accepted).
        **options: Backend options (see :class:`~txfast.store.duckdb_store.DuckDBStore` and
            :class:`~txfast.store.postgres_store.PostgresStore`).

    Raises:
        StoreError: For unknown schemes or when the store cannot be opened.
    """
    if url.startswith("duckdb:"):
        from txfast.store.duckdb_store import DuckDBStore

        return DuckDBStore(url[len("duckdb:") :], **options)
    if url.startswith(("postgresql://", "postgres://")):
        from txfast.store.postgres_store import PostgresStore

        return PostgresStore(url, **options)
    raise StoreError(
        f"unsupported store URL {url!r}; use duckdb:PATH or postgresql://USER@HOST:PORT/DBNAME"
    )
