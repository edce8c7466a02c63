"""DuckDB: a large batch is written in two transactions at once (transactions | alerts), each
idempotent on its own; a failure of either half is repaired by writing the batch again."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from store_helpers import Row, history, scored_batch
from test_store_writes import check

from txfast.decode import Rejected
from txfast.exceptions import StoreError
from txfast.store import ScoredBatch, duckdb_store
from txfast.store.duckdb_store import DuckDBStore

ROWS = history(days=2)  # the window `check` reads
PRIME = list({r.model: r for r in ROWS}.values())
"""One row of each model version: a batch with a version not seen yet takes one transaction."""


@pytest.fixture
def halves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Split from 10 rows on (not 2048); returns the alert halves written, grows as they are."""
    monkeypatch.setattr(duckdb_store, "_SPLIT_ROWS", 10)
    calls: list[int] = []
    original = DuckDBStore._write_alert_half

    def spy(self: DuckDBStore, batch: ScoredBatch, alerts: pa.Table) -> None:
        calls.append(alerts.num_rows)
        original(self, batch, alerts)

    monkeypatch.setattr(DuckDBStore, "_write_alert_half", spy)
    return calls


def chunks(rows: list[Row], n: int) -> list[list[Row]]:
    return [rows[i : i + n] for i in range(0, len(rows), n)]


def with_null(table: pa.Table, column: str, row: int) -> pa.Table:
    """``table`` with one NULL in a NOT NULL column: the database refuses it."""
    values = table[column].to_pylist()
    values[row] = None
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def test_large_batches_are_written_in_two_transactions(tmp_path: Path, halves: list[int]) -> None:
    dead = [Rejected(3, "invalid_json", "bad", b"{", source="test")]
    with DuckDBStore(str(tmp_path / "s.duckdb")) as s:
        s.write_batch(scored_batch(PRIME))  # new model versions: one transaction
        assert halves == []
        for i, part in enumerate(chunks(ROWS, 24)):
            s.write_batch(scored_batch(part, dead_letters=dead if i == 1 else None))
        assert len(halves) == len(chunks(ROWS, 24))
        s.wait_folds()
        check(s, ROWS)
        assert s.count("dead_letters") == 1


def test_replayed_large_batches_are_stored_once(tmp_path: Path, halves: list[int]) -> None:
    with DuckDBStore(str(tmp_path / "s.duckdb")) as s:
        s.write_batch(scored_batch(PRIME))
        for part in chunks(ROWS[: len(ROWS) // 2], 30):
            s.write_batch(scored_batch(part))
        # Replays mixed with new rows, and replays alone: each half finds what it stored.
        for part in chunks(ROWS[::3] + ROWS[len(ROWS) // 2 :], 30):
            s.write_batch(scored_batch(part))
        for part in chunks(ROWS, 40):
            s.write_batch(scored_batch(part))
        s.wait_folds()
        check(s, ROWS)
        assert halves


@pytest.mark.parametrize("half", ["alerts", "transactions"])
def test_a_failed_half_is_completed_by_writing_the_batch_again(
    tmp_path: Path, halves: list[int], half: str
) -> None:
    """One half committed, the other refused: the error is raised, and the pipeline's retry
    (or a replay after a crash) stores what is missing, counted once in the statistics."""
    with DuckDBStore(str(tmp_path / "s.duckdb")) as s:
        s.write_batch(scored_batch(PRIME))
        good = scored_batch(ROWS)
        bad = ScoredBatch(
            with_null(good.transactions, "card_id", 5)
            if half == "transactions"
            else good.transactions,
            with_null(good.alerts, "card_id", 2) if half == "alerts" else good.alerts,
            good.dead_letters,
            good.source,
        )
        with pytest.raises(StoreError, match="NOT NULL|constraint"):
            s.write_batch(bad)
        stored = (s.count("transactions"), s.count("alerts"))
        if half == "alerts":  # the transactions committed, the alerts did not
            assert stored == (len(ROWS), sum(r.is_alert for r in PRIME))
        else:
            assert stored == (len(PRIME), sum(r.is_alert for r in ROWS))
        s.write_batch(good)
        s.wait_folds()
        check(s, ROWS)
