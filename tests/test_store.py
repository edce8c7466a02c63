"""The stores (DuckDB and PostgreSQL): schema, one transaction per (small) batch, idempotency,
history modes, concurrent use. Every test runs against both backends."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from txfast.decode import Rejected
from txfast.exceptions import StoreError
from txfast.store import ScoredBatch, open_store, postgres_store
from txfast.store.duckdb_store import SCHEMA_VERSION


def schema_version_of(url: str) -> int:
    return postgres_store.SCHEMA_VERSION if url.startswith("postgres") else SCHEMA_VERSION


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


def test_schema_is_versioned(store_url: str) -> None:
    version = schema_version_of(store_url)
    s = open_store(store_url)
    assert s.schema_version == version
    s.query("INSERT INTO schema_migrations (version) VALUES (?)", [version + 1])
    s.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(store_url)


def test_writes_are_idempotent_and_first_write_wins(store_url: str) -> None:
    with open_store(store_url) as s:
        s.write_batch(batch(["a", "b", "c"], ["approve", "alert", "review"]))
        s.query("UPDATE alerts SET status = 'closed' WHERE transaction_id = 'b'")
        s.write_batch(batch(["a", "b", "c", "d"], ["approve", "alert", "review", "alert"]))
        assert s.count("transactions") == 4
        assert s.count("alerts") == 3
        assert s.count("dead_letters") == 1
        assert s.query("SELECT status FROM alerts WHERE transaction_id = 'b'") == [("closed",)]
        assert s.query("SELECT features FROM alerts WHERE transaction_id = 'd'") == [([1.0, 2.0],)]


@pytest.mark.parametrize(("history", "expected"), [("all", 3), ("alerts", 2), ("none", 0)])
def test_history_modes(store_url: str, history: str, expected: int) -> None:
    with open_store(store_url) as s:
        s.write_batch(batch(["a", "b", "c"], ["approve", "alert", "review"]), history=history)
        assert s.count("transactions") == expected
        assert s.count("alerts") == 2


def test_unknown_store_scheme_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mongodb://x")


def test_a_failed_batch_stores_nothing(store_url: str) -> None:
    with open_store(store_url) as s:
        bad = batch(["a", "b"], ["approve", "alert"])
        alerts = bad.alerts.set_column(
            bad.alerts.schema.get_field_index("card_id"), "card_id", pa.nulls(1, pa.string())
        )
        with pytest.raises(StoreError):
            s.write_batch(ScoredBatch(bad.transactions, alerts, bad.dead_letters, bad.source))
        assert s.count("alerts") == s.count("transactions") == s.count("dead_letters") == 0
        s.write_batch(batch(["a", "b"], ["approve", "alert"]))
        assert s.count("transactions") == 2


def test_query_placeholders_and_literals(store_url: str) -> None:
    with open_store(store_url) as s:
        s.write_batch(batch(["a%?", "b"], ["alert", "alert"]))
        rows = s.query(
            "SELECT transaction_id, '?%' FROM alerts WHERE transaction_id LIKE ? ORDER BY 1",
            ["a%"],
        )
        assert rows == [("a%?", "?%")]
        assert s.query(
            "SELECT count(*) FROM alerts WHERE card_id = ? AND action = ?", ["c", "alert"]
        ) == [(2,)]


def test_concurrent_writer_and_readers(store_url: str) -> None:
    n_batches, size, alerts_per_batch = 25, 40, 8
    actions = ["alert" if i % 5 == 0 else "approve" for i in range(size)]
    errors: list[BaseException] = []
    seen: list[list[tuple[int, int]]] = [[], []]
    done = threading.Event()
    with open_store(store_url) as s:

        def write() -> None:
            try:
                for b in range(n_batches):
                    ids = [f"{b}-{i}" for i in range(size)]
                    s.write_batch(batch(ids, actions, source=f"src-{b}"))
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        def read(seen: list[tuple[int, int]]) -> None:
            try:
                while True:
                    finished = done.is_set()
                    tx = s.count("transactions")
                    (al,) = s.query("SELECT count(*) FROM alerts WHERE card_id = ?", ["c"])[0]
                    seen.append((tx, int(al)))
                    if finished:
                        return
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=write),
            *(threading.Thread(target=read, args=(out,)) for out in seen),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert s.count("transactions") == n_batches * size
        assert s.count("alerts") == n_batches * alerts_per_batch
        assert s.count("dead_letters") == n_batches
    # Readers only ever see whole batches, and never fewer rows than before.
    for counts in seen:
        assert counts
        assert all(tx % size == 0 and al % alerts_per_batch == 0 for tx, al in counts)
        assert counts == sorted(counts)
        assert counts[-1] == (n_batches * size, n_batches * alerts_per_batch)


@pytest.mark.postgres
def test_postgres_refuses_a_newer_schema(pg_database: str) -> None:
    import psycopg

    with open_store(pg_database) as s:
        s.write_batch(batch(["a", "b"], ["approve", "alert"]))
    newer = postgres_store.SCHEMA_VERSION + 1
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [newer])
    for options in ({}, {"read_only": True}):
        with pytest.raises(StoreError, match=f"schema version {newer} is newer"):
            open_store(pg_database, **options)
    # Nothing was touched.
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (1,)


@pytest.mark.postgres
def test_postgres_stores_strings_with_nul_and_arrays_exactly(pg_database: str) -> None:
    with open_store(pg_database) as s:
        b = batch(["x\x00y", "b"], ["alert", "alert"])
        rules = pa.array([['r"1', "a,b\\"], []], pa.list_(pa.string()))
        alerts = b.alerts.set_column(b.alerts.schema.get_field_index("rules"), "rules", rules)
        s.write_batch(ScoredBatch(b.transactions, alerts, b.dead_letters, b.source))
        s.write_batch(ScoredBatch(b.transactions, alerts, b.dead_letters, b.source))
        assert s.count("transactions") == 2
        assert s.query("SELECT transaction_id FROM transactions ORDER BY 1") == [
            ("b",),
            ("x\ufffdy",),
        ]
        assert s.query("SELECT rules FROM alerts ORDER BY transaction_id") == [
            ([],),
            (['r"1', "a,b\\"],),
        ]
        assert s.query("SELECT payload FROM dead_letters") == [(b"{",)]


def test_postgres_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open PostgreSQL store") as info:
        open_store("postgresql://u:secret@127.0.0.1:1/x", connect_timeout=2)
    assert "secret" not in str(info.value)
