"""Test data for the store tests: scored batches built from plain rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa

from txfast.decode import Rejected
from txfast.store import ScoredBatch

T0 = datetime(2026, 3, 1)
"""A Sunday, midnight UTC: the first day of the test histories."""


@dataclass
class Row:
    """One scored transaction; an alert unless its action is ``approve``."""

    id: str
    ts: datetime
    card: str = "c1"
    user: str | None = "u1"
    merchant: str = "m1"
    country: str | None = "FR"
    risk: str = "LOW"
    action: str = "approve"
    score: float = 0.5
    amount: float = 10.0
    model: str = "v1"
    category: str | None = "5411"
    channel: str | None = "pos"
    features: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    created: datetime | None = None
    """When the alert was stored (``created_at``); default: its event time."""
    explanation: str | None = None

    @property
    def is_alert(self) -> bool:
        return self.action != "approve"


def scored_batch(
    rows: list[Row],
    *,
    source: str = "test",
    dead_letters: list[Rejected] | None = None,
    feature_names: tuple[str, ...] | None = None,
) -> ScoredBatch:
    """The batch the pipeline would build for these rows (amounts in EUR)."""
    n = len(rows)
    ts = pa.array([r.ts for r in rows], pa.timestamp("ms"))
    common = {
        "transaction_id": pa.array([r.id for r in rows], pa.string()),
        "ts": ts,
        "card_id": pa.array([r.card for r in rows], pa.string()),
        "user_id": pa.array([r.user for r in rows], pa.string()),
        "merchant_id": pa.array([r.merchant for r in rows], pa.string()),
        "merchant_category": pa.array([r.category for r in rows], pa.string()),
        "country": pa.array([r.country for r in rows], pa.string()),
        "channel": pa.array([r.channel for r in rows], pa.string()),
        "amount": pa.array([r.amount for r in rows], pa.float64()),
        "currency": pa.array(["EUR"] * n, pa.string()),
        "amount_base": pa.array([r.amount for r in rows], pa.float64()),
        "score": pa.array([r.score for r in rows], pa.float32()),
        "is_anomaly": pa.array([r.risk in ("HIGH", "CRITICAL") for r in rows]),
        "risk_level": pa.array([r.risk for r in rows], pa.string()),
        "action": pa.array([r.action for r in rows], pa.string()),
        "model_version": pa.array([r.model for r in rows], pa.string()),
    }
    tx = pa.table({**common, "label": pa.nulls(n, pa.int8()), "scored_at": ts})
    idx = pa.array([i for i, r in enumerate(rows) if r.is_alert], pa.int64())
    alerts = pa.table({k: v.take(idx) for k, v in common.items()})
    picked = [rows[i] for i in idx.to_pylist()]
    alerts = (
        alerts.append_column(
            "rules", pa.array([[f"rule_{r.risk.lower()}"] for r in picked], pa.list_(pa.string()))
        )
        .append_column("feature_version", pa.array(["test/1"] * len(picked), pa.string()))
        .append_column("features", pa.array([r.features for r in picked], pa.list_(pa.float32())))
        .append_column(
            "created_at",
            pa.array([r.created or r.ts for r in picked], pa.timestamp("ms")),
        )
    )
    if any(r.explanation is not None for r in picked):
        alerts = alerts.append_column(
            "explanation", pa.array([r.explanation for r in picked], pa.string())
        )
    return ScoredBatch(tx, alerts, dead_letters or [], source, feature_names)


def history(days: int = 3, per_hour: int = 2) -> list[Row]:
    """A small varied history: cards, users, merchants, countries, levels, actions, models."""
    levels = ["LOW", "LOW", "MEDIUM", "HIGH", "CRITICAL", "LOW", "HIGH"]
    actions = {"LOW": "approve", "MEDIUM": "approve", "HIGH": "alert", "CRITICAL": "block"}
    countries = ["FR", "DE", None, "ES"]
    out = []
    k = 0
    for hour in range(days * 24):
        for j in range(per_hour):
            level = levels[k % len(levels)]
            action = actions[level]
            if level == "HIGH" and k % 3 == 0:
                action = "review"
            out.append(
                Row(
                    id=f"t{k:05d}",
                    ts=T0 + timedelta(hours=hour, minutes=7 * j + k % 5),
                    card=f"c{k % 5}",
                    user=None if k % 11 == 0 else f"u{k % 4}",
                    merchant=f"m{k % 6}",
                    country=countries[k % len(countries)],
                    risk=level,
                    action=action,
                    score=round(0.3 + 0.7 * ((k * 37) % 100) / 100, 4),
                    amount=float(5 + (k * 13) % 200),
                    model="v1" if hour < days * 12 else "v2",
                    features=[float(k), float(k % 7), 0.5],
                )
            )
            k += 1
    return out
