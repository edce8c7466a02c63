"""The embedded DuckDB store: bulk appends from Arrow, idempotent by transaction id.

Full writes are serialised by a lock on one connection (staged small batches have their own,
see below); reads run on a cursor per thread (DuckDB
connections to the same database), so the API can read while the scorer writes. A batch is
written in one transaction, so a reader sees whole batches, except a large batch of known
model versions: its transactions and its alerts are committed by two transactions at once,
on two connections and threads, each idempotent on its own
(:meth:`DuckDBStore._write_split`). The statistics deltas are folded into their rollups on a
connection of their own, in a background thread (:meth:`DuckDBStore._fold_later`).

The transaction history has no primary-key index (schema v2): an ART index over millions of
text keys made every append several times slower. A batch is instead checked against the
stored rows with the same ``(ts, transaction_id)`` by a semi-join: DuckDB pushes the
batch's ``ts`` range into the scan of ``transactions``, so only the row groups of the batch's
time span are read; a batch newer than every stored transaction (a stream's usual batch)
skips the check. A replayed event (same id, same event time) is therefore stored once,
and ids are unique within a batch (the first row wins); two different events sharing an id
but not a timestamp would both be kept in the history. Alerts keep their primary key, so an
alert is never stored twice.

A small batch's cost is the number of statements it runs (each a few hundred microseconds,
whatever it writes) and its commit: see :meth:`DuckDBStore._write`. With ``defer_ms`` (the
scorer's default, ``[pipeline] store_defer_ms``), small batches are instead staged durably in
a database of their own (``PATH.staging``) and written in full by a mover thread
(:meth:`DuckDBStore._defer`).
Checkpoints run in the background (``checkpoint_wal_bytes``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from txfast.exceptions import StoreError
from txfast.store._sql import (
    ROLLUP_BACKFILL,
    ROLLUPS,
    Executor,
    SqlStore,
    alert_json_sql,
    fold_sql,
    group_rollups,
    history_rows,
    model_versions_of,
    rollup_columns,
    rollup_ddl,
    rollup_rows,
    unique_ids,
    without_ids,
)
from txfast.store.base import PruneResult, ScoredBatch, to_utc_naive

__all__ = ["SCHEMA_VERSION", "DuckDBStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_TX_COLUMNS_DDL = """
    transaction_id VARCHAR {pk},
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
"""

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"CREATE TABLE IF NOT EXISTS transactions ({_TX_COLUMNS_DDL.format(pk='PRIMARY KEY')})",
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
    2: [
        # History without the primary-key index (see the module docstring), rebuilt in
        # event-time order so that the ts zone maps prune old data too.
        f"CREATE TABLE transactions_v2 ({_TX_COLUMNS_DDL.format(pk='NOT NULL')})",
        "INSERT INTO transactions_v2 SELECT * FROM transactions ORDER BY ts, transaction_id",
        "DROP TABLE transactions",
        "ALTER TABLE transactions_v2 RENAME TO transactions",
        "ALTER TABLE alerts ADD COLUMN label TINYINT",
        "ALTER TABLE alerts ADD COLUMN labelled_at TIMESTAMP",
        # ART indexes serve equality lookups only; time ranges use the zone maps.
        "DROP INDEX alerts_ts",
        "CREATE INDEX alerts_user ON alerts (user_id)",
        "CREATE INDEX alerts_merchant ON alerts (merchant_id)",
        "CREATE SEQUENCE labels_id",
        """CREATE TABLE labels (
            id BIGINT PRIMARY KEY DEFAULT nextval('labels_id'),
            transaction_id VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            card_id VARCHAR NOT NULL,
            merchant_id VARCHAR NOT NULL,
            label VARCHAR NOT NULL CHECK (label IN ('fraud', 'legit')),
            analyst VARCHAR NOT NULL,
            note VARCHAR,
            labelled_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX labels_transaction ON labels (transaction_id)",
        "CREATE SEQUENCE audit_log_id",
        """CREATE TABLE audit_log (
            id BIGINT PRIMARY KEY DEFAULT nextval('audit_log_id'),
            logged_at TIMESTAMP NOT NULL,
            actor VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            target VARCHAR,
            details VARCHAR NOT NULL
        )""",
        """CREATE TABLE model_versions (
            version VARCHAR PRIMARY KEY,
            metadata VARCHAR NOT NULL,
            first_seen TIMESTAMP NOT NULL
        )""",
        """INSERT INTO model_versions (version, metadata, first_seen)
        SELECT model_version, '{}', min(seen) FROM (
            SELECT model_version, scored_at AS seen FROM transactions
            UNION ALL SELECT model_version, created_at FROM alerts) s
        GROUP BY model_version""",
        *rollup_ddl("DOUBLE"),
        *ROLLUP_BACKFILL,
    ],
    3: [
        # A shadow (challenger) model's score, next to the champion's; NULL when none ran.
        "ALTER TABLE transactions ADD COLUMN shadow_score FLOAT",
        "ALTER TABLE transactions ADD COLUMN shadow_model_version VARCHAR",
        "ALTER TABLE alerts ADD COLUMN shadow_score FLOAT",
        "ALTER TABLE alerts ADD COLUMN shadow_model_version VARCHAR",
        # API keys: only the token's SHA-256 is stored. The live feed reads alerts by
        # created_at, which the zone maps serve (alerts are appended in that order).
        "CREATE SEQUENCE api_keys_id",
        """CREATE TABLE api_keys (
            id BIGINT PRIMARY KEY DEFAULT nextval('api_keys_id'),
            name VARCHAR NOT NULL,
            role VARCHAR NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
            token_sha256 VARCHAR NOT NULL UNIQUE,
            prefix VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            created_by VARCHAR NOT NULL,
            revoked_at TIMESTAMP
        )""",
    ],
}

