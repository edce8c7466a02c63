"""Schema migrations on both backends: an empty database and databases at earlier schema
versions (created with the old DDL, holding rows) are upgraded, and the rows are read through
the new interface; ``txfast db upgrade``."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from store_helpers import T0, Row, history, scored_batch

from txfast.cli import main
from txfast.exceptions import StoreError
from txfast.store import AlertQuery, ScoredBatch, duckdb_store, open_store, postgres_store

ROWS = history(days=2)
ALERTS = [r for r in ROWS if r.is_alert]


def latest(url: str) -> int:
    module = postgres_store if url.startswith("postgres") else duckdb_store
    return module.SCHEMA_VERSION


def create_v1(url: str, batch: ScoredBatch, *, version: int = 1) -> None:
    """A database as txfast's schema ``version`` made it, holding ``batch`` (history all).

    The rows are inserted with the v1 DDL, then the later migrations' statements run as that
    txfast ran them (the v2 one rebuilds the history and backfills the rollups from them).
    """
    if url.startswith("duckdb:"):
        import duckdb

        con = duckdb.connect(url.removeprefix("duckdb:"))
        for stmt in duckdb_store._MIGRATIONS[1]:
            con.execute(stmt)
        con.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
        )
        con.execute("INSERT INTO schema_migrations VALUES (1, current_timestamp)")
        con.register("_a", batch.alerts)
        con.execute("INSERT INTO alerts BY NAME SELECT * FROM _a")
        con.register("_t", batch.transactions)
        con.execute("INSERT INTO transactions BY NAME SELECT * FROM _t")
        for v in range(2, version + 1):
            for stmt in duckdb_store._MIGRATIONS[v]:
                con.execute(stmt)
            con.execute("INSERT INTO schema_migrations VALUES (?, current_timestamp)", [v])
        con.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in postgres_store._MIGRATIONS[1]:
            conn.execute(stmt)
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (1, now())")
        for table in (batch.alerts, batch.transactions):
            name = "alerts" if "rules" in table.column_names else "transactions"
            cols = ", ".join(table.column_names)
            marks = ", ".join(["%s"] * table.num_columns)
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {name} ({cols}) VALUES ({marks})",
                    [tuple(r.values()) for r in table.to_pylist()],
                )
        for v in range(2, version + 1):
            for stmt in postgres_store._MIGRATIONS[v]:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (%s, now())", [v])


def with_shadow(batch: ScoredBatch, version: str = "v9") -> ScoredBatch:
    """``batch`` with a shadow model's score on every transaction and alert."""

    def add(table: pa.Table) -> pa.Table:
        scores = pc.multiply(table["score"], pa.scalar(0.5, pa.float32()))
        return table.append_column("shadow_score", scores).append_column(
            "shadow_model_version", pa.array([version] * table.num_rows, pa.string())
        )

    return ScoredBatch(add(batch.transactions), add(batch.alerts), [], batch.source)


def test_an_empty_database_is_migrated_to_the_latest_version(store_url: str) -> None:
    with open_store(store_url) as s:
        assert s.schema_version == latest(store_url)
        assert s.applied_migrations == list(range(1, latest(store_url) + 1))
        assert [e.target for e in s.audit_log(action="schema.migrate")] == ["3", "2"]
        assert s.list_api_keys() == []
        assert s.model_versions() == []
        assert s.list_alerts().items == []
    with open_store(store_url) as s:  # nothing left to apply
        assert s.applied_migrations == []


def test_a_v1_database_is_upgraded_and_its_rows_read(store_url: str) -> None:
    create_v1(store_url, scored_batch(ROWS))
    with pytest.raises(StoreError, match="schema version 1.*txfast db upgrade"):
        open_store(store_url, migrate=False)
    with open_store(store_url) as s:
        assert s.schema_version == latest(store_url)
        assert s.applied_migrations == [2, 3]
        assert s.count("transactions") == len(ROWS) and s.count("alerts") == len(ALERTS)
        # Alert lists and keyset pages, with a filter served by a v2 index.
        page = s.list_alerts(AlertQuery(risk_levels=("HIGH",)), limit=3)
        expected = sorted((r for r in ALERTS if r.risk == "HIGH"), key=lambda r: (r.ts, r.id))
        assert [a.transaction_id for a in page.items] == [r.id for r in expected[::-1][:3]]
        assert page.items[0].status == "open" and page.items[0].label is None
        # Details, feedback and labels on a migrated row.
        old = ALERTS[0]
        d = s.get_transaction(old.id)
        assert d is not None and d.is_alert and d.ts == old.ts.replace(tzinfo=UTC)
        assert d.features is not None and list(d.features.values()) == old.features
        s.record_feedback(old.id, "fraud", "alice")
        assert s.labels()["transaction_id"].to_pylist() == [old.id]
        # The rollups were rebuilt from the stored rows.
        st = s.stats(T0, T0 + timedelta(days=2))
        assert st.transactions == len(ROWS) and st.alerts == len(ALERTS)
        assert {m.model_version: m.transactions for m in st.by_model_version} == {
            "v1": sum(r.model == "v1" for r in ROWS),
            "v2": sum(r.model == "v2" for r in ROWS),
        }
        assert {v.version for v in s.model_versions()} == {"v1", "v2"}
        # Writes after the upgrade: a replay of the old rows stores and counts nothing.
        s.write_batch(scored_batch(ROWS))
        new = Row(id="after", ts=T0 + timedelta(days=1, hours=3), risk="HIGH", action="alert")
        s.write_batch(scored_batch([new]))
        st = s.stats(T0, T0 + timedelta(days=2))
        assert st.transactions == len(ROWS) + 1 and st.alerts == len(ALERTS) + 1
        assert s.count("transactions") == len(ROWS) + 1
        assert s.list_alerts(limit=1).items[0].transaction_id == ALERTS[-1].id


