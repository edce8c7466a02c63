"""Vectorised generator of scored batches for the store benchmark (no per-row Python)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast.store import ScoredBatch

LEVELS = np.array(["LOW", "MEDIUM", "HIGH", "CRITICAL"])
COUNTRIES = np.array(
    "FR DE ES IT NL BE PT IE AT CH GB SE NO DK FI PL CZ HU RO GR "
    "US CA BR MX JP CN IN AU ZA NG".split()
)
CATEGORIES = np.array(
    "5411 5812 5541 5999 4111 5732 5944 4829 6051 5815 5816 7011 4511 5311 5912".split()
)
CHANNELS = np.array(["pos", "ecom", "atm", "moto", "transfer"])
CURRENCIES = np.array(["EUR", "USD", "GBP", "CHF"])
RATES = np.array([1.0, 0.92, 1.17, 1.05])
N_FEATURES = 37
DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Shape:
    """The size of a generated history."""

    transactions: int
    days: int
    cards: int
    merchants: int
    alert_rate: float = 0.05


def _strings(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(values).cast(pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _pick(options: np.ndarray, idx: np.ndarray) -> pa.Array:
    """Dictionary-decoded strings: ``options[idx]`` built by Arrow, not Python."""
    return pa.DictionaryArray.from_arrays(
        pa.array(idx.astype(np.int32)), pa.array(options.tolist())
    ).cast(pa.string())


def batches(shape: Shape, batch_size: int = 8192, seed: int = 1) -> Iterator[ScoredBatch]:
    """Scored batches in time order covering ``shape.days`` days from 2026-01-01.

    Risk levels: LOW 93 %, MEDIUM 2 %, then HIGH/CRITICAL for ``alert_rate`` (alerts); two
    model versions (v1 for the first two thirds, v2 after).
    """
    rng = np.random.default_rng(seed)
    n = shape.transactions
    span = shape.days * DAY_MS
    for lo in range(0, n, batch_size):
        k = min(batch_size, n - lo)
        pos = np.arange(lo, lo + k, dtype=np.int64)
        ts_ms = START_MS + (pos * span) // n + rng.integers(0, max(1, span // n), k)
        ts = pa.array(ts_ms, pa.int64()).cast(pa.timestamp("ms"))
        day = (ts_ms - START_MS) // DAY_MS
        tid = pc.binary_join_element_wise(
            "tx-", _strings("", day, 3), "-", _strings("", pos, 9), ""
        )
        card = rng.integers(0, shape.cards, k)
        u = rng.random(k)
        level = np.where(
            u < shape.alert_rate * 0.8,
            2,
            np.where(u < shape.alert_rate, 3, np.where(u < shape.alert_rate + 0.02, 1, 0)),
        )
        is_alert = level >= 2
        action_idx = np.where(is_alert, np.where(level == 3, 2, rng.integers(0, 2, k)), 3)
        actions = np.array(["alert", "review", "block", "approve"])
        cur = rng.integers(0, len(CURRENCIES), k)
        amount = np.round(np.exp(rng.normal(3.5, 1.2, k)), 2)
        score = np.where(
            level == 0,
            rng.random(k) * 0.95,
            np.where(level == 1, 0.95 + rng.random(k) * 0.04, 0.99 + rng.random(k) * 0.01),
        ).astype(np.float32)
        common = {
            "transaction_id": tid,
            "ts": ts,
            "card_id": _strings("card_", card, 7),
            "user_id": _strings("user_", card // 2, 7),
            "merchant_id": _strings("merch_", rng.zipf(1.3, k) % shape.merchants, 6),
            "merchant_category": _pick(CATEGORIES, rng.integers(0, len(CATEGORIES), k)),
            "country": _pick(COUNTRIES, np.minimum(rng.geometric(0.25, k) - 1, len(COUNTRIES) - 1)),
            "channel": _pick(CHANNELS, rng.integers(0, len(CHANNELS), k)),
            "amount": pa.array(amount),
            "currency": _pick(CURRENCIES, cur),
            "amount_base": pa.array(np.round(amount * RATES[cur], 2)),
            "score": pa.array(score, pa.float32()),
            "is_anomaly": pa.array(level >= 2),
            "risk_level": _pick(LEVELS, level),
            "action": _pick(actions, action_idx),
            "model_version": _pick(np.array(["v1", "v2"]), (pos >= (2 * n) // 3).astype(np.int32)),
        }
        tx = pa.table(
            {
                **common,
                "label": pa.nulls(k, pa.int8()),
                "scored_at": ts,
            }
        )
        rows = pa.array(np.flatnonzero(is_alert))
        a = len(rows)
        alerts = pa.table({name: col.take(rows) for name, col in common.items()})
        rule_idx = rng.integers(0, 3, a)
        rules = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(rule_idx > 0)]).astype(np.int32)),
            _pick(
                np.array(["critical_high_value", "review_risky_category"]),
                (rule_idx[rule_idx > 0] - 1),
            ),
        )
        feats = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (a + 1) * N_FEATURES, N_FEATURES, dtype=np.int32)),
            pa.array(rng.random(a * N_FEATURES, dtype=np.float32)),
        )
        alerts = (
            alerts.append_column("rules", rules)
            .append_column("feature_version", pa.repeat(pa.scalar("txfast-features/1"), a))
            .append_column("features", feats)
            .append_column("created_at", ts.take(rows))
        )
        yield ScoredBatch(tx, alerts, [], f"bench:{seed}")