_ARCHIVED = {
    "transactions": (
        "ts < ? AND NOT EXISTS (SELECT 1 FROM labels l "
        "WHERE l.transaction_id = transactions.transaction_id)"
    ),
    "alerts": (
        "ts < ? AND NOT EXISTS (SELECT 1 FROM labels l "
        "WHERE l.transaction_id = alerts.transaction_id)"
    ),
    "dead_letters": "received_at < ?",
}
"""What :meth:`DuckDBStore.prune` removes from each table (``?``: the cutoff)."""


class DuckDBStore(SqlStore):
    """Store in one DuckDB file (``:memory:`` for tests).

    Args:
        path: Database file; parent directories are created.
        read_only: Open without write access (for concurrent readers of a finished run).
        migrate: Apply pending schema migrations on open (default). When false, a database
            of an older schema is refused (run ``txfast db upgrade``).
        row_group_size: Rows per row group of the tables written in this session (DuckDB's
            default is 122,880). With the pipeline's batch size (8192), each batch of history
            fills whole row groups, which DuckDB writes compressed straight to the file
            instead of logging them and rewriting them at the next checkpoint; and the zone
            maps skip more (a day of alerts, a batch's time span read a few small groups).
            Files are about a third larger than with DuckDB's default.
        config: Extra DuckDB settings (e.g. ``{"threads": 2, "memory_limit": "4GB"}``).
            Defaults differ from DuckDB's for the scorer's sake: ``threads`` 1 (appending a
            batch is twice as fast without DuckDB's task scheduling, the queries served are
            small, and the scorer needs the cores) and checkpoints in the background (see
            ``checkpoint_wal_bytes``). ``python_enable_replacements`` stays on: writes read
            their Arrow tables by name. A ``checkpoint_threshold`` given here restores
            DuckDB's own checkpoints, inside the commit that crosses it.
        checkpoint_wal_bytes: Checkpoint (write the write-ahead log's changes into the
            database file) once the log is this large, on the background fold thread, at a
            moment no write transaction is open. DuckDB's own checkpoint runs inside the commit
            that crosses its threshold and holds every other commit meanwhile: at 256 MB a
            300–1,000 ms pause of the writer, and of a stream's latency, every 10–20 s of
            small batches. Its threshold stays as a backstop, at four times this size.
        defer_ms: When positive, a small batch (at most ``defer_rows`` transactions and
            alerts) is made durable in two staging tables, one cheap statement each, and moved
            into the history, the alerts and the statistics with the other batches of the
            last ``defer_ms`` by a background thread (see :meth:`_defer`): a stream's small
            batches cost a quarter as much, and become visible to readers up to ``defer_ms``
            later. :meth:`flush_deferred` moves them at once; ``close`` does too, and opening
            a store moves what a crash left staged. 0 (the default): every batch is written
            in full before ``write_batch`` returns.
        defer_rows: The largest batch that is deferred; larger ones are written in full.
        compact_every: Fold each rollup's statistics deltas into it every this many batches,
            in a background thread (:meth:`_fold_later`). The three rollups take turns (a
            fold costs a few ms whatever the deltas hold), so that one fold holds the CPU
            rather than three: the first fold of the second and third comes a third and two
            thirds of a period after the first one.

    Raises:
        StoreError: When the file cannot be opened, its schema is newer than this txfast, or
            older and ``migrate`` is false.
    """

    _ENTITY_FIRST = True

    _ALERT_JSON = alert_json_sql(
        build="json_object",
        time=lambda c: (
            f"CASE WHEN microsecond({c}) % 1000000 = 0 THEN strftime({c}, '%Y-%m-%dT%H:%M:%SZ') "
            f"ELSE strftime({c}, '%Y-%m-%dT%H:%M:%S.%fZ') END"
        ),
        f64="DOUBLE",
        no_rules="[]::VARCHAR[]",
        text="VARCHAR",
    )

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        migrate: bool = True,
        config: dict[str, Any] | None = None,
        compact_every: int = 64,
        row_group_size: int = 8192,
        checkpoint_wal_bytes: int = 256 << 20,
        defer_ms: float = 0.0,
        defer_rows: int = 2048,
    ) -> None:
        self.url = f"duckdb:{path}"
        self.read_only = read_only
        if path != ":memory:" and not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._wal = None if path == ":memory:" or read_only else Path(f"{path}.wal")
        self._checkpoint_wal_bytes = checkpoint_wal_bytes
        if config and "checkpoint_threshold" in config:
            self._wal = None  # DuckDB's own checkpoints, as asked
        backstop = f"{max(1, 4 * checkpoint_wal_bytes >> 20)}MB"
        settings = {"checkpoint_threshold": backstop, "threads": 1, **(config or {})}
        settings["python_enable_replacements"] = True  # see _run
        options = [f"ROW_GROUP_SIZE {int(row_group_size)}"]
        if read_only:
            options.append("READ_ONLY")
        try:
            self._con = duckdb.connect(":memory:", config=settings)
            self._con.execute(f"ATTACH '{_sql_string(path)}' AS {_DB} ({', '.join(options)})")
            self._con.execute(f"USE {_DB}")
        except duckdb.Error as e:
            raise StoreError(f"cannot open DuckDB store {path}: {e}") from e
        self._lock = threading.Lock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        self._closed = False
        self._seen_versions = set()
        self._compact_every = max(1, compact_every)
        self._uncompacted = 0
        """Batches written since the last full :meth:`compact`."""
        self._fold_in = self._staggered()
        """Batches until each rollup's deltas are folded."""
        self._fold_lock = threading.Lock()
        self._fold_con: duckdb.DuckDBPyConnection | None = None
        self._alert_con: duckdb.DuckDBPyConnection | None = None
        """The alert half's connection of batches written in two transactions (_write_split)."""
        self._alert_pool: ThreadPoolExecutor | None = None
        self._statements: dict[str, duckdb.Statement] = {}
        self._newest_ts: int | None = None
        """Upper bound of the stored transactions' ``ts`` (µs since the epoch; None: unknown)."""
        self._raw_sql = 0
        """Statements run through :meth:`query` so far (they may insert transactions)."""
        self._newest_lock = threading.Lock()
        self._defer_s = max(0.0, defer_ms) / 1000
        self._defer_rows = defer_rows
        self._staging_lock = threading.Lock()
        """Serialises the staging writes (on their own connection, beside the batches')."""
        self._staging_con: duckdb.DuckDBPyConnection | None = None
        self._staged_schemas: dict[str, pa.Schema] = {}
        """Arrow schema of each staging table made by this process."""
        self._staged_rows = 0
        """Rows staged and not moved yet (approximate: for scheduling only)."""
        self._staging_attached = False
        self._staging_wal: Path | None = None
        self._staging_gen = 0
        """Generation of the staging tables new batches go to (see :meth:`_move_deferred`)."""
        self._mover: threading.Thread | None = None
        self._mover_stop = threading.Event()
        self._mover_wake = threading.Event()
        self._move_lock = threading.Lock()
        self._move_failures = 0
        self._after_lock = threading.Lock()
        self._visible_listeners: list[Callable[[], None]] = []
        """Called after the mover made staged batches visible (see add_visible_listener)."""
        self.applied_migrations: list[int] = []
        """Versions migrated when this store was opened."""
        try:
            if migrate and not read_only:
                self.applied_migrations = self.migrate()
            else:
                self._check_version(self.schema_version)
            if not read_only:
                # The folds' connection, made here rather than by the fold thread while a
                # batch runs on the write connection.
                self._fold_con = self._con.cursor()
                self._fold_con.execute(f"USE {_DB}")
                self._alert_con = self._con.cursor()
                self._alert_con.execute(f"USE {_DB}")
                self._attach_staging(path)
                # Batches a crash left staged (durable, not moved yet) go where they belong.
                try:
                    self._move_deferred()
                except Exception as e:  # noqa: BLE001 - they stay staged; the store opens
                    self._move_failures = _MOVE_FAILURES_BEFORE_FULL_WRITES
                    log.error(
                        "staged batches of %s could not be moved (they stay in %s.staging, "
                        "moved at a later open): %s",
                        self.url,
                        path,
                        e,
                    )
        except BaseException:
            self._con.close()
            raise

    # -- schema -------------------------------------------------------------------------------

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this txfast ({SCHEMA_VERSION})"
            )
        if current < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.url} has schema version {current}, this txfast needs "
                f"{SCHEMA_VERSION}; run `txfast db upgrade --store {self.url}`"
            )

    @property
    def schema_version(self) -> int:
        """The applied schema version (0 for an empty database)."""
        with self._lock:
            return self._version()

    def _version(self) -> int:
        exists = self._con.execute(
            "SELECT count(*) FROM duckdb_tables() "
            f"WHERE database_name = '{_DB}' AND table_name = 'schema_migrations'"
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = self._con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in one transaction (see :meth:`Store.migrate`)."""
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        applied = []
        with self._lock:
            con = self._con
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
            )
            current = self._version()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"store schema version {current} is newer than this txfast ({SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                try:
                    con.execute("BEGIN")
                    for stmt in _MIGRATIONS[version]:
                        con.execute(stmt)
                    con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])
                    if version >= 2:
                        con.execute(
                            "INSERT INTO audit_log (logged_at, actor, action, target, details) "
                            "VALUES (?, 'txfast', 'schema.migrate', ?, ?)",
                            [_now(), str(version), json.dumps({"from": version - 1})],
                        )
                    con.execute("COMMIT")
                except duckdb.Error as e:
                    con.execute("ROLLBACK")
                    raise StoreError(
                        f"migrating {self.url} to schema version {version} failed: {e}"
                    ) from e
                applied.append(version)
        return applied

    # -- connections ----------------------------------------------------------------------

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's read connection."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            if self._closed:
                raise StoreError(f"store {self.url} is closed")
            cur = self._con.cursor()
            cur.execute(f"USE {_DB}")
            self._local.cursor = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    def _read(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return self._cursor().execute(sql, list(params or [])).fetchall()
        except duckdb.Error as e:
            raise StoreError(f"query on {self.url} failed: {e}") from e

    @contextmanager
    def _writing(self, what: str = "writing to") -> Iterator[Executor]:
        """A write transaction on the write connection, under the write lock."""
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        with self._lock, self._transaction(self._con, what) as ex:
            yield ex

    @contextmanager
    def _transaction(self, con: duckdb.DuckDBPyConnection, what: str) -> Iterator[Executor]:
        """A transaction on ``con``: committed, or rolled back on any error (re-raised)."""

        def ex(sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
            cur = con.execute(sql, list(params or []))
            return cur.fetchall() if cur.description is not None else []

        con.execute("BEGIN")
        try:
            yield ex
            con.execute("COMMIT")
        except _AlertReplayed:
            con.execute("ROLLBACK")
            raise
        except duckdb.Error as e:
            _rollback(con)
            raise StoreError(f"{what} {self.url} failed: {e}") from e
        except BaseException:
            _rollback(con)
            raise

    # -- writes -------------------------------------------------------------------------------

    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch in one transaction (see :meth:`Store.write_batch`)."""
        tx = history_rows(batch, history)
        if tx is not None:
            tx = unique_ids(tx)
        alerts = unique_ids(batch.alerts) if batch.alerts.num_rows else None
        if history != "none" and self._defer(batch, tx, alerts):
            return
        if self._staged_rows and self._move_failures < _MOVE_FAILURES_BEFORE_FULL_WRITES:
            self._move_deferred()  # staged batches first: a full write never overtakes them
        try:
            versions = self._write(batch, tx, alerts, careful=history == "none")
        except _AlertReplayed:
            # An alert stored before without its transaction row: the careful way.
            versions = self._write(batch, tx, alerts, careful=True)
        self._seen_versions |= versions
        self._uncompacted += 1
        self._after_write()

    def _after_write(self) -> None:
        """One more batch of deltas: start a checkpoint or the folds that are due."""
        with self._after_lock:  # the writer's thread and the mover's
            databases = self._checkpoint_due()
            if databases:  # folds due meanwhile wait for a later batch
                self._start_fold(self._checkpoint, databases)
            due = []
            for table in ROLLUPS:
                self._fold_in[table] -= 1
                if self._fold_in[table] <= 0:
                    due.append(table)
            if due:
                self._fold_later(due)

    # -- deferred small batches --------------------------------------------------------------
    #
    # A batch of a few hundred rows costs about 6 ms of CPU written in full (five statements
    # and a commit that touches five tables) and 1.5 ms staged (one statement per table, one
    # commit): a stream at 10,000 tx/s in 400-row batches spent half a core on it. Staged
    # rows are durable (DuckDB's commit), so the caller may commit its source offsets; the
    # mover then writes them in full, together, in one transaction, with the checks of a
    # replay (duplicates are dropped, statistics count each row once), and drops the
    # staging tables it moved.

    def _attach_staging(self, path: str) -> None:
        """Attach the staging database (``PATH.staging``), if deferring or if it exists.

        The staging tables live in a database of their own: a checkpoint of the store holds
        the commits of its own database only, so staging a batch never waits for one.
        """
        staging = None if path == ":memory:" else Path(f"{path}.staging")
        if not self._defer_s and (staging is None or not staging.exists()):
            return
        where = ":memory:" if staging is None else _sql_string(str(staging))
        try:
            self._con.execute(f"ATTACH '{where}' AS {_STAGING_DB}")
        except duckdb.Error as e:
            raise StoreError(f"cannot open the staging database of {self.url}: {e}") from e
        self._staging_attached = True
        # New batches go after every generation a previous process left (moved at open).
        for gen, _, _ in self._staged_tables(self._con.execute(_STAGED_TABLES).fetchall()):
            self._staging_gen = max(self._staging_gen, gen + 1)
        if staging is not None and self._wal is not None:
            self._staging_wal = Path(f"{staging}.wal")

    def _defer(self, batch: ScoredBatch, tx: pa.Table | None, alerts: pa.Table | None) -> bool:
        """Stage a small batch durably for the mover; False when it must be written in full."""
        if not self._defer_s or not self._staging_attached or batch.dead_letters:
            return False
        if (
            self._move_failures >= _MOVE_FAILURES_BEFORE_FULL_WRITES
            or self._staged_rows >= _STAGED_ROWS_CAP * self._defer_rows
        ):
            # The mover is failing or far behind: in full, so that a failing store fails
            # the caller's write (which then holds its offsets) instead of piling up.
            return False
        rows = (tx.num_rows if tx is not None else 0) + (alerts.num_rows if alerts else 0)
        if rows == 0 or rows > self._defer_rows:
            return False
        if model_versions_of(tx, alerts) - self._seen_versions:
            return False  # a new model version is recorded with its feature names, in full
        with self._staging_lock:
            if self._closed:
                raise StoreError(f"store {self.url} is closed")
            con = self._staging_con
            if con is None:
                con = self._staging_con = self._con.cursor()
                con.execute(f"USE {_DB}")
            parts = [
                (t, f"{_STAGING_DB}.{_STAGED_PREFIX}{kind}_{self._staging_gen}")
                for kind, t in (("transactions", tx), ("alerts", alerts))
                if t
            ]
            for txfast_rows, table in parts:  # the name is read by DuckDB (replacement scan)
                known = self._staged_schemas.get(table)
                if known is None:
                    try:
                        con.execute(f"CREATE TABLE {table} AS SELECT * FROM txfast_rows LIMIT 0")
                    except duckdb.Error as e:
                        raise StoreError(f"staging a batch in {self.url} failed: {e}") from e
                    self._staged_schemas[table] = txfast_rows.schema
                elif not known.equals(txfast_rows.schema):
                    return False  # another shape (a shadow model's columns): in full
            with self._transaction(con, "staging a batch in"):
                for txfast_rows, table in parts:  # noqa: B007 - read by DuckDB by name
                    con.execute(f"INSERT INTO {table} SELECT * FROM txfast_rows")
            self._staged_rows += rows
            if self._mover is None or not self._mover.is_alive():
                self._mover = threading.Thread(
                    target=self._move_loop, name="txfast-mover", daemon=True
                )
                self._mover.start()
        if self._staged_rows >= 4 * self._defer_rows:
            self._mover_wake.set()  # a fast stream: move before the timer
        return True

    def _move_loop(self) -> None:
        """The mover thread: every ``defer_ms`` (or sooner when much is staged), move."""
        while not self._mover_stop.is_set():
            self._mover_wake.wait(self._defer_s)
            self._mover_wake.clear()
            if self._mover_stop.is_set() or not self._staged_rows:
                continue
            try:
                self._move_deferred()
            except Exception as e:  # noqa: BLE001 - staged rows are durable; retried
                self._move_failures += 1
                n = self._move_failures
                if n in (1, _MOVE_FAILURES_BEFORE_FULL_WRITES, 10) or n % 100 == 0:
                    log.error(
                        "moving staged batches failed (%d times), will retry%s: %s",
                        n,
                        "; writing batches in full meanwhile"
                        if n >= _MOVE_FAILURES_BEFORE_FULL_WRITES
                        else "",
                        e,
                    )
                self._mover_stop.wait(min(5.0, self._defer_s * 2 ** min(n, 6)))

    def flush_deferred(self) -> None:
        """Write the staged small batches in full now (readers see them on return)."""
        if not self.read_only and not self._closed:
            self._move_deferred()

    def _move_deferred(self) -> None:
        """Move every staged batch into the history, alerts and deltas (one transaction).

        The staging tables are swapped, not emptied: new batches go to the next generation's
        tables while this one's are read, written in full, and dropped once that committed.
        (Deleting the moved rows instead left them for the next checkpoint to vacuum, which
        then held the staging writes for hundreds of milliseconds.) What a crash left staged
        (any generation) is moved the same way when the store is opened.
        """
        with self._move_lock:
            with self._staging_lock:
                gen = self._staging_gen
                self._staging_gen += 1
                moving, self._staged_rows = self._staged_rows, 0
            try:
                moved = self._move_generations(gen)
            except BaseException:
                with self._staging_lock:
                    self._staged_rows += moving  # still staged: the mover tries again
                raise
            self._move_failures = 0  # small batches may be staged again
        if moved:  # outside the move lock: a listener may flush again
            self._uncompacted += 1
            self._after_write()
            for listener in self._visible_listeners:
                try:
                    listener()
                except Exception:  # a listener's failure never fails the move
                    log.exception("a listener of moved batches failed")

    def add_visible_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the mover's thread after it made staged batches visible."""
        self._visible_listeners.append(listener)

    @staticmethod
    def _staged_tables(rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, str, str]]:
        """``(generation, kind, qualified name)`` of the staging tables, oldest first.

        Args:
            rows: The rows of :data:`_STAGED_TABLES`.
        """
        found = []
        for (name,) in rows:
            kind, _, g = name[len(_STAGED_PREFIX) :].rpartition("_")
            if kind in ("transactions", "alerts") and g.isdigit():
                found.append((int(g), kind, f"{_STAGING_DB}.{name}"))
        return sorted(found)

    def _move_generations(self, gen: int) -> bool:
        """Move the staged tables of generations up to ``gen``; True if rows were written."""
        if not self._staging_attached:
            return False
        moved = False
        raw_sql = self._raw_sql  # before the transaction's snapshot (see _newest_stored_ts)
        with self._writing("moving staged batches into") as ex:
            # Oldest generation first: the first copy of a replay wins.
            found = [t for t in self._staged_tables(ex(_STAGED_TABLES)) if t[0] <= gen]
            tables = {}
            for kind in ("transactions", "alerts"):
                names = [t for _, k, t in found if k == kind]
                tables[kind] = (
                    pa.concat_tables(
                        [self._con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in names],
                        promote_options="default",
                    )
                    if names
                    else None
                )
            tx, alerts = tables["transactions"], tables["alerts"]
            tx = unique_ids(tx) if tx is not None and tx.num_rows else None
            alerts = unique_ids(alerts) if alerts is not None and alerts.num_rows else None
            if tx is not None or alerts is not None:
                moved = True
                stub = ScoredBatch(pa.table({}), pa.table({}), [], "staged")
                self._write_in(ex, stub, tx, alerts, careful=True, raw_sql=raw_sql)
        # Committed: the staged tables go (a transaction writes one database only). A crash
        # before they are dropped moves them again at the next open: the rows already
        # stored are recognised and skipped, the statistics count them once.
        names = [t for _, _, t in found]
        with self._staging_lock:
            con = self._staging_con or self._con.cursor()
            self._staging_con = con
            try:
                for t in names:
                    con.execute(f"DROP TABLE {t}")
            except duckdb.Error as e:
                log.warning("dropping moved staging tables failed (moved again later): %s", e)
            for t in names:
                self._staged_schemas.pop(t, None)
        return moved

    def _checkpoint_due(self) -> list[str]:
        """The databases whose write-ahead log outgrew ``checkpoint_wal_bytes``.

        Empty while the fold thread is busy: the check is made again after a later batch.
        """
        if self._wal is None or not self._fold_idle():
            return []
        due = []
        # The staging log holds only dropped tables' rows: checkpointed small and often, it
        # pauses the staging writes a few ms (123 ms at 256 MB).
        staging_limit = min(self._checkpoint_wal_bytes, _STAGING_WAL_BYTES)
        for db, wal, limit in (
            (_DB, self._wal, self._checkpoint_wal_bytes),
            (_STAGING_DB, self._staging_wal, staging_limit),
        ):
            try:
                if wal is not None and wal.stat().st_size >= limit:
                    due.append(db)
            except OSError:  # no log yet
                pass
        return due

    def _checkpoint(self, databases: list[str]) -> None:
        """Fold thread: checkpoint each database, unless a write transaction of it is open.

        DuckDB refuses a ``CHECKPOINT`` while another write transaction of the database is
        open ("other write transactions active"): the log stays and the checkpoint is tried
        again after a later batch. A checkpoint of the store holds its commits meanwhile (as
        DuckDB's own does), but not the staging database's: staged batches never wait for it
        (see :meth:`_defer`).
        """
        with self._fold_lock:
            if self._closed or self._fold_con is None:
                return
            for db in databases:
                t0 = time.perf_counter()
                try:
                    self._fold_con.execute(f"CHECKPOINT {db}")
                except duckdb.TransactionException as e:  # a write was open: a later batch
                    log.debug("checkpoint of %s postponed: %s", db, e)
                    continue
                except duckdb.Error as e:  # the log stays; tried again after a later batch
                    log.warning("checkpointing %s of %s failed: %s", db, self.url, e)
                    continue
                log.debug("checkpoint of %s: %.0f ms", db, (time.perf_counter() - t0) * 1000)

    def _fold_later(self, tables: list[str]) -> None:
        """Fold some rollups' deltas in the background (the next batch need not wait).

        A fold upserts into the keyed rollup (the merchants' one: tens of thousands of keys,
        60–70 ms every ``compact_every`` batches of 400 rows) and deletes the deltas it read,
        in its own transaction on its own connection: batches keep appending to the deltas
        meanwhile, which a fold neither reads nor deletes (they are not in its snapshot).
        Tables whose fold is due while another runs, or fails, stay due for the next batch.
        """
        if not self._fold_idle():
            return
        for table in tables:
            self._fold_in[table] = self._compact_every
        self._start_fold(self._fold_or_retry, tables)

    def _fold_or_retry(self, tables: list[str]) -> None:
        try:
            self._fold(tables)
        except Exception as e:  # the batches are stored; fold at a later batch
            for table in tables:
                self._fold_in[table] = 1
            self._fold_done(e)
        else:
            self._fold_done(None)

    def _write(
        self, batch: ScoredBatch, tx: pa.Table | None, alerts: pa.Table | None, *, careful: bool
    ) -> set[str]:
        """One attempt at writing a batch; returns the model versions it recorded.

        Each statement costs a few hundred microseconds whatever the batch size, so a batch
        runs as few as it can: the Arrow tables are read by name from :meth:`_run`'s frame
        (no view registered per table), the stored-id check is skipped when every row is newer
        than the newest stored transaction (:meth:`_newest_stored_ts`), and a small batch's
        rollup increments go ungrouped from one table into the three deltas.

        Alerts are appended without a conflict check (their primary key still refuses a
        duplicate) unless ``careful`` or some of the batch's transactions were stored
        before; the conflict check costs more than the whole append.

        A large batch of known model versions is written in two transactions at once (see
        :meth:`_write_split`); any other in one.
        """
        raw_sql = self._raw_sql
        if (
            not careful
            and tx is not None
            and alerts is not None
            and tx.num_rows >= _SPLIT_ROWS
            and self._alert_con is not None
            and model_versions_of(tx, alerts) <= self._seen_versions
        ):
            self._write_split(batch, tx, alerts, raw_sql)
            return set()
        with self._writing("writing a batch to") as ex:
            return self._write_in(ex, batch, tx, alerts, careful=careful, raw_sql=raw_sql)

    def _write_in(
        self,
        ex: Executor,
        batch: ScoredBatch,
        tx: pa.Table | None,
        alerts: pa.Table | None,
        *,
        careful: bool,
        raw_sql: int,
    ) -> set[str]:
        """The statements of :meth:`_write` (same arguments), in the open transaction ``ex``.

        ``raw_sql`` is :attr:`_raw_sql` as read before the transaction began.
        """
        con = self._con
        new_tx, stored = self._insert_transactions(con, tx, raw_sql)
        new_alerts = None
        if alerts is not None:
            new_alerts = self._insert_alerts(con, alerts, careful=careful or stored)
        self._insert_increments(con, _increments(new_tx, new_alerts))
        if batch.dead_letters:
            self._run(_DEAD_LETTER_INSERT, _dead_letters(batch), con=con)
        return self._record_versions(ex, batch, model_versions_of(new_tx, new_alerts))

    def _write_split(
        self, batch: ScoredBatch, tx: pa.Table, alerts: pa.Table, raw_sql: int
    ) -> None:
        """A large batch in two transactions at once, on two connections and two threads.

        The transactions with their statistics on the write connection; the alerts with
        theirs and the dead letters on the alert connection, in a worker thread (DuckDB
        runs both without the GIL, on the two cores): the alerts' statements and commit, a
        fifth of a 8192-row batch's write, cost no time. Each transaction counts in the
        statistics exactly the rows it inserted, so each is idempotent on its own: when one
        fails, the error is raised after the other ended, and writing the batch again (as
        the pipeline does, or a replay) stores what is missing and nothing twice. Readers
        may see one half a moment before the other. New model versions are recorded by the
        one-transaction path (:meth:`_write`), which such a batch takes.
        """
        pool = self._alert_pool
        if pool is None:
            pool = self._alert_pool = ThreadPoolExecutor(1, thread_name_prefix="txfast-alerts")
        with self._lock:
            # The worker first counts the transactions (the usual batch, none stored before,
            # inserts them all), then writes the alerts.
            counted = pool.submit(_increments, tx, None)
            half = pool.submit(self._write_alert_half, batch, alerts)
            try:
                with self._transaction(self._con, "writing a batch's transactions to"):
                    new_tx, _ = self._insert_transactions(self._con, tx, raw_sql)
                    increments = counted.result() if new_tx is tx else _increments(new_tx, None)
                    self._insert_increments(self._con, increments)
            finally:
                counted.exception()
                error = half.exception()  # the other half ends before anything else runs
            if error is not None:
                raise error

    def _write_alert_half(self, batch: ScoredBatch, alerts: pa.Table) -> None:
        """:meth:`_write_split`'s alerts, statistics and dead letters (alert connection)."""
        con = self._alert_con
        assert con is not None
        for careful in (False, True):
            try:
                with self._transaction(con, "writing a batch's alerts to"):
                    new_alerts = self._insert_alerts(con, alerts, careful=careful)
                    self._insert_increments(con, _increments(None, new_alerts))
                    if batch.dead_letters:
                        self._run(_DEAD_LETTER_INSERT, _dead_letters(batch), con=con)
                return
            except _AlertReplayed:  # some were stored before: the careful way
                continue

    def _insert_transactions(
        self, con: duckdb.DuckDBPyConnection, tx: pa.Table | None, raw_sql: int
    ) -> tuple[pa.Table | None, bool]:
        """Append the rows of ``tx`` not stored before, in ``con``'s open transaction.

        Returns:
            The rows inserted, and whether some were stored before.
        """
        if tx is None:
            return None, False
        stored = []
        bounds = _ts_bounds_us(tx["ts"])
        newest = self._newest_stored_ts(raw_sql, con) if bounds is not None else None
        if bounds is None or newest is None or bounds[0] <= newest:
            stored = self._run(_STORED_IDS, tx, con=con).fetchall()
        new_tx = without_ids(tx, [r[0] for r in stored]) if stored else tx
        if new_tx.num_rows:
            self._run("INSERT INTO transactions BY NAME SELECT * FROM txfast_rows", new_tx, con=con)
            # Raised before the commit: a rollback leaves it higher than needed.
            upper = bounds if new_tx is tx else _ts_bounds_us(new_tx["ts"])
            self._keep_newest_ts(
                None if upper is None or newest is None else max(newest, upper[1]),
                raw_sql,
            )
        return new_tx, bool(stored)

    def _insert_alerts(
        self, con: duckdb.DuckDBPyConnection, alerts: pa.Table, *, careful: bool
    ) -> pa.Table:
        """Append the alerts not stored before (``careful``: checked; else all, or raise).

        Returns:
            The alerts inserted (their rollup columns when ``careful``).

        Raises:
            _AlertReplayed: Not ``careful``, and an alert was stored before.
        """
        if careful:
            return self._run(
                "INSERT INTO alerts BY NAME SELECT * FROM txfast_rows "
                "ON CONFLICT DO NOTHING RETURNING ts, country, merchant_id, "
                "risk_level, model_version",
                alerts,
                arrow=True,
                con=con,
            )
        try:
            self._run("INSERT INTO alerts BY NAME SELECT * FROM txfast_rows", alerts, con=con)
        except duckdb.ConstraintException as e:
            raise _AlertReplayed from e
        return alerts

    def _insert_increments(
        self, con: duckdb.DuckDBPyConnection, increments: dict[str, pa.Table]
    ) -> None:
        """Append statistics increments (see :func:`_increments`) to the rollups' deltas."""
        for table, rows in increments.items():
            self._run(_DELTA_INSERT[table], rows, con=con)

    def _run(
        self,
        sql: str,
        txfast_rows: pa.Table,
        *,
        arrow: bool = False,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> Any:
        """Execute ``sql`` on ``con`` (default: the write connection); it reads ``txfast_rows``.

        DuckDB finds the argument among this frame's variables (a replacement scan), so no
        view is registered for it: registering a table cost as much as a small query. Each
        statement is parsed once.

        Returns:
            The connection (its pending result), or the result as an Arrow table if ``arrow``.
        """
        con = self._con if con is None else con
        if arrow:
            return con.sql(sql).to_arrow_table()
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = con.extract_statements(sql)[0]
        return con.execute(statement)

    def _newest_stored_ts(self, raw_sql: int, con: duckdb.DuckDBPyConnection) -> int | None:
        """An upper bound of the stored transactions' ``ts`` (µs), in the write transaction.

        A row of a batch newer than it cannot be stored already (a stored row has the same
        ``(ts, transaction_id)``); a stream's batches usually are, and skip the semi-join (a
        scan of the batch's time span). The bound is read once (DuckDB answers ``max(ts)``
        from the column statistics), then kept up to date by the writes, under the write
        lock. Deletes leave it an upper bound, which is all the test needs; raw SQL (see
        :meth:`query`), which may insert transactions, makes it unknown again.

        Args:
            raw_sql: :attr:`_raw_sql` when the write began.
            con: The connection of the write transaction.
        """
        newest = self._newest_ts
        if newest is None:
            (value,) = con.execute("SELECT max(ts) FROM transactions").fetchall()[0]
            newest = _MIN_US if value is None else _us(value)
            self._keep_newest_ts(newest, raw_sql)
        return newest

    def _keep_newest_ts(self, newest: int | None, raw_sql: int) -> None:
        """Remember ``newest`` unless raw SQL ran since the write began (it may be stale)."""
        with self._newest_lock:
            self._newest_ts = newest if self._raw_sql == raw_sql else None

    def compact(self) -> None:
        """Fold the statistics deltas into the rollup tables (one transaction)."""
        self.wait_folds()
        self._fold(list(ROLLUPS))
        self._uncompacted = 0
        self._fold_in = self._staggered()

    def _staggered(self) -> dict[str, int]:
        """Batches until each rollup's first fold.

        One period for the first rollup, a third and two thirds of a period more for the
        others, so that they take turns from then on.
        """
        every = self._compact_every
        return {t: every + i * every // len(ROLLUPS) for i, t in enumerate(ROLLUPS)}

    def _fold(self, tables: list[str]) -> None:
        """Fold the deltas of some rollups into them (one transaction, on its own connection).

        Only folds write to the rollups, one at a time; batches only append to the deltas.
        """
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        with self._fold_lock:
            con = self._fold_con
            if con is None:
                if self._closed:
                    raise StoreError(f"store {self.url} is closed")
                con = self._fold_con = self._con.cursor()
                con.execute(f"USE {_DB}")
            try:
                con.execute("BEGIN")
                try:
                    for table in tables:
                        con.execute(fold_sql(table, f"{table}_delta"))
                        con.execute(f"DELETE FROM {table}_delta")
                    con.execute("COMMIT")
                except BaseException:
                    _rollback(con)
                    raise
            except duckdb.Error as e:
                raise StoreError(f"compacting the statistics of {self.url} failed: {e}") from e

    # -- retention ----------------------------------------------------------------------------

    def prune(
        self,
        older_than: datetime,
        *,
        archive_dir: str | Path | None = None,
        actor: str = "txfast",
    ) -> PruneResult:
        """Delete (and archive) what is older than a cutoff (see :meth:`Store.prune`)."""
        cutoff = to_utc_naive(older_than)
        assert cutoff is not None
        run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        written: list[Path] = []
        counts: dict[str, int] = {}
        try:
            with self._writing("pruning") as ex:
                kept = ex(
                    "SELECT count(*) FROM transactions t WHERE ts < ? AND EXISTS "
                    "(SELECT 1 FROM labels l WHERE l.transaction_id = t.transaction_id)",
                    [cutoff],
                )[0][0]
                for table, where in _ARCHIVED.items():
                    n = int(ex(f"SELECT count(*) FROM {table} WHERE {where}", [cutoff])[0][0])
                    counts[table] = n
                    if n and archive_dir is not None:
                        path = Path(archive_dir) / table / f"{table}-{run}.parquet"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        ex(
                            f"COPY (SELECT * FROM {table} WHERE {where}) TO "
                            f"'{_sql_string(str(path))}' (FORMAT parquet)",
                            [cutoff],
                        )
                        _fsync(path)
                        written.append(path)
                    if n:
                        ex(f"DELETE FROM {table} WHERE {where}", [cutoff])
                result = PruneResult(
                    cutoff=cutoff.replace(tzinfo=UTC),
                    transactions=counts["transactions"],
                    alerts=counts["alerts"],
                    dead_letters=counts["dead_letters"],
                    kept_labelled=int(kept),
                    archive=[str(p) for p in written],
                )
                self._audit(ex, actor, "retention.prune", None, msgspec.to_builtins(result))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return result

    # -- raw SQL and lifecycle ----------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL on this thread's connection and return all rows."""
        try:
            return self._read(sql, params)
        finally:  # the SQL may have inserted transactions
            with self._newest_lock:
                self._raw_sql += 1
                self._newest_ts = None

    def close(self) -> None:
        """Move staged batches, fold the statistics deltas, close the database (idempotent)."""
        if self._mover is not None:
            self._mover_stop.set()
            self._mover_wake.set()
            self._mover.join()
        if not self._closed and not self.read_only:
            try:
                self._move_deferred()
            except Exception as e:  # noqa: BLE001 - the staged rows stay; moved at the next open
                log.error(
                    "staged batches of %s stay staged (moved at the next open): %s", self.url, e
                )
        if self._uncompacted and not self._closed:
            try:
                self.compact()
            except StoreError as e:  # the deltas stay; readers sum them
                log.warning("%s", e)
        self._stop_folds()
        with self._lock, self._fold_lock:
            if self._closed:
                return
            self._closed = True
            if self._staging_con is not None:
                try:
                    self._staging_con.close()
                except duckdb.Error:
                    pass
            if self._alert_pool is not None:
                self._alert_pool.shutdown()
            for con in (self._fold_con, self._alert_con):
                if con is not None:
                    try:
                        con.close()
                    except duckdb.Error:
                        pass
            with self._cursors_lock:
                for cur in self._cursors:
                    try:
                        cur.close()
                    except duckdb.Error:
                        pass
                self._cursors.clear()
            try:
                self._con.close()
            except duckdb.Error:  # already closed
                pass


# -- helpers ----------------------------------------------------------------------------------


_STAGING_DB = "txfast_staging"
"""The attached database of the staging tables (file ``PATH.staging``)."""

_STAGED_PREFIX = "staged_"
"""Staging tables of deferred small batches: ``staged_{transactions,alerts}_{generation}``."""

_STAGED_TABLES = (
    f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{_STAGING_DB}' "
    f"AND starts_with(table_name, '{_STAGED_PREFIX}')"
)

_STAGING_WAL_BYTES = 16 << 20
"""The staging database is checkpointed when its write-ahead log reaches this size."""

_MOVE_FAILURES_BEFORE_FULL_WRITES = 3
"""Failed moves in a row after which batches are written in full again (see :meth:`_defer`)."""

_STAGED_ROWS_CAP = 64
"""Batches of ``defer_rows`` staged at most; beyond, batches are written in full."""

_STORED_IDS = (
    "SELECT b.transaction_id FROM txfast_rows b SEMI JOIN transactions t "
    "ON t.ts = b.ts AND t.transaction_id = b.transaction_id"
)
"""The ids of a batch stored before (DuckDB pushes the batch's ``ts`` into the scan)."""

_DEAD_LETTER_INSERT = (
    "INSERT INTO dead_letters BY NAME SELECT * FROM txfast_rows ON CONFLICT DO NOTHING"
)

_SPLIT_ROWS = 2048
"""Batches of at least this many transactions are written in two transactions at once
(:meth:`DuckDBStore._write_split`); below, handing half a batch to a thread is not worth it.
"""

_DELTA_INSERT = {
    table: f"INSERT INTO {table}_delta ({rollup_columns(table)}) "
    f"SELECT {rollup_columns(table)} FROM txfast_rows"
    for table in ROLLUPS
}

_UNGROUPED_ROLLUP_ROWS = 512
"""Up to this many increments, a batch's rollup rows go to the deltas ungrouped.

Grouping costs a fixed ~0.1 ms per rollup (0.3 ms of a 40-row batch's 6); from about 1000
rows on it pays for itself, and ungrouped deltas would slow the statistics read between folds.
"""

_EPOCH = datetime(1970, 1, 1)
_MIN_US = -(2**63)
_PER_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _us(value: datetime) -> int:
    """A naive UTC datetime as microseconds since the epoch."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def _ts_bounds_us(ts: pa.ChunkedArray) -> tuple[int, int] | None:
    """The first and last time of a naive timestamp column, in microseconds (rounded outward).

    None when the column is not a naive timestamp (DuckDB then converts it by its time zone).
    """
    if not pa.types.is_timestamp(ts.type) or ts.type.tz is not None:
        return None
    mm = pc.min_max(ts.cast(pa.int64()))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None or hi is None:
        return None
    unit = ts.type.unit
    if unit == "ns":
        return lo // 1000, -(-hi // 1000)
    return lo * _PER_US[unit], hi * _PER_US[unit]


_DB = "txfast"
"""The name the database file is attached under."""


class _AlertReplayed(Exception):
    """The fast path met an alert stored before; the batch is written again carefully."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _increments(new_tx: pa.Table | None, new_alerts: pa.Table | None) -> dict[str, pa.Table]:
    """Rollup table → the statistics increments of the rows a write inserted.

    A few rows go ungrouped, the same table to each rollup (see ``_UNGROUPED_ROLLUP_ROWS``).
    """
    rows = rollup_rows(new_tx, new_alerts)
    if rows is None:
        return {}
    if rows.num_rows <= _UNGROUPED_ROLLUP_ROWS:
        return dict.fromkeys(ROLLUPS, rows)
    return group_rollups(rows)


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction; a failed ``COMMIT`` has ended it already."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _sql_string(value: str) -> str:
    return value.replace("'", "''")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dead_letters(batch: ScoredBatch) -> pa.Table:
    return pa.table(
        {
            "source": [r.source or batch.source for r in batch.dead_letters],
            "position": [r.index for r in batch.dead_letters],
            "reason": [r.reason for r in batch.dead_letters],
            "message": [r.message for r in batch.dead_letters],
            "payload": pa.array([r.payload for r in batch.dead_letters], type=pa.binary()),
        }
    )
