"""The PostgreSQL store: bulk COPY into staging tables, idempotent by transaction id.

Each batch is written in one transaction: every table of the batch is rendered column-wise
to CSV by Arrow, streamed with ``COPY … FROM STDIN`` into a per-connection temporary
staging table, then moved with ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (so a replayed
batch stores nothing twice and never overwrites an analyst's changes).

Timestamps are ``TIMESTAMP`` (without time zone) holding UTC, as in the DuckDB store, so both
backends return the same Python values; sessions run with ``TimeZone = UTC``. PostgreSQL text
cannot hold the NUL character: a NUL inside a string is stored as U+FFFD.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from txfast.exceptions import StoreError
from txfast.store.base import ScoredBatch, Store

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

SCHEMA_VERSION = 1

TABLES = ("alerts", "transactions", "dead_letters")
HISTORY_MODES = ("all", "alerts", "none")

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

_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False)
_NUL_REPLACEMENT = "\ufffd".encode()


class PostgresStore(Store):
    """Store in a PostgreSQL database, through a connection pool (thread-safe).

    Args:
        url: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?PARAMS]`` (libpq URL; any
            libpq parameter such as ``sslmode`` may be given as a query parameter).
        read_only: Do not migrate nor write; sessions are read-only.
        min_size: Connections kept open.
        max_size: Most connections at once (the pipeline writes on one; readers use the rest).
        timeout: Seconds to wait for a free or re-established connection before an operation
            fails with :class:`StoreError`.
        connect_timeout: Seconds allowed to establish one connection.
        application_name: Reported in ``pg_stat_activity``.

    Raises:
        StoreError: When the server cannot be reached, the schema is newer than this txfast,
            or the migration fails.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        application_name: str = "txfast",
    ) -> None:
        self.url = _redact(url)
        self.read_only = read_only
        self._conninfo = url
        self._kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": application_name,
        }
        self._closed = False
        try:
            with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                if read_only:
                    self._check_version(_current_version(conn))
                else:
                    self._migrate(conn)
        except psycopg.Error as e:
            raise StoreError(f"cannot open PostgreSQL store {self.url}: {_msg(e)}") from e
        pool_options: dict[str, Any] = {}
        if hasattr(ConnectionPool, "check_connection"):  # psycopg_pool >= 3.2
            # A connection broken by a server restart is replaced before use.
            pool_options["check"] = ConnectionPool.check_connection
        self._pool = ConnectionPool(
            self._conninfo,
            kwargs=self._kwargs,
            min_size=min_size,
            max_size=max(max_size, min_size),
            timeout=timeout,
            configure=self._configure,
            open=False,
            name="txfast-store",
            **pool_options,
        )
        try:
            self._pool.open(wait=True, timeout=max(timeout, connect_timeout))
        except psycopg.Error as e:
            self._pool.close()
            raise StoreError(f"cannot open PostgreSQL store {self.url}: {_msg(e)}") from e

    # -- schema -------------------------------------------------------------------------------

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this txfast ({SCHEMA_VERSION})"
            )
        if self.read_only and current < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.url} has schema version {current}, this txfast needs "
                f"{SCHEMA_VERSION}; open it once for writing to migrate"
            )

    def _migrate(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, "
                "applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))"
            )
            current = _current_version(conn)
            self._check_version(current)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[version]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [version])

    def _configure(self, conn: psycopg.Connection) -> None:
        """Per-connection setup: UTC session, read-only mode or the staging tables."""
        conn.execute("SET TIME ZONE 'UTC'")
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

    # -- writes -------------------------------------------------------------------------------

    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch in one transaction (see :meth:`Store.write_batch`)."""
        if history not in HISTORY_MODES:
            raise StoreError(f"unknown history mode {history!r}; use one of {HISTORY_MODES}")
        if self.read_only:
            raise StoreError(f"store {self.url} is open read-only")
        try:
            parts: list[tuple[str, list[str], bytes]] = []
            if batch.alerts.num_rows:
                parts.append(("alerts", batch.alerts.column_names, _to_csv(batch.alerts)))
            tx = batch.transactions
            if history == "alerts":
                tx = tx.filter(pc.not_equal(tx["action"], "approve"))
            if history != "none" and tx.num_rows:
                parts.append(("transactions", tx.column_names, _to_csv(tx)))
            if batch.dead_letters:
                dl = _dead_letters_table(batch)
                parts.append(("dead_letters", dl.column_names, _to_csv(dl)))
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise StoreError(f"cannot encode a batch for {self.url}: {e}") from e
        if not parts:
            return
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                for table, columns, data in parts:
                    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
                    stage = sql.Identifier(_stage(table))
                    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage, cols)
                    with cur.copy(copy) as cp:
                        cp.write(data)
                    cur.execute(
                        sql.SQL(
                            "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING"
                        ).format(sql.Identifier(table), cols, cols, stage)
                    )
        except psycopg.Error as e:
            raise StoreError(f"writing a batch to {self.url} failed: {self._why(e)}") from e

    # -- reads --------------------------------------------------------------------------------

    def count(self, table: str) -> int:
        """Rows in ``alerts``, ``transactions`` or ``dead_letters``."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}")
        rows = self.query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0

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
        """Close every connection of the pool (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pool.close()


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
