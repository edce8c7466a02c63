"""Alert and history stores behind one interface.

``open_store("duckdb:PATH")`` opens the embedded DuckDB store (the default);
``open_store("postgresql://…")`` the PostgreSQL one. Both implement
:class:`~txfast.store.base.Store`: bulk idempotent batch writes, alert lists with keyset
pagination, transaction details, analyst feedback and labels, dashboard statistics, model
versions, an append-only audit log, retention and versioned schema migrations.
"""

from txfast.store.base import (
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
    PruneResult,
    ScoredBatch,
    Stats,
    Store,
    TransactionDetail,
    open_store,
)

__all__ = [
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
    "open_store",
]
