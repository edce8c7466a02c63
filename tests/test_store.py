"""The DuckDB store: schema, one transaction per batch, idempotency, history modes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from txfast.decode import Rejected
from txfast.exceptions import StoreError
from txfast.store import ScoredBatch, open_store
from txfast.store.duckdb_store import SCHEMA_VERSION


def batch(ids: list[str], actions: list[str], source: str = "test") -> ScoredBatch:
    n = len(ids)
    ts = pa.array([1_767_225_600_000 + i for i in range(n)], pa.int64()).cast(pa.timestamp("ms"))
    common = {
        "transaction_id": pa.array(ids, pa.large_string()),
        "ts": ts,
        "card_id": pa.array(["c"] * n),
        "user_id": pa.nulls(n, pa.string()),
        "merchant_id": pa.array(["m"] * n),
        "merchant_category": pa.nulls(n, pa.string()),
        "country": pa.nulls(n, pa.string()),
        "channel": pa.nulls(n, pa.string()),
        "amount": pa.array([1.0] * n),
        "currency": pa.array(["EUR"] * n),
        "amount_base": pa.array([1.0] * n),
        "score": pa.array([0.5] * n, pa.float32()),
        "is_anomaly": pa.array([a != "approve" for a in actions]),
        "risk_level": pa.array(["LOW"] * n),
        "action": pa.array(actions),
        "model_version": pa.array(["v1"] * n),
    }
    tx = pa.table({**common, "label": pa.nulls(n, pa.int8()), "scored_at": ts})
    rows = [i for i, a in enumerate(actions) if a != "approve"]
    alerts = pa.table({k: v.take(pa.array(rows, pa.int64())) for k, v in common.items()})
    k = len(rows)
    alerts = (
        alerts.append_column("rules", pa.array([["r"]] * k, pa.list_(pa.string())))
        .append_column("feature_version", pa.array(["f/1"] * k))
        .append_column("features", pa.array([[1.0, 2.0]] * k, pa.list_(pa.float32())))
        .append_column("created_at", ts.take(pa.array(rows, pa.int64())))
    )
    dlq = [Rejected(7, "invalid_json", "bad", b"{")]
    return ScoredBatch(tx, alerts, dlq, source)


def test_schema_is_versioned(tmp_path) -> None:
    s = open_store(f"duckdb:{tmp_path / 's.duckdb'}")
    assert s.schema_version == SCHEMA_VERSION
    s.query("INSERT INTO schema_migrations (version) VALUES (?)", [SCHEMA_VERSION + 1])
    s.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(f"duckdb:{tmp_path / 's.duckdb'}")


def test_writes_are_idempotent_and_first_write_wins(tmp_path) -> None:
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}") as s:
        s.write_batch(batch(["a", "b", "c"], ["approve", "alert", "review"]))
        s.query("UPDATE alerts SET status = 'closed' WHERE transaction_id = 'b'")
        s.write_batch(batch(["a", "b", "c", "d"], ["approve", "alert", "review", "alert"]))
        assert s.count("transactions") == 4
        assert s.count("alerts") == 3
        assert s.count("dead_letters") == 1
        assert s.query("SELECT status FROM alerts WHERE transaction_id = 'b'") == [("closed",)]
        assert s.query("SELECT features FROM alerts WHERE transaction_id = 'd'") == [([1.0, 2.0],)]


@pytest.mark.parametrize(("history", "expected"), [("all", 3), ("alerts", 2), ("none", 0)])
def test_history_modes(tmp_path, history: str, expected: int) -> None:
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}") as s:
        s.write_batch(batch(["a", "b", "c"], ["approve", "alert", "review"]), history=history)
        assert s.count("transactions") == expected
        assert s.count("alerts") == 2


def test_unknown_store_scheme_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mongodb://x")
