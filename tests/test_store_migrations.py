"""Schema migrations on both backends: an empty database and one at the previous schema
version (created with the v1 DDL, holding rows) are upgraded, and the rows are read through
the new interface; ``txfast db upgrade``."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_helpers import T0, Row, history, scored_batch

from txfast.cli import main
from txfast.exceptions import StoreError
from txfast.store import AlertQuery, ScoredBatch, duckdb_store, open_store, postgres_store

BACKENDS = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]
ROWS = history(days=2)
ALERTS = [r for r in ROWS if r.is_alert]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:{tmp_path / 's.duckdb'}"
    return request.getfixturevalue("pg_database")


def latest(url: str) -> int:
    module = postgres_store if url.startswith("postgres") else duckdb_store
    return module.SCHEMA_VERSION


def create_v1(url: str, batch: ScoredBatch) -> None:
    """A database as txfast's schema version 1 made it, holding ``batch`` (history all)."""
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


def test_an_empty_database_is_migrated_to_the_latest_version(store_url: str) -> None:
    with open_store(store_url) as s:
        assert s.schema_version == latest(store_url)
        assert s.applied_migrations == list(range(1, latest(store_url) + 1))
        assert [e.target for e in s.audit_log(action="schema.migrate")] == ["2"]
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
        assert s.applied_migrations == [2]
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
    assert f"migrated to schema version {latest(store_url)} (applied 2)" in first.output
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