def test_db_upgrade_command(store_url: str) -> None:
    create_v1(store_url, scored_batch(ROWS[:10]))
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--store", store_url])
    assert first.exit_code == 0, first.output
    assert f"migrated to schema version {latest(store_url)} (applied 2, 3)" in first.output
    again = runner.invoke(main, ["db", "upgrade", "--store", store_url])
    assert again.exit_code == 0, again.output
    assert "is current; nothing to do" in again.output
    with open_store(store_url, migrate=False) as s:
        assert s.count("transactions") == 10


def test_a_failed_migration_leaves_the_previous_version(store_url: str) -> None:
    create_v1(store_url, scored_batch(ROWS[:10]))
    # A table in the way of the v2 migration makes it fail half-way: nothing is applied.
    if store_url.startswith("duckdb:"):
        import duckdb

        con = duckdb.connect(store_url.removeprefix("duckdb:"))
        con.execute("CREATE TABLE stats_hourly (x INTEGER)")
        con.close()
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE stats_hourly (x INTEGER)")
    with pytest.raises(StoreError):
        open_store(store_url)
    with pytest.raises(StoreError, match="schema version 1"):
        open_store(store_url, migrate=False)
    with pytest.raises(StoreError, match="schema version 1"):
        open_store(store_url, read_only=True)


def test_a_v2_database_is_upgraded_to_v3(store_url: str) -> None:
    create_v1(store_url, scored_batch(ROWS), version=2)
    with pytest.raises(StoreError, match="schema version 2.*txfast db upgrade"):
        open_store(store_url, migrate=False)
    with open_store(store_url) as s:
        assert s.schema_version == 3 == latest(store_url)
        assert s.applied_migrations == [3]
        assert [e.target for e in s.audit_log(action="schema.migrate")] == ["3"]
        assert s.count("transactions") == len(ROWS) and s.count("alerts") == len(ALERTS)
        # Old rows have no shadow score, in the history and in the alerts.
        old_alert, old_tx = ALERTS[0], next(r for r in ROWS if not r.is_alert)
        for row in (old_alert, old_tx):
            d = s.get_transaction(row.id)
            assert d is not None and d.shadow_score is None and d.shadow_model_version is None
        # v2 data stays readable; the stats rollups kept their counts.
        st = s.stats(T0, T0 + timedelta(days=2))
        assert st.transactions == len(ROWS) and st.alerts == len(ALERTS)
        # API keys work on the upgraded database.
        key_id, token = s.create_api_key("ops", "admin")
        key = s.lookup_api_key(token)
        assert key is not None and (key.id, key.role, key.revoked) == (key_id, "admin", False)
        # New batches, with and without shadow columns.
        shadowed = [
            Row(id="sh-alert", ts=T0 + timedelta(hours=5), risk="HIGH", action="alert", score=0.9),
            Row(id="sh-tx", ts=T0 + timedelta(hours=5), score=0.2),
        ]
        s.write_batch(with_shadow(scored_batch(shadowed)))
        plain = [Row(id="plain", ts=T0 + timedelta(hours=6), risk="HIGH", action="alert")]
        s.write_batch(scored_batch(plain))
        a = s.get_transaction("sh-alert")
        assert a is not None and a.is_alert
        assert a.shadow_score == float(np.float32(np.float32(0.9) * np.float32(0.5)))
        assert a.shadow_model_version == "v9"
        t = s.get_transaction("sh-tx")
        assert t is not None and not t.is_alert
        assert t.shadow_score == float(np.float32(np.float32(0.2) * np.float32(0.5)))
        assert t.shadow_model_version == "v9"
        p = s.get_transaction("plain")
        assert p is not None and p.shadow_score is None and p.shadow_model_version is None
        rows = s.query(
            "SELECT transaction_id, shadow_model_version FROM transactions "
            "WHERE transaction_id IN ('sh-tx', 'sh-alert', 'plain') ORDER BY 1"
        )
        assert rows == [("plain", None), ("sh-alert", "v9"), ("sh-tx", "v9")]
        # A replay of the shadowed batch stores nothing twice.
        s.write_batch(with_shadow(scored_batch(shadowed)))
        assert s.count("transactions") == len(ROWS) + 3 and s.count("alerts") == len(ALERTS) + 2


def test_shadow_columns_on_a_fresh_database(store_url: str) -> None:
    rows = history(days=1)
    with open_store(store_url) as s:
        s.write_batch(with_shadow(scored_batch(rows[:20]), "v7"))
        s.write_batch(scored_batch(rows[20:]))
        s.write_batch(with_shadow(scored_batch(rows[:20]), "v8"))  # a replay: first write wins
        assert s.count("transactions") == len(rows)
        first = s.get_transaction(rows[0].id)
        assert first is not None and first.shadow_model_version == "v7"
        assert first.shadow_score == float(np.float32(np.float32(rows[0].score) * 0.5))
        last = s.get_transaction(rows[-1].id)
        assert last is not None and last.shadow_score is None
        # history "alerts" and "none" accept the shadow columns too.
        extra = [
            Row(id=f"x{i}", ts=T0 + timedelta(days=1, hours=i), risk="HIGH", action="alert")
            for i in range(3)
        ]
        s.write_batch(with_shadow(scored_batch(extra[:1])), history="alerts")
        s.write_batch(with_shadow(scored_batch(extra[1:2])), history="none")
        s.write_batch(with_shadow(scored_batch(extra[2:])), history="none")
        for r in extra:
            d = s.get_transaction(r.id)
            assert d is not None and d.is_alert and d.shadow_model_version == "v9"
