"""The store interface used by the pipeline, the API and training.

Both backends (:mod:`txfast.store.duckdb_store`, :mod:`txfast.store.postgres_store`)
implement :class:`Store`; the read and feedback methods are shared SQL
(:mod:`txfast.store._sql`), so they behave the same on both.

Timestamps in the database are ``TIMESTAMP`` without time zone holding UTC. The typed
results of this interface (:class:`Alert`, :class:`TransactionDetail`, …) carry
timezone-aware UTC datetimes; arguments may be aware (converted to UTC) or naive (read as
UTC).
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa

from txfast.decode import Rejected
from txfast.exceptions import InvalidCursorError, StoreError

__all__ = [
    "LABEL_SETTLE_S",
    "ACTIONS",
    "LABELS",
    "RISK_LEVELS",
    "ROLES",
    "SORTS",
    "STATUSES",
    "STATUS_BY_LABEL",
    "Alert",
    "AlertPage",
    "AlertQuery",
    "ApiKey",
    "AuditEntry",
    "Breakdown",
    "DailyFalsePositives",
    "DailyRate",
    "FeedAlert",
    "LabelRecord",
    "ModelCount",
    "ModelVersion",
    "PruneResult",
    "ScoredBatch",
    "Stats",
    "Store",
    "TransactionDetail",
    "decode_cursor",
    "encode_cursor",
    "open_store",
    "to_utc_naive",
]

RISK_LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
"""Risk levels, lowest first (the same as :data:`txfast.rules.LEVELS`)."""

ACTIONS = ("approve", "review", "alert", "block")
"""Actions (the same as :data:`txfast.rules.ACTIONS`); every action but ``approve`` alerts."""

LABELS = ("fraud", "legit")
"""Analyst labels accepted by :meth:`Store.record_feedback`."""

STATUS_BY_LABEL = {"fraud": "confirmed_fraud", "legit": "false_positive"}
"""The status an alert takes when it is labelled."""

STATUSES = ("open", *STATUS_BY_LABEL.values())
"""Alert statuses: ``open`` until an analyst labels it."""

ROLES = ("viewer", "analyst", "admin")
"""API key roles, least privileged first: viewers read, analysts also label, admins also
promote models and manage keys."""

SORTS = ("time", "score")
"""Alert list orders: newest first, or highest score first."""

MAX_PAGE = 10_000

LABEL_SETTLE_S = 2.0
"""Age a label must reach before :meth:`Store.label_events` hands it out (commit order)."""
"""Largest ``limit`` of one alert page."""


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """One batch ready to be stored.

    Attributes:
        transactions: One row per scored transaction (schema: :data:`TRANSACTION_SCHEMA`).
        alerts: The rows that became alerts, with ``rules``, ``features`` and ``explanation``.
        dead_letters: Rejected payloads.
        source: Where the batch came from (``file:PATH``, ``simulate:SEED``, ``kafka:TOPIC``…);
            with each dead letter's position it forms the dead letter's idempotency key.
        feature_names: Names of the alerts' feature columns, in order. When given, they are
            recorded with the batch's model version (see :meth:`Store.model_versions`), so
            :meth:`Store.get_transaction` can name each feature value.
    """

    transactions: pa.Table
    alerts: pa.Table
    dead_letters: list[Rejected]
    source: str
    feature_names: tuple[str, ...] | None = None


# -- typed arguments and results --------------------------------------------------------------


class AlertQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Filters of an alert list; every filter given must hold (empty tuples: no filter).

    Attributes:
        card_id: Only this card.
        user_id: Only this user.
        merchant_id: Only this merchant.
        country: Only this country (ISO 3166-1 alpha-2).
        risk_levels: Any of these risk levels (``LOW`` … ``CRITICAL``).
        actions: Any of these actions (``review``, ``alert``, ``block``).
        statuses: Any of these statuses (``open``, ``confirmed_fraud``, ``false_positive``…).
        since: Transactions at or after this time.
        until: Transactions before this time.
    """

    card_id: str | None = None
    user_id: str | None = None
    merchant_id: str | None = None
    country: str | None = None
    risk_levels: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        """Normalise risk levels to upper case and check them.

        Raises:
            StoreError: For an unknown risk level or action.
        """
        levels = tuple(level.upper() for level in self.risk_levels)
        for level in levels:
            if level not in RISK_LEVELS:
                raise StoreError(f"unknown risk level {level!r}; use {', '.join(RISK_LEVELS)}")
        for action in self.actions:
            if action not in ACTIONS:
                raise StoreError(f"unknown action {action!r}; use {', '.join(ACTIONS)}")
        if levels != self.risk_levels:
            msgspec.structs.force_setattr(self, "risk_levels", levels)


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert as listed (without its feature vector; see :class:`TransactionDetail`)."""

    transaction_id: str
    ts: datetime
    card_id: str
    user_id: str | None
    merchant_id: str
    merchant_category: str | None
    country: str | None
    channel: str | None
    amount: float
    currency: str
    amount_base: float
    score: float
    risk_level: str
    action: str
    model_version: str
    rules: list[str]
    status: str
    label: str | None
    created_at: datetime


class FeedAlert(NamedTuple):
    """One alert of the live feed, as the database encoded it.

    Attributes:
        transaction_id: The alert's transaction.
        created_us: Its ``created_at`` in microseconds since the Unix epoch (UTC).
        risk_level: Its risk level.
        json: The :class:`Alert` as JSON.
    """

    transaction_id: str
    created_us: int
    risk_level: str
    json: str


class AlertPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of alerts.

    Attributes:
        items: The alerts, in the requested order.
        next_cursor: Pass it back as ``cursor`` for the next page; ``None`` on the last page.
    """

    items: list[Alert]
    next_cursor: str | None


class LabelRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One analyst label (labels are never overwritten; the latest one counts)."""

    transaction_id: str
    label: str
    analyst: str
    note: str | None
    labelled_at: datetime


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the append-only audit log."""

    id: int
    logged_at: datetime
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]


class TransactionDetail(msgspec.Struct, frozen=True, kw_only=True):
    """Everything stored about one transaction.

    Attributes:
        is_alert: Whether it became an alert; ``rules``, ``status``, ``features``,
            ``feature_version`` and ``explanation`` are only stored for alerts.
        features: Feature name → value (alerts only, when features are stored). Names come
            from the scoring model's recorded feature names, else the default feature set
            when it has as many columns, else ``f0``, ``f1``….
        label: The latest analyst label (``fraud`` or ``legit``), else ``None``.
        labels: Every label given, oldest first.
        audit: Audit entries about this transaction, oldest first.
        shadow_score: The shadow (challenger) model's score, when one scored it.
        shadow_model_version: The shadow model's version, when one scored it.
    """

    transaction_id: str
    ts: datetime
    card_id: str
    user_id: str | None
    merchant_id: str
    merchant_category: str | None
    country: str | None
    channel: str | None
    amount: float
    currency: str
    amount_base: float
    score: float
    is_anomaly: bool
    risk_level: str
    action: str
    model_version: str
    is_alert: bool
    rules: list[str]
    status: str | None
    explanation: str | None
    feature_version: str | None
    features: dict[str, float] | None
    label: str | None
    labels: list[LabelRecord]
    audit: list[AuditEntry]
    shadow_score: float | None = None
    shadow_model_version: str | None = None


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as stored (its token is never stored, only the token's SHA-256).

    Attributes:
        id: The key's id (``txfast keys revoke ID``).
        name: Who or what uses it; the actor of the audit entries written with it.
        role: ``viewer``, ``analyst`` or ``admin`` (see :data:`ROLES`).
        prefix: The token's first characters, to recognise it without revealing it.
        created_at: When it was created.
        created_by: Who created it.
        revoked_at: When it was revoked, else ``None``.
    """

    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked (a revoked key authenticates nothing)."""
        return self.revoked_at is not None


class ModelVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A model version seen by the store (first batch scored by it, or recorded)."""

    version: str
    metadata: dict[str, Any]
    first_seen: datetime


class Breakdown(msgspec.Struct, frozen=True, kw_only=True):
    """Counts for one country, merchant or hour of day.

    Attributes:
        key: The country (``""`` when unknown), merchant id or hour of day (0–23, UTC).
        transactions: Stored transactions.
        alerts: Alerts.
        amount: Sum of the stored transactions' amounts in the base currency.
        by_risk: Stored transactions per risk level (every level present, maybe 0).
    """

    key: str | int
    transactions: int
    alerts: int
    amount: float
    by_risk: dict[str, int]


class DailyRate(msgspec.Struct, frozen=True, kw_only=True):
    """Alerts per stored transaction on one UTC day."""

    day: date
    transactions: int
    alerts: int
    anomaly_rate: float | None


class DailyFalsePositives(msgspec.Struct, frozen=True, kw_only=True):
    """Labelled alerts of one UTC day (the alerts' transaction day) and how many were legit."""

    day: date
    labelled: int
    false_positives: int
    false_positive_rate: float


class ModelCount(msgspec.Struct, frozen=True, kw_only=True):
    """Stored transactions and alerts scored by one model version."""

    model_version: str
    transactions: int
    alerts: int


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Dashboard statistics of a time window (see :meth:`Store.stats`)."""

    since: datetime
    until: datetime
    transactions: int
    alerts: int
    by_country: list[Breakdown]
    by_merchant: list[Breakdown]
    by_hour: list[Breakdown]
    daily: list[DailyRate]
    false_positives: list[DailyFalsePositives]
    by_model_version: list[ModelCount]


class PruneResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Store.prune` removed (and archived)."""

    cutoff: datetime
    transactions: int
    alerts: int
    dead_letters: int
    kept_labelled: int
    archive: list[str]


# -- cursors and times ------------------------------------------------------------------------


def to_utc_naive(value: datetime | None) -> datetime | None:
    """A datetime as stored: naive UTC (aware values are converted; naive ones are UTC)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def utc(value: datetime) -> datetime:
    """A stored (naive UTC) datetime made timezone-aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1)


def encode_cursor(sort: str, key: datetime | float, transaction_id: str) -> str:
    """The opaque cursor after the row with this sort key and id.

    Args:
        sort: ``time`` or ``score``.
        key: The row's ``ts`` (naive UTC) or ``score``.
        transaction_id: The row's id (the tie breaker).

    Returns:
        A URL-safe string.
    """
    if sort == "time":
        assert isinstance(key, datetime)
        delta = key - _EPOCH
        value: float | int = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    else:
        assert not isinstance(key, datetime)
        value = float(key)
    raw = json.dumps([1, sort, value, transaction_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[datetime | float, str]:
    """The sort key and transaction id a cursor points after.

    Args:
        cursor: A cursor from :attr:`AlertPage.next_cursor`.
        sort: The sort order of the request; must be the cursor's.

    Raises:
        InvalidCursorError: If the cursor is malformed or was made for another order.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, cursor_sort, value, tid = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursorError("malformed cursor") from None
    if version != 1 or not isinstance(tid, str) or not isinstance(value, int | float):
        raise InvalidCursorError("malformed cursor")
    if cursor_sort != sort:
        raise InvalidCursorError(f"the cursor was made for sort={cursor_sort!r}, not {sort!r}")
    if sort == "time":
        from datetime import timedelta

        return _EPOCH + timedelta(microseconds=int(value)), tid
    return float(value), tid


# -- the interface ----------------------------------------------------------------------------


class Store(abc.ABC):
    """Durable storage of scored transactions, alerts, dead letters, labels and audit.

    Writes are idempotent: alerts and transactions by ``transaction_id``, dead letters by
    ``(source, position)``; writing the same batch twice stores it once, and the first write
    wins (a replay never overwrites an analyst's status). The statistics rollups are updated
    in the same transaction from the rows actually inserted, so a replay does not count
    twice.
    """

    url: str
    """Where the store is (passwords redacted)."""

    applied_migrations: list[int]
    """Schema versions migrated when this store was opened (empty: it was current)."""

    # -- schema ---------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def schema_version(self) -> int:
        """The applied schema version."""

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply the pending schema migrations, in order, each in one transaction.

        Returns:
            The versions applied (empty when the schema was current).

        Raises:
            StoreError: If the schema is newer than this txfast or a migration fails.
        """

    # -- writes ---------------------------------------------------------------------------

    @abc.abstractmethod
    def write_batch(self, batch: ScoredBatch, *, history: str = "all") -> None:
        """Write one batch, idempotently by transaction id. Called once per pipeline batch.

        The batch is durable when this returns; a store may make it visible to readers a
        little later (DuckDB's ``defer_ms``; see :meth:`flush_deferred`). A batch is one
        transaction, except on DuckDB a large batch (2,048 transactions or more, model versions
        seen before), whose transactions and alerts are committed by two transactions at once.
        Each counts exactly the rows it inserted in the statistics: when one fails, this
        raises, and writing the batch again (the pipeline's retry, or the replay that follows
        a crash) stores what is missing and nothing twice.

        Args:
            batch: The batch.
            history: ``all`` stores every transaction, ``alerts`` only alerted ones,
                ``none`` no transaction history.
        """

    @abc.abstractmethod
    def record_feedback(
        self, transaction_id: str, label: str, analyst: str, note: str | None = None
    ) -> LabelRecord:
        """Record an analyst's label for a transaction (an alert, or a missed fraud).

        Stores the label (who, when, what, note), sets the transaction's ``label`` column
        (1 fraud, 0 legit) and, for an alert, its ``label`` and status
        (:data:`STATUS_BY_LABEL`), and writes an audit entry, in one transaction.

        Args:
            transaction_id: The transaction.
            label: ``fraud`` or ``legit``.
            analyst: Who labels it.
            note: Free text.

        Returns:
            The stored label.

        Raises:
            NotFoundError: If the store holds no such transaction.
            StoreError: For an unknown label or an empty analyst.
        """

    @abc.abstractmethod
    def record_model_version(self, version: str, metadata: dict[str, Any]) -> None:
        """Record (or replace) a model version's metadata, with an audit entry.

        Args:
            version: The model version as stored with each scored transaction.
            metadata: JSON-serialisable metadata (e.g. the registry's ``metadata.json``;
                ``feature_names`` there names the alerts' feature values).
        """

    @abc.abstractmethod
    def audit(
        self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None
    ) -> int:
        """Append an entry to the audit log (there is no update or delete).

        Returns:
            The entry's id.
        """

    @abc.abstractmethod
    def prune(
        self, older_than: datetime, *, archive_dir: str | Path | None = None, actor: str = "txfast"
    ) -> PruneResult:
        """Delete (and optionally archive) what is older than a cutoff.

        Removes transactions and alerts whose ``ts`` is before ``older_than``, and dead
        letters received before it, except labelled transactions and alerts (any row of the
        ``labels`` table, or a non-null ``label``), which are kept with their transaction.
        With ``archive_dir`` the removed rows are first written to Parquet, one file per table
        and run (``<dir>/<table>/<table>-<run>.parquet``), inside the same transaction
        snapshot as the delete. Statistics rollups, labels and the audit log are kept.

        Args:
            older_than: The cutoff (naive values are UTC).
            archive_dir: Where to archive the removed rows; ``None`` deletes only.
            actor: Recorded in the audit entry.
        """

    # -- reads ----------------------------------------------------------------------------

    @abc.abstractmethod
    def list_alerts(
        self,
        query: AlertQuery | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        sort: str = "time",
    ) -> AlertPage:
        """One page of alerts matching ``query``, with keyset pagination.

        Args:
            query: Filters (none: every alert).
            limit: Page size (1–10,000).
            cursor: ``next_cursor`` of the previous page, for the next one.
            sort: ``time`` (newest first) or ``score`` (highest first); ties by
                ``transaction_id`` descending.

        Raises:
            InvalidCursorError: For a malformed cursor or one of another sort order.
            StoreError: For a bad limit or sort.
        """

    @abc.abstractmethod
    def get_transaction(self, transaction_id: str) -> TransactionDetail | None:
        """Everything stored about one transaction, or ``None`` if it is unknown."""

    @abc.abstractmethod
    def labels(self, since: datetime | None = None, until: datetime | None = None) -> pa.Table:
        """The latest label of every labelled transaction, for training.

        Args:
            since: Transactions at or after this time.
            until: Transactions before this time.

        Returns:
            Columns ``transaction_id``, ``ts``, ``card_id``, ``merchant_id``, ``label``
            (int8: 1 fraud, 0 legit), ``labelled_at``; ordered by ``ts``.
        """

    @abc.abstractmethod
    def label_events(self, after: int, *, limit: int = 100_000) -> pa.Table:
        """Label events for the live feature state, in the order they were recorded.

        Each transaction's *first* label only (a correction is not a second event), with a
        store id above ``after``, recorded at least :data:`LABEL_SETTLE_S` seconds ago: ids
        are assigned before commit, so a label committing late could otherwise appear
        behind a cursor that already passed its id.

        Returns:
            Columns ``id`` (int64, ascending), ``card_id``, ``merchant_id``, ``label``
            (int8: 1 fraud, 0 legit), ``labelled_at``; at most ``limit`` rows.
        """

    @abc.abstractmethod
    def stats(self, since: datetime, until: datetime, *, top_merchants: int = 10) -> Stats:
        """Dashboard statistics for ``[since, until)``, read from rollup tables.

        The hourly rollup gives the risk distribution by hour of day (UTC), the daily anomaly
        rate and the counts per model version, for the UTC hours starting in the window.
        Daily rollups give the risk distribution by country and the ``top_merchants``
        merchants with the most alerts (ties by merchant id), for the UTC days starting in
        the window. ``transactions`` counts the rows stored in history (all of them with
        ``history = "all"``); rollups are not pruned by retention. False positives come from
        the latest labels of the window's alerts, per day of the alerts' transactions.
        """

    @abc.abstractmethod
    def model_versions(self) -> list[ModelVersion]:
        """Every model version seen or recorded, oldest first."""

    @abc.abstractmethod
    def audit_log(
        self,
        *,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit entries matching every filter given, newest first."""

    @abc.abstractmethod
    def alert_feed(
        self,
        since: datetime,
        *,
        after_id: str | None = None,
        limit: int = 1000,
        ids_only: bool = False,
    ) -> list[FeedAlert]:
        """Alerts by creation time (when they were stored), oldest first: the live feed.

        Each as its id, creation time, risk level and JSON (encoded by the database).

        Args:
            since: Alerts created at or after this time.
            after_id: With it, only alerts after ``(since, after_id)`` in
                ``(created_at, transaction_id)`` order (the next page of a full one).
            limit: Most alerts returned (1–10,000).
            ids_only: Only the ids and creation times (``risk_level`` and ``json`` empty):
                what a poller needs to tell the new alerts from those it has seen.
        """

    def alerts_since(
        self, since: datetime, *, after_id: str | None = None, limit: int = 1000
    ) -> list[Alert]:
        """The alerts of :meth:`alert_feed`, decoded."""
        feed = self.alert_feed(since, after_id=after_id, limit=limit)
        return [msgspec.json.decode(a.json, type=Alert) for a in feed]

    @abc.abstractmethod
    def latest_alert_time(self) -> datetime | None:
        """The creation time of the newest alert, or ``None`` when there is none."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Check that the store answers a trivial query.

        Raises:
            StoreError: If it does not (closed, unreachable).
        """

    # -- API keys -------------------------------------------------------------------------

    @abc.abstractmethod
    def create_api_key(self, name: str, role: str, *, actor: str = "txfast") -> tuple[int, str]:
        """Create an API key, with an audit entry.

        The token is random (32 bytes from :mod:`secrets`); only its SHA-256 is stored, so it
        is returned here once and can never be shown again.

        Args:
            name: Who or what uses it; unique among the keys not revoked.
            role: ``viewer``, ``analyst`` or ``admin``.
            actor: Who creates it (audit).

        Returns:
            The key's id and its token.

        Raises:
            StoreError: For an unknown role, an empty name or one taken by an active key.
        """

    @abc.abstractmethod
    def lookup_api_key(self, token: str) -> ApiKey | None:
        """The key a token belongs to (revoked or not), or ``None`` for an unknown token."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: int, *, actor: str = "txfast") -> ApiKey:
        """Revoke a key (idempotent), with an audit entry.

        Returns:
            The key, revoked.

        Raises:
            NotFoundError: If there is no such key.
        """

    @abc.abstractmethod
    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""

    @abc.abstractmethod
    def count(self, table: str) -> int:
        """Rows in ``alerts``, ``transactions`` or ``dead_letters``."""

    @abc.abstractmethod
    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SQL statement and return its rows (for the CLI and tests)."""

    def flush_deferred(self) -> None:  # noqa: B027 - optional, no-op by default
        """Make every written batch visible to readers now.

        A store may make small batches durable before it makes them visible (DuckDB's
        ``defer_ms``); this writes them in full. A no-op for stores that do not defer.
        """

    def add_visible_listener(self, listener: Callable[[], None]) -> None:  # noqa: B027
        """Call ``listener`` (on any thread) whenever deferred batches become visible.

        Only stores that defer call it (see :meth:`flush_deferred`); for the others a batch
        is visible when :meth:`write_batch` returns, and this is a no-op.
        """

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
            :class:`~txfast.store.postgres_store.PostgresStore`); both take ``read_only`` and
            ``migrate`` (apply pending migrations on open, default true; when false an older
            schema is refused until ``txfast db upgrade`` runs).

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
