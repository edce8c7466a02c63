"""The part of the stores both backends share: read queries, feedback, audit, rollups.

SQL here is written once in the dialect common to DuckDB and PostgreSQL, with ``?``
placeholders (the PostgreSQL store rewrites them). A backend provides :meth:`SqlStore._read`
(one read-only statement) and :meth:`SqlStore._writing` (a write transaction), and says how
it stores JSON (:attr:`SqlStore._JSON_TYPE`).
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast.exceptions import NotFoundError, StoreError
from txfast.store.base import (
    LABEL_SETTLE_S,
    LABELS,
    MAX_PAGE,
    RISK_LEVELS,
    ROLES,
    SORTS,
    STATUS_BY_LABEL,
    Alert,
    AlertPage,
    AlertQuery,
    ApiKey,
    AuditEntry,
    Breakdown,
    DailyFalsePositives,
    DailyRate,
    FeedAlert,
    LabelRecord,
    ModelCount,
    ModelVersion,
    ScoredBatch,
    Stats,
    Store,
    TransactionDetail,
    decode_cursor,
    encode_cursor,
    to_utc_naive,
    utc,
)

log = logging.getLogger(__name__)

__all__ = [
    "HISTORY_MODES",
    "ROLLUPS",
    "ROLLUP_BACKFILL",
    "Executor",
    "SqlStore",
    "alert_json_sql",
    "fold_sql",
    "group_rollups",
    "rollup_columns",
    "rollup_ddl",
    "rollup_insert_sql",
    "history_rows",
    "rollup_rows",
    "rollups",
    "unique_ids",
]

HISTORY_MODES = ("all", "alerts", "none")


class Executor(Protocol):
    """Runs one statement (``?`` placeholders) inside a write transaction; returns its rows."""

    def __call__(
        self, statement: str, params: Sequence[Any] | None = None, /
    ) -> list[tuple[Any, ...]]: ...


_TX_COLUMNS = (
    "transaction_id, ts, card_id, user_id, merchant_id, merchant_category, country, channel, "
    "amount, currency, amount_base, score, is_anomaly, risk_level, action, model_version"
)
_ALERT_LIST_COLUMNS = (
    "transaction_id, ts, card_id, user_id, merchant_id, merchant_category, country, channel, "
    "amount, currency, amount_base, score, risk_level, action, model_version, rules, status, "
    "label, created_at"
)

ROLLUPS: dict[str, tuple[str, ...]] = {
    "stats_hourly": ("bucket", "risk_level", "model_version"),
    "stats_country_daily": ("day", "country", "risk_level"),
    "stats_merchant_daily": ("day", "merchant_id", "risk_level"),
}
"""Rollup tables and their key columns; each also has ``n`` (stored transactions),
``alerts`` (inserted alerts) and ``amount`` (the stored transactions' ``amount_base``).

``bucket`` is the UTC hour, ``day`` the UTC day of the transaction, ``country`` is ``''``
when unknown. A batch appends its increments to the table's ``<table>_delta`` twin (no key,
no update: as cheap as a write can be); every so many batches the deltas are folded into the
keyed table (:func:`fold_sql`) and deleted, in one transaction. Readers sum both.
"""

_KEY_TYPES = {
    "bucket": "TIMESTAMP",
    "day": "DATE",
    "country": "VARCHAR",
    "merchant_id": "VARCHAR",
    "risk_level": "VARCHAR",
    "model_version": "VARCHAR",
}
_KEY_EXPR = {
    "bucket": "date_trunc('hour', ts)",
    "day": "CAST(date_trunc('day', ts) AS DATE)",
    "country": "coalesce(country, '')",
}
_SUMS = ("n", "alerts", "amount")


def rollup_columns(table: str) -> str:
    """The columns of rollup ``table``, in order."""
    return ", ".join((*ROLLUPS[table], *_SUMS))


def rollup_ddl(double: str, options: str = "") -> list[str]:
    """``CREATE TABLE`` statements of the rollups and their delta twins.

    Args:
        double: The backend's 8-byte float type.
        options: Appended to the keyed tables' definition (e.g. a fill factor).
    """
    out = []
    for table, key in ROLLUPS.items():
        cols = ", ".join(f"{k} {_KEY_TYPES[k]} NOT NULL" for k in key)
        sums = f"n BIGINT NOT NULL, alerts BIGINT NOT NULL, amount {double} NOT NULL"
        out.append(
            f"CREATE TABLE {table} ({cols}, {sums}, PRIMARY KEY ({', '.join(key)})) {options}"
        )
        out.append(f"CREATE TABLE {table}_delta ({cols}, {sums})")
    return out


def rollup_insert_sql(table: str, target: str, transactions: str | None, alerts: str | None) -> str:
    """``INSERT`` of the rollup rows of some stored transactions and alerts into ``target``.

    Args:
        table: The rollup (its keys and sums).
        target: Where the rows go (the rollup itself, or its ``_delta`` twin).
        transactions: A table of stored transactions counted in ``n`` and ``amount``.
        alerts: A table of inserted alerts counted in ``alerts``.
    """
    key = ROLLUPS[table]
    exprs = ", ".join(_KEY_EXPR.get(k, k) for k in key)
    cols = "ts, country, merchant_id, risk_level, model_version"
    parts = []
    if transactions is not None:
        parts.append(f"SELECT {cols}, 1 AS n, 0 AS a, amount_base AS amount FROM {transactions}")
    if alerts is not None:
        parts.append(f"SELECT {cols}, 0 AS n, 1 AS a, 0.0 AS amount FROM {alerts}")
    return (
        f"INSERT INTO {target} ({rollup_columns(table)}) "
        f"SELECT {exprs}, sum(n), sum(a), sum(amount) FROM ({' UNION ALL '.join(parts)}) s "
        f"GROUP BY {', '.join(str(i + 1) for i in range(len(key)))}"
    )


ROLLUP_BACKFILL = tuple(rollup_insert_sql(t, t, "transactions", "alerts") for t in ROLLUPS)
"""Build the rollups from the stored rows (the v2 migration of a v1 database)."""


def fold_sql(table: str, source: str) -> str:
    """``INSERT … ON CONFLICT DO UPDATE`` adding the rows of ``source`` into rollup ``table``."""
    key = ", ".join(ROLLUPS[table])
    return (
        f"INSERT INTO {table} ({rollup_columns(table)}) "
        f"SELECT {key}, sum(n), sum(alerts), sum(amount) FROM {source} GROUP BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET n = {table}.n + excluded.n, "
        f"alerts = {table}.alerts + excluded.alerts, amount = {table}.amount + excluded.amount"
    )


def _rollup_rows(table: str, where: str) -> str:
    """The rows of rollup ``table`` and its deltas matching ``where`` (a subquery)."""
    cols = rollup_columns(table)
    return (
        f"(SELECT {cols} FROM {table} WHERE {where} "
        f"UNION ALL SELECT {cols} FROM {table}_delta WHERE {where})"
    )


# -- write-path helpers (columnar) ------------------------------------------------------------


def history_rows(batch: ScoredBatch, history: str) -> pa.Table | None:
    """The transactions of ``batch`` kept by history mode ``history`` (None: none kept)."""
    if history not in HISTORY_MODES:
        raise StoreError(f"unknown history mode {history!r}; use one of {HISTORY_MODES}")
    tx = batch.transactions
    if history == "none" or tx.num_rows == 0:
        return None
    if history == "alerts":
        tx = tx.filter(pc.not_equal(tx["action"], "approve"))
    return tx if tx.num_rows else None


def unique_ids(table: pa.Table) -> pa.Table:
    """``table`` with only the first row of each ``transaction_id`` (usually unchanged)."""
    ids = table["transaction_id"]
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    rows = pa.table({"id": ids, "row": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    first = rows.group_by("id", use_threads=False).aggregate([("row", "min")])["row_min"]
    return table.take(first.take(pc.sort_indices(first)))


def without_ids(table: pa.Table, ids: Sequence[str]) -> pa.Table:
    """``table`` without the rows whose ``transaction_id`` is in ``ids``."""
    if not ids:
        return table
    mask = pc.is_in(table["transaction_id"], value_set=pa.array(list(ids), pa.string()))
    return table.filter(pc.invert(mask))


def _str(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return col if col.type == pa.string() else col.cast(pa.string())


def rollup_rows(new_tx: pa.Table | None, new_alerts: pa.Table | None) -> pa.Table | None:
    """The rollup increments of the rows a batch inserted, one row per inserted row.

    Every rollup's key columns (``bucket``, ``day``, ``country``, ``merchant_id``,
    ``risk_level``, ``model_version``) and sums: a stored transaction counts ``n = 1`` and its
    ``amount_base``, an inserted alert ``alerts = 1``. The deltas may hold such rows as they
    are (readers and :func:`fold_sql` sum them), or grouped by :func:`rollups`.

    Returns:
        The increments, or None when nothing was inserted.
    """
    parts = []
    for table, is_alert in ((new_tx, False), (new_alerts, True)):
        if table is None or table.num_rows == 0:
            continue
        k = table.num_rows
        ts = table["ts"].cast(pa.timestamp("us"))
        parts.append(
            pa.table(
                {
                    "bucket": pc.floor_temporal(ts, unit="hour"),
                    "day": pc.floor_temporal(ts, unit="day").cast(pa.date32()),
                    "country": pc.fill_null(_str(table["country"]), ""),
                    "merchant_id": _str(table["merchant_id"]),
                    "risk_level": _str(table["risk_level"]),
                    "model_version": _str(table["model_version"]),
                    "n": pa.array(np.full(k, 0 if is_alert else 1, dtype=np.int64)),
                    "alerts": pa.array(np.full(k, 1 if is_alert else 0, dtype=np.int64)),
                    "amount": pa.array(np.zeros(k))
                    if is_alert
                    else table["amount_base"].cast(pa.float64()),
                }
            )
        )
    if not parts:
        return None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def rollups(new_tx: pa.Table | None, new_alerts: pa.Table | None) -> dict[str, pa.Table]:
    """The rollup increments of the rows a batch actually inserted, grouped by key.

    Stored transactions count in ``n`` and ``amount`` (base currency), inserted alerts in
    ``alerts``.

    Returns:
        Rollup table name → its increments (the columns of :func:`rollup_columns`, one row
        per key); empty when nothing was inserted.
    """
    rows = rollup_rows(new_tx, new_alerts)
    return {} if rows is None else group_rollups(rows)


def group_rollups(rows: pa.Table) -> dict[str, pa.Table]:
    """Rollup table name → the increments of :func:`rollup_rows` ``rows``, one row per key."""
    out = {}
    for name, key in ROLLUPS.items():
        agg = rows.group_by(list(key), use_threads=False).aggregate([(c, "sum") for c in _SUMS])
        out[name] = agg.rename_columns([c.removesuffix("_sum") for c in agg.column_names]).select(
            [*key, *_SUMS]
        )
    return out


def model_versions_of(*tables: pa.Table | None) -> set[str]:
    """The distinct ``model_version`` values of some tables."""
    out: set[str] = set()
    for t in tables:
        if t is not None and t.num_rows:
            out.update(v for v in pc.unique(_str(t["model_version"])).to_pylist() if v)
    return out


# -- the shared store -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _json(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        value = json.loads(value)
    return dict(value)


def _f32(value: Any) -> float:
    """A ``REAL`` as the exact float32 value (PostgreSQL's text form is the shortest decimal)."""
    return float(np.float32(value))


def _label_name(value: Any) -> str | None:
    if value is None:
        return None
    return "fraud" if int(value) == 1 else "legit"


class SqlStore(Store):
    """The SQL both backends share; subclasses provide the connection handling."""

    _JSON_TYPE = "VARCHAR"
    """The type JSON documents are stored as (``JSONB`` in PostgreSQL)."""

    _EPOCH_US = "epoch_us({})"
    """Microseconds since the epoch of a timestamp column (``{}``), as an integer."""

    _ALERT_JSON: str
    """One alert's JSON text (:func:`alert_json_sql`)."""

    _folder: ThreadPoolExecutor | None = None
    """The thread the statistics deltas are folded on (made at the first fold)."""

    _folding: Future[None] | None = None
    """The background fold of the statistics deltas, if one was started."""

    _closed: bool

    _fold_failures = 0
    """Background folds failed in a row."""

    _ENTITY_FIRST = False
    """Select an entity's alerts (card, user, merchant) first, then filter and sort them.

    DuckDB uses an ART index only when the equality is the scan's sole filter."""

    _seen_versions: set[str]

    def _fold_idle(self) -> bool:
        """No background fold is running and the store is open: one may start."""
        running = self._folding
        return not self._closed and (running is None or running.done())

    def _start_fold(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` on the fold thread; False when the store is closing."""
        if self._folder is None:
            self._folder = ThreadPoolExecutor(1, thread_name_prefix="txfast-fold")
        try:
            self._folding = self._folder.submit(fn, *args)
        except RuntimeError:  # shut down by close(), which folds what is left
            return False
        return True

    def _stop_folds(self) -> None:
        """Wait for the background fold and end its thread (on close)."""
        if self._folder is not None:
            self._folder.shutdown(wait=True)

    def wait_folds(self) -> None:
        """Wait for the background fold of the statistics deltas, if one is running."""
        running = self._folding
        if running is not None:
            running.result()

    def _fold_done(self, error: Exception | None) -> None:
        """Log a background fold's failure (1st, 10th, every 100th: not once per batch)."""
        if error is None:
            if self._fold_failures:
                log.info("statistics deltas folded again after %d failures", self._fold_failures)
            self._fold_failures = 0
            return
        self._fold_failures += 1
        n = self._fold_failures
        if n in (1, 10) or n % 100 == 0:
            log.warning(
                "folding statistics deltas failed (%d times), will retry: %s",
                n,
                error,
                exc_info=not isinstance(error, StoreError),
            )

    @abc.abstractmethod
    def _read(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one read statement (``?`` placeholders) and return its rows."""

    @abc.abstractmethod
    def _writing(self, what: str = "writing to") -> AbstractContextManager[Executor]:
        """A write transaction: committed when the block exits normally, else rolled back.

        Args:
            what: Start of the error message (``"<what> <url> failed: …"``).
        """

    # -- model versions and audit -------------------------------------------------------

    def _record_versions(self, ex: Executor, batch: ScoredBatch, versions: set[str]) -> set[str]:
        """Insert the model versions of a batch not seen before (inside its transaction)."""
        new = versions - self._seen_versions
        if not new:
            return new
        meta: dict[str, Any] = {}
        if batch.feature_names is not None:
            meta = {"feature_names": list(batch.feature_names)}
            fv = batch.alerts["feature_version"] if batch.alerts.num_rows else None
            if fv is not None:
                meta["feature_version"] = fv[0].as_py()
        for version in sorted(new):
            ex(
                f"INSERT INTO model_versions (version, metadata, first_seen) "
                f"VALUES (?, CAST(? AS {self._JSON_TYPE}), ?) ON CONFLICT (version) DO NOTHING",
                [version, json.dumps(meta), _now()],
            )
        return new

    def record_model_version(self, version: str, metadata: dict[str, Any]) -> None:
        """Record (or replace) a model version's metadata.

        See :meth:`Store.record_model_version`.
        """
        if not version:
            raise StoreError("a model version needs a name")
        try:
            doc = json.dumps(metadata, default=str)
        except (TypeError, ValueError) as e:
            raise StoreError(f"model metadata of {version} is not JSON-serialisable: {e}") from e
        with self._writing("recording a model version in") as ex:
            ex(
                f"INSERT INTO model_versions (version, metadata, first_seen) "
                f"VALUES (?, CAST(? AS {self._JSON_TYPE}), ?) "
                f"ON CONFLICT (version) DO UPDATE SET metadata = excluded.metadata",
                [version, doc, _now()],
            )
            self._audit(ex, "txfast", "model_version.record", version, {"keys": sorted(metadata)})
        self._seen_versions.add(version)

    def model_versions(self) -> list[ModelVersion]:
        """Every model version seen or recorded, oldest first."""
        rows = self._read(
            "SELECT version, metadata, first_seen FROM model_versions ORDER BY first_seen, version"
        )
        return [ModelVersion(version=v, metadata=_json(m), first_seen=utc(t)) for v, m, t in rows]

    def _audit(
        self, ex: Executor, actor: str, action: str, target: str | None, details: dict[str, Any]
    ) -> int:
        rows = ex(
            f"INSERT INTO audit_log (logged_at, actor, action, target, details) "
            f"VALUES (?, ?, ?, ?, CAST(? AS {self._JSON_TYPE})) RETURNING id",
            [_now(), actor, action, target, json.dumps(details, default=str)],
        )
        return int(rows[0][0])

    def audit(
        self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None
    ) -> int:
        """Append an entry to the audit log (see :meth:`Store.audit`)."""
        if not actor or not action:
            raise StoreError("an audit entry needs an actor and an action")
        with self._writing("auditing in") as ex:
            return self._audit(ex, actor, action, target, details or {})

    def audit_log(
        self,
        *,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit entries matching every filter given, newest first."""
        where, params = [], []
        for column, value in (("target", target), ("actor", actor), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT id, logged_at, actor, action, target, details FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*params, int(limit)])
        return [_audit_entry(r) for r in rows]

    # -- feedback ---------------------------------------------------------------------------

    def record_feedback(
        self, transaction_id: str, label: str, analyst: str, note: str | None = None
    ) -> LabelRecord:
        """Record an analyst's label (see :meth:`Store.record_feedback`)."""
        if label not in LABELS:
            raise StoreError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
        if not analyst or not analyst.strip():
            raise StoreError("feedback needs the analyst's name")
        value = 1 if label == "fraud" else 0
        now = _now()
        with self._writing("recording feedback in") as ex:
            rows = ex(
                "SELECT ts, card_id, merchant_id, status FROM alerts WHERE transaction_id = ?",
                [transaction_id],
            )
            is_alert = bool(rows)
            if not rows:
                rows = ex(
                    "SELECT ts, card_id, merchant_id, NULL FROM transactions "
                    "WHERE transaction_id = ? LIMIT 1",
                    [transaction_id],
                )
            if not rows:
                raise NotFoundError(f"no transaction {transaction_id!r} in {self.url}")
            ts, card_id, merchant_id, previous = rows[0]
            ex(
                "INSERT INTO labels (transaction_id, ts, card_id, merchant_id, label, analyst, "
                "note, labelled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [transaction_id, ts, card_id, merchant_id, label, analyst, note, now],
            )
            status = None
            if is_alert:
                status = STATUS_BY_LABEL[label]
                ex(
                    "UPDATE alerts SET status = ?, label = ?, labelled_at = ? "
                    "WHERE transaction_id = ?",
                    [status, value, now, transaction_id],
                )
            ex(
                "UPDATE transactions SET label = ? WHERE ts = ? AND transaction_id = ?",
                [value, ts, transaction_id],
            )
            self._audit(
                ex,
                analyst,
                "feedback",
                transaction_id,
                {"label": label, "note": note, "status": status, "previous_status": previous},
            )
        return LabelRecord(
            transaction_id=transaction_id,
            label=label,
            analyst=analyst,
            note=note,
            labelled_at=utc(now),
        )

    def labels(self, since: datetime | None = None, until: datetime | None = None) -> pa.Table:
        """The latest label of every labelled transaction (see :meth:`Store.labels`)."""
        where, params = _window("ts", since, until)
        rows = self._read(
            "SELECT transaction_id, ts, card_id, merchant_id, "
            "CASE WHEN label = 'fraud' THEN 1 ELSE 0 END, labelled_at FROM ("
            "SELECT *, row_number() OVER (PARTITION BY transaction_id "
            "ORDER BY labelled_at DESC, id DESC) AS rn FROM labels"
            + (" WHERE " + " AND ".join(where) if where else "")
            + ") s WHERE rn = 1 ORDER BY ts, transaction_id",
            params,
        )
        cols = list(zip(*rows, strict=True)) if rows else [()] * 6
        return pa.table(
            {
                "transaction_id": pa.array(cols[0], pa.string()),
                "ts": pa.array(cols[1], pa.timestamp("us")),
                "card_id": pa.array(cols[2], pa.string()),
                "merchant_id": pa.array(cols[3], pa.string()),
                "label": pa.array(cols[4], pa.int8()),
                "labelled_at": pa.array(cols[5], pa.timestamp("us")),
            }
        )

    def label_events(self, after: int, *, limit: int = 100_000) -> pa.Table:
        """First labels recorded after event ``after`` (see :meth:`Store.label_events`)."""
        if limit < 1:
            raise StoreError(f"limit must be positive, got {limit}")
        settled = _now() - timedelta(seconds=LABEL_SETTLE_S)
        rows = self._read(
            "SELECT id, card_id, merchant_id, CASE WHEN label = 'fraud' THEN 1 ELSE 0 END, "
            "labelled_at FROM labels l WHERE id > ? AND labelled_at <= ? AND NOT EXISTS ("
            "SELECT 1 FROM labels e WHERE e.transaction_id = l.transaction_id AND e.id < l.id"
            ") ORDER BY id LIMIT ?",
            [after, settled, limit],
        )
        cols = list(zip(*rows, strict=True)) if rows else [()] * 5
        return pa.table(
            {
                "id": pa.array(cols[0], pa.int64()),
                "card_id": pa.array(cols[1], pa.string()),
                "merchant_id": pa.array(cols[2], pa.string()),
                "label": pa.array(cols[3], pa.int8()),
                "labelled_at": pa.array(cols[4], pa.timestamp("us")),
            }
        )

    # -- alert lists and details ----------------------------------------------------------

    def list_alerts(
        self,
        query: AlertQuery | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        sort: str = "time",
    ) -> AlertPage:
        """One page of alerts (see :meth:`Store.list_alerts`)."""
        if sort not in SORTS:
            raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
        if not 1 <= limit <= MAX_PAGE:
            raise StoreError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        q = query or AlertQuery()
        entity, where, params = _alert_filters(q)
        key = "ts" if sort == "time" else "score"
        if cursor is not None:
            after, tid = decode_cursor(cursor, sort)
            # The redundant bound lets both backends prune (zone maps, index ranges).
            cast = "TIMESTAMP" if sort == "time" else "REAL"
            where.append(
                f"{key} <= CAST(? AS {cast}) AND ({key}, transaction_id) < (CAST(? AS {cast}), ?)"
            )
            params += [after, after, tid]
        if entity is not None and self._ENTITY_FIRST:
            # The entity's rows by its index, then the other filters and the order.
            column, value = entity
            sql = (
                f"WITH a AS MATERIALIZED (SELECT {_ALERT_LIST_COLUMNS} FROM alerts "
                f"WHERE {column} = ?) SELECT {_ALERT_LIST_COLUMNS} FROM a"
            )
            params = [value, *params]
        else:
            if entity is not None:
                where.insert(0, f"{entity[0]} = ?")
                params = [entity[1], *params]
            sql = f"SELECT {_ALERT_LIST_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {key} DESC, transaction_id DESC LIMIT ?"
        rows = self._read(sql, [*params, limit + 1])
        items = [_alert(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(
                sort, last[1] if sort == "time" else _f32(last[11]), last[0]
            )
        return AlertPage(items=items, next_cursor=next_cursor)

    def get_transaction(self, transaction_id: str) -> TransactionDetail | None:
        """Everything stored about one transaction (see :meth:`Store.get_transaction`)."""
        rows = self._read(
            f"SELECT {_TX_COLUMNS}, rules, status, explanation, feature_version, features, label, "
            "shadow_score, shadow_model_version FROM alerts WHERE transaction_id = ?",
            [transaction_id],
        )
        is_alert = bool(rows)
        if not rows:
            rows = self._read(
                f"SELECT {_TX_COLUMNS}, NULL, NULL, NULL, NULL, NULL, NULL, "
                "shadow_score, shadow_model_version FROM transactions "
                "WHERE transaction_id = ? LIMIT 1",
                [transaction_id],
            )
        if not rows:
            return None
        r = rows[0]
        labels = [
            LabelRecord(
                transaction_id=transaction_id, label=lb, analyst=a, note=n, labelled_at=utc(t)
            )
            for lb, a, n, t in self._read(
                "SELECT label, analyst, note, labelled_at FROM labels "
                "WHERE transaction_id = ? ORDER BY labelled_at, id",
                [transaction_id],
            )
        ]
        audit = [
            _audit_entry(a)
            for a in self._read(
                "SELECT id, logged_at, actor, action, target, details FROM audit_log "
                "WHERE target = ? ORDER BY id",
                [transaction_id],
            )
        ]
        values = r[20]
        features = None
        if values is not None:
            names = self._feature_names(r[15], r[19], len(values))
            features = {n: float(v) for n, v in zip(names, values, strict=True)}
        label = labels[-1].label if labels else None
        return TransactionDetail(
            transaction_id=r[0],
            ts=utc(r[1]),
            card_id=r[2],
            user_id=r[3],
            merchant_id=r[4],
            merchant_category=r[5],
            country=r[6],
            channel=r[7],
            amount=float(r[8]),
            currency=r[9],
            amount_base=float(r[10]),
            score=_f32(r[11]),
            is_anomaly=bool(r[12]),
            risk_level=r[13],
            action=r[14],
            model_version=r[15],
            is_alert=is_alert,
            rules=list(r[16] or []),
            status=r[17],
            explanation=r[18],
            feature_version=r[19],
            features=features,
            label=label,
            labels=labels,
            audit=audit,
            shadow_score=None if r[22] is None else _f32(r[22]),
            shadow_model_version=r[23],
        )

    def _feature_names(self, model_version: str, feature_version: str | None, n: int) -> list[str]:
        rows = self._read("SELECT metadata FROM model_versions WHERE version = ?", [model_version])
        if rows:
            names = _json(rows[0][0]).get("feature_names")
            if isinstance(names, list) and len(names) == n:
                return [str(x) for x in names]
        from txfast.features import DEFAULT_FEATURE_NAMES, FEATURE_VERSION

        if feature_version == FEATURE_VERSION and len(DEFAULT_FEATURE_NAMES) == n:
            return list(DEFAULT_FEATURE_NAMES)
        return [f"f{i}" for i in range(n)]

    # -- the live feed ----------------------------------------------------------------------

    def alert_feed(
        self,
        since: datetime,
        *,
        after_id: str | None = None,
        limit: int = 1000,
        ids_only: bool = False,
    ) -> list[FeedAlert]:
        """Alerts by creation time, oldest first, as JSON (see :meth:`Store.alert_feed`)."""
        if not 1 <= limit <= MAX_PAGE:
            raise StoreError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        lo = to_utc_naive(since)
        where = "created_at >= ?"
        params: list[Any] = [lo]
        if after_id is not None:
            where += " AND (created_at, transaction_id) > (CAST(? AS TIMESTAMP), ?)"
            params += [lo, after_id]
        created = self._EPOCH_US.format("created_at")
        if ids_only:
            rows = self._read(
                f"SELECT transaction_id, {created} FROM alerts WHERE {where} "
                "ORDER BY created_at, transaction_id LIMIT ?",
                [*params, limit],
            )
            return [FeedAlert(r[0], int(r[1]), "", "") for r in rows]
        rows = self._read(
            f"SELECT transaction_id, {created}, risk_level, {self._ALERT_JSON} FROM alerts "
            f"WHERE {where} ORDER BY created_at, transaction_id LIMIT ?",
            [*params, limit],
        )
        return [FeedAlert(r[0], int(r[1]), r[2], r[3]) for r in rows]

    def latest_alert_time(self) -> datetime | None:
        """The creation time of the newest alert (see :meth:`Store.latest_alert_time`)."""
        rows = self._read("SELECT max(created_at) FROM alerts")
        return utc(rows[0][0]) if rows and rows[0][0] is not None else None

    def ping(self) -> None:
        """Run ``SELECT 1`` (see :meth:`Store.ping`)."""
        self._read("SELECT 1")

    # -- API keys ---------------------------------------------------------------------------

    def create_api_key(self, name: str, role: str, *, actor: str = "txfast") -> tuple[int, str]:
        """Create an API key (see :meth:`Store.create_api_key`)."""
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        name = (name or "").strip()
        if not name or len(name) > 100 or any(not c.isprintable() for c in name):
            raise StoreError("an API key needs a name of 1 to 100 printable characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing("creating an API key in") as ex:
            if ex("SELECT id FROM api_keys WHERE name = ? AND revoked_at IS NULL", [name]):
                raise StoreError(f"an active API key is already named {name!r}; revoke it first")
            rows = ex(
                "INSERT INTO api_keys (name, role, token_sha256, prefix, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                [name, role, _token_digest(token), token[:_SHOWN], _now(), actor],
            )
            key_id = int(rows[0][0])
            details = {"name": name, "role": role}
            self._audit(ex, actor, "api_key.create", f"api_key:{key_id}", details)
        return key_id, token

    def lookup_api_key(self, token: str) -> ApiKey | None:
        """The key of a token (see :meth:`Store.lookup_api_key`)."""
        if not token or len(token) > 512:
            return None
        digest = _token_digest(token)
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE token_sha256 = ?", [digest])
        if not rows or not hmac.compare_digest(str(rows[0][-1]), digest):
            return None
        return _api_key(rows[0])

    def revoke_api_key(self, key_id: int, *, actor: str = "txfast") -> ApiKey:
        """Revoke a key (see :meth:`Store.revoke_api_key`)."""
        with self._writing("revoking an API key in") as ex:
            rows = ex(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)])
            if not rows:
                raise NotFoundError(f"no API key {key_id} in {self.url}")
            key = _api_key(rows[0])
            if key.revoked_at is None:
                now = _now()
                ex("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [now, int(key_id)])
                key = msgspec.structs.replace(key, revoked_at=utc(now))
                self._audit(ex, actor, "api_key.revoke", f"api_key:{key.id}", {"name": key.name})
        return key

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first (see :meth:`Store.list_api_keys`)."""
        return [_api_key(r) for r in self._read(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id")]

    # -- statistics -------------------------------------------------------------------------

    def stats(self, since: datetime, until: datetime, *, top_merchants: int = 10) -> Stats:
        """Dashboard statistics for ``[since, until)`` (see :meth:`Store.stats`)."""
        lo, hi = to_utc_naive(since), to_utc_naive(until)
        assert lo is not None and hi is not None
        if hi <= lo:
            raise StoreError(f"empty statistics window [{since}, {until})")
        if not 0 <= top_merchants <= 1000:
            raise StoreError("top_merchants must be between 0 and 1000")
        rows = self._read(
            "SELECT GROUPING(hour), GROUPING(day), hour, day, model_version, risk_level, "
            "sum(n), sum(alerts), sum(amount) FROM (SELECT "
            "CAST(extract(hour FROM bucket) AS INTEGER) AS hour, "
            "CAST(date_trunc('day', bucket) AS DATE) AS day, model_version, risk_level, n, "
            f"alerts, amount FROM {_rollup_rows('stats_hourly', 'bucket >= ? AND bucket < ?')} h"
            ") s GROUP BY GROUPING SETS ((hour, risk_level), (day), (model_version))",
            [lo, hi, lo, hi],
        )
        by_hour: dict[Any, list[Any]] = {}
        daily: list[DailyRate] = []
        models: list[ModelCount] = []
        for g_h, g_d, hour, day, mv, level, n, alerts, amount in rows:
            n, alerts, amount = int(n), int(alerts), float(amount)
            if not g_h:
                _add(by_hour, int(hour), level, n, alerts, amount)
            elif not g_d:
                daily.append(
                    DailyRate(
                        day=_day(day),
                        transactions=n,
                        alerts=alerts,
                        anomaly_rate=alerts / n if n else None,
                    )
                )
            else:
                models.append(ModelCount(model_version=mv, transactions=n, alerts=alerts))
        d0, d1 = _day_bounds(lo, hi)
        days = "day >= ? AND day < ?"
        by_country: dict[Any, list[Any]] = {}
        for country, level, n, alerts, amount in self._read(
            "SELECT country, risk_level, sum(n), sum(alerts), sum(amount) "
            f"FROM {_rollup_rows('stats_country_daily', days)} c GROUP BY country, risk_level",
            [d0, d1, d0, d1],
        ):
            _add(by_country, country, level, int(n), int(alerts), float(amount))
        merchants: dict[Any, list[Any]] = {}
        if top_merchants:
            alerting = f"{days} AND alerts > 0"
            inside = f"{days} AND merchant_id IN (SELECT merchant_id FROM top)"
            for merchant, level, n, alerts, amount in self._read(
                "WITH top AS (SELECT merchant_id FROM "
                f"{_rollup_rows('stats_merchant_daily', alerting)} a "
                "GROUP BY merchant_id ORDER BY sum(alerts) DESC, merchant_id LIMIT ?) "
                "SELECT merchant_id, risk_level, sum(n), sum(alerts), sum(amount) FROM "
                f"{_rollup_rows('stats_merchant_daily', inside)} m "
                "GROUP BY merchant_id, risk_level",
                [d0, d1, d0, d1, top_merchants, d0, d1, d0, d1],
            ):
                _add(merchants, merchant, level, int(n), int(alerts), float(amount))
        fp = [
            DailyFalsePositives(
                day=_day(day),
                labelled=int(labelled),
                false_positives=int(legit),
                false_positive_rate=int(legit) / int(labelled),
            )
            for day, labelled, legit in self._read(
                "SELECT CAST(date_trunc('day', ts) AS DATE) AS day, count(*), "
                "count(*) FILTER (WHERE label = 0) FROM alerts "
                "WHERE label IS NOT NULL AND ts >= ? AND ts < ? GROUP BY 1 ORDER BY 1",
                [lo, hi],
            )
        ]
        top = sorted(_breakdowns(merchants), key=lambda b: (-b.alerts, b.key))
        daily.sort(key=lambda d: d.day)
        models.sort(key=lambda m: m.model_version)
        return Stats(
            since=utc(lo),
            until=utc(hi),
            transactions=sum(d.transactions for d in daily),
            alerts=sum(d.alerts for d in daily),
            by_country=sorted(_breakdowns(by_country), key=lambda b: (-b.transactions, b.key)),
            by_merchant=top,
            by_hour=sorted(_breakdowns(by_hour), key=lambda b: int(b.key)),
            daily=daily,
            false_positives=fp,
            by_model_version=models,
        )

    # -- counts and raw SQL -----------------------------------------------------------------

    def count(self, table: str) -> int:
        """Rows in ``alerts``, ``transactions`` or ``dead_letters``."""
        if table not in ("alerts", "transactions", "dead_letters"):
            raise StoreError(f"unknown table {table!r}")
        rows = self._read(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0


# -- helpers ----------------------------------------------------------------------------------


def _window(column: str, since: datetime | None, until: datetime | None) -> tuple[list[str], list]:
    where, params = [], []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(to_utc_naive(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(to_utc_naive(until))
    return where, params


def _in(column: str, values: tuple[str, ...], where: list[str], params: list) -> None:
    if len(values) == 1:
        where.append(f"{column} = ?")
        params.append(values[0])
    elif values:
        where.append(f"{column} IN ({', '.join('?' for _ in values)})")
        params.extend(values)


def _alert_filters(q: AlertQuery) -> tuple[tuple[str, str] | None, list[str], list[Any]]:
    """The most selective entity filter (card, user, merchant), and the other conditions."""
    where: list[str] = []
    params: list[Any] = []
    entity = None
    for column, value in (
        ("card_id", q.card_id),
        ("user_id", q.user_id),
        ("merchant_id", q.merchant_id),
        ("country", q.country),
    ):
        if value is None:
            continue
        if entity is None and column != "country":
            entity = (column, value)
        else:
            where.append(f"{column} = ?")
            params.append(value)
    _in("risk_level", q.risk_levels, where, params)
    _in("action", q.actions, where, params)
    _in("status", q.statuses, where, params)
    w, p = _window("ts", q.since, q.until)
    return entity, where + w, params + p


def alert_json_sql(
    *, build: str, time: Callable[[str], str], f64: str, no_rules: str, text: str
) -> str:
    """The SQL expression of one alert's JSON, over the columns of ``_ALERT_LIST_COLUMNS``.

    The fields of :class:`Alert`, in order, encoded as msgspec encodes the struct: times in
    RFC 3339 UTC (no fraction when it is zero, six digits otherwise), the ``REAL`` score as its
    exact value, the label by name. Numbers may be written differently (DuckDB writes 1e16 as
    ``10000000000000000.0``, PostgreSQL an integral 31.0 as ``31``), never with another value.
    Stored amounts and scores are finite (the decoder bounds amounts, the scorer refuses
    non-finite scores); a NaN written by raw SQL would not be valid JSON here.

    Args:
        build: The backend's JSON object constructor (called with name, value, …).
        time: The RFC 3339 text of a naive UTC timestamp column.
        f64: The backend's 8-byte float type.
        no_rules: An empty rules array.
        text: The backend's text type (the result is cast to it).
    """
    exprs = {
        "ts": time("ts"),
        "created_at": time("created_at"),
        "score": f"CAST(score AS {f64})",
        "rules": f"coalesce(rules, {no_rules})",
        "label": "CASE WHEN label IS NULL THEN NULL WHEN label = 1 THEN 'fraud' ELSE 'legit' END",
    }
    pairs = ", ".join(f"'{f}', {exprs.get(f, f)}" for f in Alert.__struct_fields__)
    return f"CAST({build}({pairs}) AS {text})"


def _alert(r: tuple[Any, ...]) -> Alert:
    return Alert(
        transaction_id=r[0],
        ts=utc(r[1]),
        card_id=r[2],
        user_id=r[3],
        merchant_id=r[4],
        merchant_category=r[5],
        country=r[6],
        channel=r[7],
        amount=float(r[8]),
        currency=r[9],
        amount_base=float(r[10]),
        score=_f32(r[11]),
        risk_level=r[12],
        action=r[13],
        model_version=r[14],
        rules=list(r[15] or []),
        status=r[16],
        label=_label_name(r[17]),
        created_at=utc(r[18]),
    )


TOKEN_PREFIX = "txf_"
"""Start of every API token (recognisable in logs and secret scanners)."""

_SHOWN = 10
"""Characters of a token kept in clear (:attr:`ApiKey.prefix`): the prefix and six more."""

_KEY_COLUMNS = "id, name, role, prefix, created_at, created_by, revoked_at, token_sha256"


def _token_digest(token: str) -> str:
    """The stored form of a token: its SHA-256, hex (the token holds 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _api_key(r: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        id=int(r[0]),
        name=r[1],
        role=r[2],
        prefix=r[3],
        created_at=utc(r[4]),
        created_by=r[5],
        revoked_at=None if r[6] is None else utc(r[6]),
    )


def _audit_entry(r: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        id=int(r[0]), logged_at=utc(r[1]), actor=r[2], action=r[3], target=r[4], details=_json(r[5])
    )


def _add(acc: dict[Any, list[Any]], key: Any, level: str, n: int, alerts: int, amount: float):
    entry = acc.setdefault(key, [0, 0, 0.0, dict.fromkeys(RISK_LEVELS, 0)])
    entry[0] += n
    entry[1] += alerts
    entry[2] += amount
    entry[3][level] = entry[3].get(level, 0) + n


def _breakdowns(acc: dict[Any, list[Any]]) -> Iterator[Breakdown]:
    for key, (n, alerts, amount, by_risk) in acc.items():
        yield Breakdown(key=key, transactions=n, alerts=alerts, amount=amount, by_risk=by_risk)


def _day(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


def _day_bounds(lo: datetime, hi: datetime) -> tuple[date, date]:
    """The days starting in ``[lo, hi)``, as a half-open ``[first, end)`` range."""
    first = lo.date() if lo.time() == datetime.min.time() else date.fromordinal(lo.toordinal() + 1)
    end = hi.date() if hi.time() == datetime.min.time() else date.fromordinal(hi.toordinal() + 1)
    return first, max(first, end)
