"""The PostgreSQL store: bulk COPY, idempotent by transaction id, versioned migrations.

Each batch is written in one transaction. The common case (nothing in the batch stored
before) streams the batch's columns, rendered to CSV by Arrow, with ``COPY … FROM STDIN``
straight into ``transactions`` and ``alerts``; their primary keys make a replayed row fail
the COPY with a unique violation, and the batch is then written again the careful way:
``COPY`` into per-connection temporary staging tables and ``INSERT … SELECT … ON CONFLICT DO
NOTHING RETURNING transaction_id`` (so a replayed batch stores nothing twice and never
overwrites an analyst's changes). Either way the statistics rollups are incremented, in the
same transaction, from the rows actually inserted.

Timestamps are ``TIMESTAMP`` (without time zone) holding UTC, as in the DuckDB store, so both
backends return the same Python values; sessions run with ``TimeZone = UTC``. PostgreSQL text
cannot hold the NUL character: a NUL inside a string is stored as U+FFFD.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from txfast.exceptions import StoreError
from txfast.store._sql import (
    ROLLUP_BACKFILL,
    ROLLUPS,
    Executor,
    SqlStore,
    alert_json_sql,
    fold_sql,
    history_rows,
    model_versions_of,
    rollup_columns,
    rollup_ddl,
    rollups,
    unique_ids,
)
from txfast.store.base import PruneResult, ScoredBatch, to_utc_naive

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

TABLES = ("alerts", "transactions", "dead_letters")

# Serialises concurrent migrations of one database (advisory locks are per database).
_MIGRATION_LOCK = 0x7478_6661_7374  # "txfast"

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE transactions (
            transaction_id TEXT PRIMARY KEY,
            ts TIMESTAMP NOT NULL,
            card_id TEXT NOT NULL,
            user_id TEXT,
            merchant_id TEXT NOT NULL,
            merchant_category TEXT,
            country TEXT,
            channel TEXT,
            amount DOUBLE PRECISION NOT NULL,
            currency TEXT NOT NULL,
            amount_base DOUBLE PRECISION NOT NULL,
            score REAL NOT NULL,
            is_anomaly BOOLEAN NOT NULL,
            risk_level TEXT NOT NULL,
            action TEXT NOT NULL,
            model_version TEXT NOT NULL,
            label SMALLINT,
            scored_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE alerts (
            transaction_id TEXT PRIMARY KEY,
            ts TIMESTAMP NOT NULL,
            card_id TEXT NOT NULL,
            user_id TEXT,
            merchant_id TEXT NOT NULL,
            merchant_category TEXT,
            country TEXT,
            channel TEXT,
            amount DOUBLE PRECISION NOT NULL,
            currency TEXT NOT NULL,
            amount_base DOUBLE PRECISION NOT NULL,
            score REAL NOT NULL,
            is_anomaly BOOLEAN NOT NULL,
            risk_level TEXT NOT NULL,
            action TEXT NOT NULL,
            model_version TEXT NOT NULL,
            rules TEXT[] NOT NULL,
            feature_version TEXT NOT NULL,
            features REAL[],
            explanation TEXT,
            status TEXT NOT NULL DEFAULT 'open',
            created_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX alerts_card ON alerts (card_id, ts)",
        "CREATE INDEX alerts_ts ON alerts (ts)",
        "CREATE INDEX alerts_risk_ts ON alerts (risk_level, ts)",
        """CREATE TABLE dead_letters (
            source TEXT NOT NULL,
            position BIGINT NOT NULL,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            payload BYTEA NOT NULL,
            received_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
            PRIMARY KEY (source, position)
        )""",
    ],
}
_MIGRATIONS[2] = [
    "ALTER TABLE alerts ADD COLUMN label SMALLINT, ADD COLUMN labelled_at TIMESTAMP",
    # Indexes serving the alert list. Newest-first pages walk (ts, transaction_id) backwards;
    # the selective filters (card, user, merchant) have their own index ending with that
    # keyset. Low-cardinality filters (risk level, action, country, open status) are applied
    # while walking the ts index: a page of them is found after a few hundred rows, and each
    # index costs every alert insert. Analyst statuses and labels are rare: partial indexes.
    "DROP INDEX alerts_card",
    "DROP INDEX alerts_ts",
    "DROP INDEX alerts_risk_ts",
    "CREATE INDEX alerts_ts ON alerts (ts, transaction_id)",
    "CREATE INDEX alerts_card_ts ON alerts (card_id, ts, transaction_id)",
    "CREATE INDEX alerts_user_ts ON alerts (user_id, ts, transaction_id)",
    "CREATE INDEX alerts_merchant_ts ON alerts (merchant_id, ts, transaction_id)",
    "CREATE INDEX alerts_reviewed ON alerts (status, ts, transaction_id) WHERE status <> 'open'",
    "CREATE INDEX alerts_labelled ON alerts (ts) WHERE label IS NOT NULL",
    # Retention deletes by time: a BRIN index costs almost nothing to maintain.
    "CREATE INDEX transactions_ts_brin ON transactions USING brin (ts)",
    """CREATE TABLE labels (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        transaction_id TEXT NOT NULL,
        ts TIMESTAMP NOT NULL,
        card_id TEXT NOT NULL,
        merchant_id TEXT NOT NULL,
        label TEXT NOT NULL CHECK (label IN ('fraud', 'legit')),
        analyst TEXT NOT NULL,
        note TEXT,
        labelled_at TIMESTAMP NOT NULL
    )""",
    "CREATE INDEX labels_transaction ON labels (transaction_id)",
    "CREATE INDEX labels_ts ON labels (ts)",
    """CREATE TABLE audit_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        logged_at TIMESTAMP NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        details JSONB NOT NULL
    )""",
    "CREATE INDEX audit_log_target ON audit_log (target, id)",
    """CREATE FUNCTION txfast_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
    END
    $$""",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION txfast_audit_log_append_only()""",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION txfast_audit_log_append_only()""",
    """CREATE TABLE model_versions (
        version TEXT PRIMARY KEY,
        metadata JSONB NOT NULL,
        first_seen TIMESTAMP NOT NULL
    )""",
    """INSERT INTO model_versions (version, metadata, first_seen)
    SELECT model_version, '{}', min(seen) FROM (
        SELECT model_version, scored_at AS seen FROM transactions
        UNION ALL SELECT model_version, created_at FROM alerts) s
    GROUP BY model_version""",
    *rollup_ddl("DOUBLE PRECISION", "WITH (fillfactor = 70)"),
    # Top merchants: rank the merchant-days with alerts, then read the winners' days.
    "CREATE INDEX stats_merchant_daily_alerting ON stats_merchant_daily (day) "
    "INCLUDE (merchant_id, alerts) WHERE alerts > 0",
    "CREATE INDEX stats_merchant_daily_merchant ON stats_merchant_daily (merchant_id, day)",
    *ROLLUP_BACKFILL,
]
_MIGRATIONS[3] = [
    # A shadow (challenger) model's score, next to the champion's; NULL when none ran. Adding
    # nullable columns without a default rewrites nothing.
    "ALTER TABLE transactions ADD COLUMN shadow_score REAL, ADD COLUMN shadow_model_version TEXT",
    "ALTER TABLE alerts ADD COLUMN shadow_score REAL, ADD COLUMN shadow_model_version TEXT",
    # The live feed (GET /alerts/stream) polls the alerts created since the last poll.
    "CREATE INDEX alerts_created ON alerts (created_at)",
    # API keys: only the token's SHA-256 is stored; one active key per name.
    """CREATE TABLE api_keys (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
        token_sha256 TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at TIMESTAMP
    )""",
    "CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
]

_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False)
_NUL_REPLACEMENT = "\ufffd".encode()

_PRUNED = {
    "transactions": (
        "ts < %s AND NOT EXISTS (SELECT 1 FROM labels l "
        "WHERE l.transaction_id = transactions.transaction_id)"
    ),
    "alerts": (
        "ts < %s AND NOT EXISTS (SELECT 1 FROM labels l "
        "WHERE l.transaction_id = alerts.transaction_id)"
    ),
    "dead_letters": "received_at < %s",
}
"""What :meth:`PostgresStore.prune` removes from each table (``%s``: the cutoff)."""


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database, through a connection pool (thread-safe).

    Args:
        url: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?PARAMS]`` (libpq URL; any
            libpq parameter such as ``sslmode`` may be given as a query parameter).
        read_only: Do not migrate nor write; sessions are read-only.
        migrate: Apply pending schema migrations on open (default). When false, a database
            of an older schema is refused (run ``txfast db upgrade``).
        min_size: Connections kept open.
        max_size: Most connections at once (the pipeline writes on one, a background fold of
            the statistics deltas on another; readers use the rest).
        timeout: Seconds to wait for a free or re-established connection before an operation
            fails with :class:`StoreError`.
        connect_timeout: Seconds allowed to establish one connection.
        application_name: Reported in ``pg_stat_activity``.
        compact_every: Fold the statistics deltas into the rollups every this many batches,
            in a background thread (the batch does not wait).

    Raises:
        StoreError: When the server cannot be reached, the schema is newer than this txfast
            (or older and ``migrate`` is false), or the migration fails.
    """

    _JSON_TYPE = "JSONB"

    _EPOCH_US = "CAST(extract(epoch FROM {}) * 1000000 AS BIGINT)"

    _ALERT_JSON = alert_json_sql(
        build="json_build_object",
        time=lambda c: (
            f"to_char({c}, CASE WHEN mod(extract(microseconds FROM {c})::bigint, 1000000) = 0 "
            """THEN 'YYYY-MM-DD"T"HH24:MI:SS"Z"' ELSE 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' END)"""
        ),
        f64="DOUBLE PRECISION",
        no_rules="'{}'::TEXT[]",
        text="TEXT",
    )

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        migrate: bool = True,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        application_name: str = "txfast",
        compact_every: int = 64,
    ) -> None:
        self.url = _redact(url)
        self.read_only = read_only
        self._conninfo = url
        self._kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": application_name,
        }
        self._closed = False
        self._seen_versions = set()
        self._compact_every = max(1, compact_every)
        self._uncompacted = 0
        self.applied_migrations: list[int] = []
        """Versions migrated when this store was opened."""
        try:
            with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                if migrate and not read_only:
                    self.applied_migrations = self._migrate(conn)
                else:
                    self._check_version(_current_version(conn), writable=False)
        except psycopg.Error as e:
            raise StoreError(f"cannot open PostgreSQL store {self.url}: {_msg(e)}") from e
        self._pool_options = {"min_size": min_size, "max_size": max(max_size, min_size)}
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._pool = self._open_pool()

    def _open_pool(self) -> ConnectionPool:
        options: dict[str, Any] = dict(self._pool_options)
        if hasattr(ConnectionPool, "check_connection"):  # psycopg_pool >= 3.2
            # A connection broken by a server restart is replaced before use.
            options["check"] = ConnectionPool.check_connection
        pool = ConnectionPool(
            self._conninfo,
            kwargs=self._kwargs,
            timeout=self._timeout,
            configure=self._configure,
            open=False,
            name="txfast-store",
            **options,
        )
        try:
            pool.open(wait=True, timeout=max(self._timeout, self._connect_timeout))
        except psycopg.Error as e:
            pool.close()
            raise StoreError(f"cannot open PostgreSQL store {self.url}: {_msg(e)}") from e
        return pool

    # -- schema -------------------------------------------------------------------------------

    def _check_version(self, current: int, *, writable: bool) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this txfast ({SCHEMA_VERSION})"
            )
        if current < SCHEMA_VERSION and not writable:
            hint = (
                "open it once for writing to migrate"
                if self.read_only
                else f"run `txfast db upgrade --store {self.url}`"
            )
            raise StoreError(
                f"store {self.url} has schema version {current}, this txfast needs "
                f"{SCHEMA_VERSION}; {hint}"
            )

    def _migrate(self, conn: psycopg.Connection) -> list[int]:
        applied = []
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, "
                "applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))"
            )
            current = _current_version(conn)
            self._check_version(current, writable=True)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[version]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [version])
                if version >= 2:
                    conn.execute(
                        "INSERT INTO audit_log (logged_at, actor, action, target, details) VALUES "
                        "(now() AT TIME ZONE 'UTC', 'txfast', 'schema.migrate', %s, %s::jsonb)",
                        [str(version), json.dumps({"from": version - 1})],
                    )
                applied.append(version)
        return applied

    def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction (see :meth:`Store.migrate`)."""
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        try:
            with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                applied = self._migrate(conn)
        except psycopg.Error as e:
            raise StoreError(f"migrating {self.url} failed: {_msg(e)}") from e
        if applied:
            # Pooled connections hold staging tables of the old schema.
            self._pool.close()
            self._pool = self._open_pool()
        return applied

    def _configure(self, conn: psycopg.Connection) -> None:
        """Per-connection setup: UTC session, read-only mode or the staging tables."""
        conn.execute("SET TIME ZONE 'UTC'")
        # Floats as text (the live feed's JSON) in their shortest exact form, whatever the
        # server's or role's default (0 gives 15 significant digits).
        conn.execute("SET extra_float_digits = 3")
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        else:
            for table in TABLES:
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                        "ON COMMIT DELETE ROWS"
                    ).format(sql.Identifier(_stage(table)), sql.Identifier(table))
                )
        conn.commit()

    @property
    def schema_version(self) -> int:
        """The applied schema version."""
        try:
            with self._pool.connection() as conn:
                return _current_version(conn)
        except psycopg.Error as e:
            raise StoreError(
                f"reading the schema version of {self.url} failed: {self._why(e)}"
            ) from e

    # -- connections ----------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.query(sql, list(params) if params is not None else None)

    @contextmanager
    def _writing(
        self, what: str = "writing to", *, timeout: float | None = None
    ) -> Iterator[Executor]:
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        try:
            with (
                self._pool.connection(timeout=timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                yield _executor(cur)
        except psycopg.Error as e:
            raise StoreError(f"{what} {self.url} failed: {self._why(e)}") from e

    # -- writes -------------------------------------------------------------------------------

    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch in one transaction (see :meth:`Store.write_batch`)."""
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        tx = history_rows(batch, history)
        tables: dict[str, pa.Table] = {}
        if tx is not None:
            tables["transactions"] = unique_ids(tx)
        if batch.alerts.num_rows:
            tables["alerts"] = unique_ids(batch.alerts)
        if batch.dead_letters:
            tables["dead_letters"] = _dead_letters_table(batch)
        if not tables:
            return
        parts = _Encoded(tables, self.url)
        try:
            try:
                versions = self._write(batch, parts, replay=False)
            except psycopg.errors.UniqueViolation:
                # Some rows were stored before (a replay): write the batch the careful way.
                versions = self._write(batch, parts, replay=True)
        except psycopg.Error as e:
            raise StoreError(f"writing a batch to {self.url} failed: {self._why(e)}") from e
        self._seen_versions |= versions
        self._uncompacted += 1
        if self._uncompacted >= self._compact_every:
            self._compact_later()

    def _compact_later(self) -> None:
        """Fold the deltas in the background, on a pooled connection of its own.

        The batch that made the fold due does not wait for it (each fold moves the deltas
        in one statement, safe beside concurrent writers: see :meth:`compact`). While a fold
        runs, or after one failed, the next batch tries again.
        """
        if not self._fold_idle():
            return
        # Counted on this (the writer's) thread only: the batches written during the fold
        # count towards the next one.
        self._uncompacted = 0
        if not self._start_fold(self._compact_or_retry):
            self._uncompacted = self._compact_every  # close() folds them

    def _compact_or_retry(self) -> None:
        try:
            self._fold_deltas(timeout=5.0)
        except Exception as e:  # the batches are stored; fold at a later batch
            self._uncompacted = max(self._uncompacted, self._compact_every)
            self._fold_done(e)
        else:
            self._fold_done(None)

    def _write(self, batch: ScoredBatch, parts: _Encoded, *, replay: bool) -> set[str]:
        """One attempt at writing a batch; returns the model versions it recorded.

        The first attempt COPYs straight into the tables (a stored row makes it fail with a
        unique violation); while the server ingests the first table, the client encodes the
        rest. A replay stages the rows and keeps the ones ``ON CONFLICT DO NOTHING`` inserted.
        """
        tables = parts.tables
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            new: dict[str, pa.Table | None] = {"transactions": None, "alerts": None}
            deltas: dict[str, bytes] | None = None
            for table in ("transactions", "alerts"):
                if table not in tables:
                    continue
                rows = tables[table]
                cols = sql.SQL(", ").join(map(sql.Identifier, rows.column_names))
                if not replay:
                    direct = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)")
                    with cur.copy(direct.format(sql.Identifier(table), cols)) as cp:
                        cp.write(parts.csv(table))
                        if deltas is None:
                            deltas = parts.rollups(tables.get("transactions"), tables.get("alerts"))
                            for other in ("alerts", "dead_letters"):
                                if other in tables:
                                    parts.csv(other)
                    new[table] = rows
                    continue
                stage = sql.Identifier(_stage(table))
                copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage, cols)
                with cur.copy(copy) as cp:
                    cp.write(parts.csv(table))
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING "
                        "RETURNING transaction_id"
                    ).format(sql.Identifier(table), cols, cols, stage)
                )
                inserted = pa.array([r[0] for r in cur.fetchall()], pa.string())
                new[table] = rows.filter(pc.is_in(rows["transaction_id"], value_set=inserted))
            if deltas is None:
                deltas = parts.rollups(new["transactions"], new["alerts"])
            for table, data in deltas.items():
                delta = f"COPY {table}_delta ({rollup_columns(table)}) FROM STDIN (FORMAT csv)"
                with cur.copy(delta) as cp:
                    cp.write(data)
            if "dead_letters" in tables:
                dl = tables["dead_letters"]
                cols = sql.SQL(", ").join(map(sql.Identifier, dl.column_names))
                stage = sql.Identifier(_stage("dead_letters"))
                with cur.copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage, cols)
                ) as cp:
                    cp.write(parts.csv("dead_letters"))
                cur.execute(
                    sql.SQL(
                        "INSERT INTO dead_letters ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING"
                    ).format(cols, cols, stage)
                )
            return self._record_versions(
                _executor(cur), batch, model_versions_of(new["transactions"], new["alerts"])
            )

    def compact(self, *, timeout: float | None = None) -> None:
        """Fold the statistics deltas into the rollup tables (one statement per table).

        Each fold deletes the deltas and adds exactly the deleted rows, so concurrent
        writers (several scorers on one database) never lose nor double a count.

        Args:
            timeout: Seconds to wait for a connection (default: the pool's timeout).
        """
        self._fold_deltas(timeout=timeout)
        self._uncompacted = 0

    def _fold_deltas(self, *, timeout: float | None = None) -> None:
        with self._writing("compacting the statistics of", timeout=timeout) as ex:
            for table in ROLLUPS:
                moved = f"WITH moved AS (DELETE FROM {table}_delta RETURNING *) "
                ex(moved + fold_sql(table, "moved"))

    # -- retention ----------------------------------------------------------------------------

    def prune(
        self,
        older_than: datetime,
        *,
        archive_dir: str | Path | None = None,
        actor: str = "txfast",
    ) -> PruneResult:
        """Delete (and archive) what is older than a cutoff (see :meth:`Store.prune`).

        Runs in one ``REPEATABLE READ`` transaction: the archive and the delete see the same
        snapshot, so a row committed meanwhile is neither archived nor deleted.
        """
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        cutoff = to_utc_naive(older_than)
        assert cutoff is not None
        run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        written: list[Path] = []
        counts: dict[str, int] = {}
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute(
                    "SELECT count(*) FROM transactions t WHERE ts < %s AND EXISTS "
                    "(SELECT 1 FROM labels l WHERE l.transaction_id = t.transaction_id)",
                    [cutoff],
                )
                kept = int(_one(cur))
                for table, where in _PRUNED.items():
                    cur.execute(f"SELECT count(*) FROM {table} WHERE {where}", [cutoff])
                    n = counts[table] = int(_one(cur))
                    if n and archive_dir is not None:
                        path = Path(archive_dir) / table / f"{table}-{run}.parquet"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        written.append(path)
                        _archive(cur, table, where, cutoff, path)
                    if n:
                        cur.execute(f"DELETE FROM {table} WHERE {where}", [cutoff])
                result = PruneResult(
                    cutoff=cutoff.replace(tzinfo=UTC),
                    transactions=counts["transactions"],
                    alerts=counts["alerts"],
                    dead_letters=counts["dead_letters"],
                    kept_labelled=kept,
                    archive=[str(p) for p in written],
                )
                self._audit(
                    _executor(cur), actor, "retention.prune", None, msgspec.to_builtins(result)
                )
        except BaseException as e:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(e, psycopg.Error):
                raise StoreError(f"pruning {self.url} failed: {self._why(e)}") from e
            raise
        return result

    # -- reads --------------------------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL and return all rows (none for statements that return none).

        ``?`` placeholders (the DuckDB style used by callers) are accepted as well as
        ``%s``; the statement runs in its own transaction, committed on success.
        """
        query, args = _placeholders(sql, params)
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as e:
            raise StoreError(f"query on {self.url} failed: {self._why(e)}") from e

    def _why(self, e: psycopg.Error) -> str:
        """The error's text; for a pool timeout, also why no connection could be made."""
        text = _msg(e)
        if isinstance(e, PoolTimeout) and not self._closed:
            try:
                with psycopg.connect(self._conninfo, **{**self._kwargs, "connect_timeout": 2}):
                    pass
            except psycopg.Error as probe:
                text += f" ({_msg(probe)})"
        return text

    def close(self) -> None:
        """Fold pending statistics deltas and close the pool (idempotent)."""
        self._stop_folds()
        if self._uncompacted and not self._closed and not self.read_only:
            try:
                self.compact(timeout=5.0)
            except StoreError as e:  # the deltas stay; readers sum them
                log.warning("%s", e)
        if not self._closed:
            self._closed = True
            self._pool.close()


