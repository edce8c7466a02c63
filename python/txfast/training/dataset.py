"""A labelled history for training and evaluation: features plus card keys and days.

Features come from :func:`txfast.history.replay_features`, the one replay of a history
through the native engine. The card of each row (needed for card-level metrics) is read
by decoding the same file once more with the same decoder, which accepts exactly the same
rows in the same order; the transaction ids are compared to prove it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from txfast.config import Settings
from txfast.history import FeatureSet, replay_features
from txfast.sources import ColumnMapping
from txfast.training.thresholds import DAY_MS

__all__ = ["LabelledHistory", "load_history"]


@dataclass(frozen=True, slots=True)
class LabelledHistory:
    """Features of a history with what evaluation needs besides them.

    Attributes:
        features: The replayed features (``X``, ``label``, ``ts_ms`` …).
        card: Card key of each row (the decoder's 64-bit hash of ``card_id``).
        amount: Amount in the base currency of each row.
        day: UTC day number of each row (days since 1970-01-01).
        source: Where the history came from.
    """

    features: FeatureSet
    card: np.ndarray
    amount: np.ndarray
    day: np.ndarray
    source: str

    @property
    def rows(self) -> int:
        """Number of accepted transactions."""
        return int(self.features.X.shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether the history has both fraud and legitimate labels."""
        y = self.features.label
        return bool((y == 1).any() and (y == 0).any())

    def describe(self) -> dict[str, object]:
        """Size, period and fraud rate, for reports."""
        y = self.features.label
        known = y >= 0
        first, last = (int(self.day.min()), int(self.day.max())) if self.rows else (0, -1)
        return {
            "source": self.source,
            "rows": self.rows,
            "rejected": len(self.features.rejected),
            "labelled": int(known.sum()),
            "frauds": int((y == 1).sum()),
            "fraud_rate": float((y == 1).sum() / max(1, int(known.sum()))),
            "cards": int(np.unique(self.card).size),
            "first_day": day_iso(first) if self.rows else None,
            "last_day": day_iso(last) if self.rows else None,
            "days": last - first + 1,
        }


def day_iso(day: int) -> str:
    """ISO date of a UTC day number."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date().isoformat()


def load_history(
    settings: Settings, path: str | Path, mapping: ColumnMapping | None = None
) -> LabelledHistory:
    """Replay a history file through the feature engine and attach cards and days.

    Args:
        settings: Decoder and feature settings.
        path: History file (``.jsonl``, ``.csv`` or ``.parquet``).
        mapping: Column mapping for other column names.

    Returns:
        The labelled history (labels are ``-1`` where the file has none).
    """
    fs = replay_features(settings, path, mapping)
    amount_col = fs.feature_names.index("amount_base")
    return LabelledHistory(
        features=fs,
        card=fs.card,
        amount=fs.X[:, amount_col].astype(np.float64),
        day=(np.asarray(fs.ts_ms, dtype=np.int64) // DAY_MS),
        source=str(path),
    )
