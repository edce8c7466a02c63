"""DuckDB's deferred small batches (staged durably, moved in full later) and checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from store_helpers import Row, history, scored_batch
from test_store_writes import check

from txfast.decode import Rejected
from txfast.store import duckdb_store
from txfast.store.duckdb_store import DuckDBStore

ROWS = history(days=2)
HOLD = 3_600_000.0
"""A ``defer_ms`` no test outlives: the mover moves only when asked."""

PRIME = list({r.model: r for r in ROWS}.values())
"""One row of each model version: a batch with a version not seen yet is written in full."""


def chunks(rows: list[Row], n: int) -> list[list[Row]]:
    return [rows[i : i + n] for i in range(0, len(rows), n)]


def staged_tables(s: DuckDBStore) -> list[str]:
    return [
        r[0]
        for r in s.query(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'txfast_staging'"
        )
    ]


def test_small_batches_are_staged_then_moved_in_full(tmp_path: Path) -> None:
    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=HOLD) as s:
        s.write_batch(scored_batch(PRIME))  # new model versions: written in full
        for part in chunks(ROWS, 10):
            s.write_batch(scored_batch(part))
        assert s.count("transactions") == len(PRIME)  # the rest is staged, not visible yet
        assert staged_tables(s)
        s.flush_deferred()
        assert staged_tables(s) == []
        check(s, ROWS)


def test_staged_replays_are_stored_once(tmp_path: Path) -> None:
    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=HOLD) as s:
        s.write_batch(scored_batch(PRIME))
        for part in chunks(ROWS, 7):  # every row again, the first one included
            s.write_batch(scored_batch(part))
        for part in chunks(ROWS[::3], 5):  # replays staged beside the first copies
            s.write_batch(scored_batch(part))
        s.flush_deferred()
        check(s, ROWS)
        for part in chunks(ROWS[::2], 9):  # replays of rows already moved
            s.write_batch(scored_batch(part))
        s.flush_deferred()
        check(s, ROWS)


def test_the_mover_moves_staged_batches_by_itself(tmp_path: Path) -> None:
    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=20) as s:
        s.write_batch(scored_batch(PRIME))
        for part in chunks(ROWS, 10):
            s.write_batch(scored_batch(part))
        deadline = time.monotonic() + 10
        while s.count("transactions") < len(ROWS) and time.monotonic() < deadline:
            time.sleep(0.02)
        s.wait_folds()
        check(s, ROWS)


def test_large_batches_and_dead_letters_are_written_in_full(tmp_path: Path) -> None:
    dead = [Rejected(0, "invalid_json", "bad", b"{", source="test")]
    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=HOLD, defer_rows=20) as s:
        s.write_batch(scored_batch(ROWS[:30]))  # larger than defer_rows
        s.write_batch(scored_batch(ROWS[30:35], dead_letters=dead))
        assert s.count("transactions") == 35
        assert s.count("dead_letters") == 1
        assert staged_tables(s) == []
        s.write_batch(scored_batch(ROWS[35:40]))  # small, no dead letter: staged
        assert s.count("transactions") == 35


def test_close_moves_staged_batches(tmp_path: Path) -> None:
    path = str(tmp_path / "s.duckdb")
    with DuckDBStore(path, defer_ms=HOLD) as s:
        s.write_batch(scored_batch(PRIME))
        for part in chunks(ROWS, 10):
            s.write_batch(scored_batch(part))
    with DuckDBStore(path) as s:  # deferral off: nothing left staged to find
        assert staged_tables(s) == []
        check(s, ROWS)


def test_batches_staged_before_a_crash_are_moved_at_the_next_open(tmp_path: Path) -> None:
    """A process that dies after staging (its source offsets may be committed) loses nothing."""
    path = tmp_path / "s.duckdb"
    child = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_helpers import history, scored_batch
        from txfast.store.duckdb_store import DuckDBStore
        rows = history(days=2)
        prime = list({{r.model: r for r in rows}}.values())
        s = DuckDBStore({str(path)!r}, defer_ms={HOLD})
        s.write_batch(scored_batch(prime))
        for i in range(0, len(rows), 10):
            s.write_batch(scored_batch(rows[i : i + 10]))
        assert s.count("transactions") == len(prime), "staged rows moved before the crash"
        os._exit(0)  # no close: the staged rows stay where they are
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    assert Path(f"{path}.staging").exists()
    with DuckDBStore(str(path)) as s:
        assert staged_tables(s) == []
        check(s, ROWS)


def test_a_failed_move_is_retried_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=HOLD) as s:
        s.write_batch(scored_batch(PRIME))
        for part in chunks(ROWS[:40], 10):
            s.write_batch(scored_batch(part))
        real = DuckDBStore._write_in

        def broken(*args, **kwargs):
            raise duckdb_store.StoreError("disk full")

        monkeypatch.setattr(DuckDBStore, "_write_in", broken)
        with pytest.raises(duckdb_store.StoreError, match="disk full"):
            s.flush_deferred()
        monkeypatch.setattr(DuckDBStore, "_write_in", real)
        for part in chunks(ROWS[40:], 10):
            s.write_batch(scored_batch(part))
        s.flush_deferred()
        check(s, ROWS)


def test_the_log_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    wal = Path(f"{path}.wal")
    with DuckDBStore(str(path), checkpoint_wal_bytes=16 << 10) as s:
        sizes = []
        for part in chunks(ROWS, 5):
            s.write_batch(scored_batch(part))
            s.wait_folds()
            sizes.append(wal.stat().st_size if wal.exists() else 0)
        check(s, ROWS)
    # Without the background checkpoints the log would only grow until the store closes.
    assert max(sizes) < 2 * (16 << 10)
    assert sum(1 for a, b in zip(sizes, sizes[1:], strict=False) if b < a) >= 2


def test_a_checkpoint_threshold_given_keeps_duckdbs_own_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with DuckDBStore(str(path), config={"checkpoint_threshold": "1GB"}) as s:
        for part in chunks(ROWS, 5):
            s.write_batch(scored_batch(part))
        s.wait_folds()
        assert os.path.getsize(f"{path}.wal") > 60 << 10  # never checkpointed by txfast
        check(s, ROWS)


def test_batches_are_written_in_full_while_moves_fail(tmp_path: Path, monkeypatch) -> None:
    """A failing mover never lets staged batches pile up unseen: writes go in full again."""
    real = DuckDBStore._move_generations

    def broken(self, gen):
        raise duckdb_store.StoreError("cannot move")

    with DuckDBStore(str(tmp_path / "s.duckdb"), defer_ms=10) as s:
        s.write_batch(scored_batch(PRIME))
        monkeypatch.setattr(DuckDBStore, "_move_generations", broken)
        for part in chunks(ROWS[:40], 10):
            s.write_batch(scored_batch(part))
        deadline = time.monotonic() + 10
        while s._move_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s._move_failures >= 3
        before = s.count("transactions")
        s.write_batch(scored_batch(ROWS[40:50]))  # small, but written in full now
        assert s.count("transactions") == before + len(
            {r.id for r in ROWS[40:50]} - {r.id for r in PRIME}
        )
        monkeypatch.setattr(DuckDBStore, "_move_generations", real)
        s.flush_deferred()
        for part in chunks(ROWS[50:], 10):
            s.write_batch(scored_batch(part))
        s.flush_deferred()
        check(s, ROWS)


def test_a_store_opens_when_its_staged_batches_cannot_be_moved(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "s.duckdb")
    child = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_helpers import history, scored_batch
        from txfast.store.duckdb_store import DuckDBStore
        rows = history(days=2)
        prime = list({{r.model: r for r in rows}}.values())
        s = DuckDBStore({path!r}, defer_ms={HOLD})
        s.write_batch(scored_batch(prime))
        for i in range(0, len(rows), 10):
            s.write_batch(scored_batch(rows[i : i + 10]))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    real = DuckDBStore._move_generations

    def broken(self, gen):
        raise duckdb_store.StoreError("cannot move")

    monkeypatch.setattr(DuckDBStore, "_move_generations", broken)
    s = DuckDBStore(path, defer_ms=HOLD)  # opens; the staged rows stay staged
    try:
        assert s.count("transactions") == len(PRIME)
        s.write_batch(scored_batch(ROWS[:10]))  # written in full, not staged behind them
        assert s.count("transactions") == len({r.id for r in ROWS[:10] + PRIME})
        monkeypatch.setattr(DuckDBStore, "_move_generations", real)
        s.flush_deferred()
        check(s, ROWS)
    finally:
        s.close()