class _Encoded:
    """A batch's tables and their CSV renderings, encoded once, on first use."""

    def __init__(self, tables: dict[str, pa.Table], url: str) -> None:
        self.tables = tables
        self._url = url
        self._csv: dict[str, bytes] = {}

    def csv(self, name: str) -> bytes:
        if name not in self._csv:
            self._csv[name] = self._encode(self.tables[name])
        return self._csv[name]

    def rollups(self, tx: pa.Table | None, alerts: pa.Table | None) -> dict[str, bytes]:
        """The CSV of the rollup increments of these inserted rows."""
        return {t: self._encode(agg) for t, agg in rollups(tx, alerts).items()}

    def _encode(self, table: pa.Table) -> bytes:
        try:
            return _to_csv(table)
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise StoreError(f"cannot encode a batch for {self._url}: {e}") from e


# -- archive ----------------------------------------------------------------------------------

_ARCHIVE_CHUNK = 50_000


def _archive(cur: psycopg.Cursor, table: str, where: str, cutoff: Any, path: Path) -> None:
    """Write the rows of ``table`` matching ``where`` to a Parquet file (fsynced)."""
    if table == "transactions":
        # The big one: CSV out of the server, parsed column-wise by Arrow.
        cols = list(_TX_ARCHIVE_SCHEMA.names)
        buf = io.BytesIO()
        select = f"SELECT {', '.join(cols)} FROM transactions WHERE {where} ORDER BY ts"
        copy = f"COPY ({select}) TO STDOUT (FORMAT csv, FORCE_QUOTE *)"
        with cur.copy(copy, [cutoff]) as cp:
            for chunk in cp:
                buf.write(chunk)
        buf.seek(0)
        data = pa_csv.read_csv(
            buf,
            read_options=pa_csv.ReadOptions(column_names=cols),
            convert_options=pa_csv.ConvertOptions(
                column_types=_TX_ARCHIVE_SCHEMA,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        pq.write_table(data.cast(_TX_ARCHIVE_SCHEMA), path)
    else:
        # Alerts (arrays) and dead letters (bytes): fewer rows, fetched in chunks.
        cur.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY 1", [cutoff])
        assert cur.description is not None
        names = [d.name for d in cur.description]
        schema = pa.schema([pa.field(n, _ARCHIVE_TYPES.get(n, pa.string())) for n in names])
        with pq.ParquetWriter(path, schema) as writer:
            while rows := cur.fetchmany(_ARCHIVE_CHUNK):
                columns = zip(*rows, strict=True)
                writer.write_table(
                    pa.table(
                        [pa.array(list(c), f.type) for c, f in zip(columns, schema, strict=True)],
                        schema=schema,
                    )
                )
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TX_ARCHIVE_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("card_id", pa.string()),
        ("user_id", pa.string()),
        ("merchant_id", pa.string()),
        ("merchant_category", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("amount_base", pa.float64()),
        ("score", pa.float32()),
        ("is_anomaly", pa.bool_()),
        ("risk_level", pa.string()),
        ("action", pa.string()),
        ("model_version", pa.string()),
        ("label", pa.int8()),
        ("scored_at", pa.timestamp("us")),
        ("shadow_score", pa.float32()),
        ("shadow_model_version", pa.string()),
    ]
)
"""Archived transactions: the same types as the DuckDB store's Parquet archive."""


_ARCHIVE_TYPES = {
    **{f.name: f.type for f in _TX_ARCHIVE_SCHEMA},
    "rules": pa.list_(pa.string()),
    "features": pa.list_(pa.float32()),
    "created_at": pa.timestamp("us"),
    "labelled_at": pa.timestamp("us"),
    "position": pa.int64(),
    "payload": pa.binary(),
    "received_at": pa.timestamp("us"),
}
"""Archive types of the alerts' and dead letters' columns (text for the others)."""


def _one(cur: psycopg.Cursor) -> Any:
    row = cur.fetchone()
    return row[0] if row else None


def _executor(cur: psycopg.Cursor) -> Executor:
    """An executor running ``?``-style statements on ``cur``."""

    def ex(statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        query, args = _placeholders(statement, list(params) if params is not None else None)
        cur.execute(query, args)
        return cur.fetchall() if cur.description is not None else []

    return ex


# -- helpers ----------------------------------------------------------------------------------


def _stage(table: str) -> str:
    return f"txfast_stage_{table}"


def _current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def _redact(url: str) -> str:
    """The URL without its password (for messages and run summaries)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}")
    if "password=" in parts.query:
        parts = parts._replace(query=re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query))
    return urlunsplit(parts)


def _msg(e: BaseException) -> str:
    """One-line error text, with the server's detail when there is one."""
    text = " ".join(str(e).split()) or type(e).__name__
    diag = getattr(e, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    return f"{text} ({detail})" if detail else text


def _dead_letters_table(batch: ScoredBatch) -> pa.Table:
    dls = batch.dead_letters
    return pa.table(
        {
            "source": pa.array([r.source or batch.source for r in dls], pa.string()),
            "position": pa.array([r.index for r in dls], pa.int64()),
            "reason": pa.array([r.reason for r in dls], pa.string()),
            "message": pa.array([r.message for r in dls], pa.string()),
            # bytea text input: hex form.
            "payload": pa.array(["\\x" + bytes(r.payload).hex() for r in dls], pa.string()),
        }
    )


def _to_csv(table: pa.Table) -> bytes:
    """The table as CSV that ``COPY … (FORMAT csv)`` reads back exactly.

    Arrow quotes every string and writes nulls unquoted and empty, which is how PostgreSQL's
    CSV format tells NULL from the empty string. Lists become array literals, dictionaries
    their values.
    """
    columns = [_csv_column(col) for col in table.columns]
    if any(c is not o for c, o in zip(columns, table.columns, strict=True)):
        table = pa.Table.from_arrays(columns, names=table.column_names)
    buf = io.BytesIO()
    pa_csv.write_csv(table, buf, _CSV_OPTIONS)
    data = buf.getvalue()
    if b"\x00" in data:
        data = data.replace(b"\x00", _NUL_REPLACEMENT)
    return data


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_dictionary(t):
        return _csv_column(col.cast(t.value_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.chunked_array([_array_literal(c) for c in col.chunks], pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.chunked_array(
            [pa.array(_hex(c.to_pylist()), pa.string()) for c in col.chunks], pa.string()
        )
    return col


def _hex(values: Sequence[bytes | None]) -> list[str | None]:
    return [None if v is None else "\\x" + v.hex() for v in values]


def _array_literal(arr: pa.Array) -> pa.Array:
    """``list<…>`` → PostgreSQL array literals (``{1,0.5}``, ``{"a","b\\"c"}``), column-wise."""
    values = arr.values
    vt = values.type
    if pa.types.is_string(vt) or pa.types.is_large_string(vt):
        escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
        items = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_floating(vt) or pa.types.is_integer(vt) or pa.types.is_boolean(vt):
        items = values.cast(pa.string())
    else:
        raise TypeError(f"cannot store a list of {vt} in PostgreSQL")
    items = pc.fill_null(items.cast(pa.string()), "NULL")
    lists = pa.ListArray.from_arrays(arr.offsets.cast(pa.int32()), items, mask=arr.is_null())
    joined = pc.binary_join(lists, ",")
    return pc.binary_join_element_wise("{", joined, "}", "")


def _placeholders(query: str, params: Sequence[Any] | None) -> tuple[str, Sequence[Any] | None]:
    """Turn ``?`` placeholders (outside literals and comments) into ``%s``.

    Without parameters the statement is sent unchanged. With parameters, ``%`` is escaped
    everywhere (psycopg reads placeholders even inside literals) and ``?`` outside string
    literals, quoted identifiers and comments becomes ``%s``.
    """
    if not params:
        return query, None
    out: list[str] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch == "'" or ch == '"':
            end = _closing_quote(query, i, ch)
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "-" and query.startswith("--", i):
            end = query.find("\n", i)
            end = n if end < 0 else end
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "/" and query.startswith("/*", i):
            end = query.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "$" and (tag := _dollar_tag(query, i)):
            end = query.find(tag, i + len(tag))
            end = n if end < 0 else end + len(tag)
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == "%":
            if query.startswith("%s", i) or query.startswith("%b", i) or query.startswith("%t", i):
                out.append(query[i : i + 2])
                i += 2
            else:
                out.append("%%")
                i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out), params


def _closing_quote(query: str, start: int, quote: str) -> int:
    """Index after the literal or identifier opened at ``start``.

    Doubled quotes are part of it, and so are backslash escapes in ``E'…'`` strings.
    """
    backslashes = quote == "'" and start > 0 and query[start - 1] in "eE"
    i = start + 1
    n = len(query)
    while i < n:
        c = query[i]
        if backslashes and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and query[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _dollar_tag(query: str, start: int) -> str:
    """The ``$tag$`` opening a dollar-quoted string at ``start``, or ``""``."""
    end = query.find("$", start + 1)
    if end < 0:
        return ""
    tag = query[start : end + 1]
    inner = tag[1:-1]
    if inner and not (inner.replace("_", "a").isalnum() and not inner[0].isdigit()):
        return ""
    if start > 0 and (query[start - 1].isalnum() or query[start - 1] == "_"):
        return ""
    return tag
