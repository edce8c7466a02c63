"""Batch writes: replays in and out of time order, raw SQL, timestamp units, the rollup
increments (grouped or not) and their folding, on DuckDB and PostgreSQL."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from store_helpers import T0, Row, history, scored_batch

from txfast.exceptions import StoreError
from txfast.store import ScoredBatch, Stats, Store, duckdb_store, open_store
from txfast.store._sql import ROLLUPS

ROWS = history(days=2)
LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
END = T0 + timedelta(days=2)


def summary(st: Stats) -> dict:
    """The figures of some statistics that the rows determine (amounts rounded)."""

    def breakdowns(items) -> dict:
        return {
            b.key: (b.transactions, b.alerts, round(b.amount, 6), dict(b.by_risk)) for b in items
        }

    return {
        "totals": (st.transactions, st.alerts),
        "country": breakdowns(st.by_country),
        "hour": breakdowns(st.by_hour),
        "daily": [(d.day, d.transactions, d.alerts) for d in st.daily],
        "models": [(m.model_version, m.transactions, m.alerts) for m in st.by_model_version],
    }


def expected(rows: list[Row]) -> dict:
    """:func:`summary` of the statistics of ``rows`` (history ``all``, all inside the window)."""
    country: dict = {}
    hour: dict = {}
    daily: dict = defaultdict(lambda: [0, 0])
    models: dict = defaultdict(lambda: [0, 0])

    def add(acc: dict, key, r: Row) -> None:
        n, alerts, amount, by_risk = acc.get(key, (0, 0, 0.0, dict.fromkeys(LEVELS, 0)))
        by_risk[r.risk] += 1
        acc[key] = (n + 1, alerts + r.is_alert, amount + r.amount, by_risk)

    for r in rows:
        add(country, r.country or "", r)
        add(hour, r.ts.hour, r)
        daily[r.ts.date()][0] += 1
        daily[r.ts.date()][1] += r.is_alert
        models[r.model][0] += 1
        models[r.model][1] += r.is_alert
    return {
        "totals": (len(rows), sum(r.is_alert for r in rows)),
        "country": {k: (n, a, round(x, 6), b) for k, (n, a, x, b) in country.items()},
        "hour": {k: (n, a, round(x, 6), b) for k, (n, a, x, b) in hour.items()},
        "daily": sorted((d, n, a) for d, (n, a) in daily.items()),
        "models": sorted((m, n, a) for m, (n, a) in models.items()),
    }


def check(s: Store, rows: list[Row]) -> None:
    assert s.count("transactions") == len(rows)
    assert s.count("alerts") == sum(r.is_alert for r in rows)
    assert summary(s.stats(T0, END)) == expected(rows)


# -- replays ----------------------------------------------------------------------------------


def test_replays_older_than_the_newest_stored_row_are_stored_once(store_url: str) -> None:
    half = len(ROWS) // 2
    early, late = ROWS[:half], ROWS[half:]
    with open_store(store_url) as s:
        s.write_batch(scored_batch(late))
        # Earlier rows mixed with replays of later ones, out of time order.
        s.write_batch(scored_batch(early[1::2] + late[::3] + early[::2]))
        check(s, ROWS)
        s.write_batch(scored_batch(ROWS[-1:]))  # the newest row alone
        s.write_batch(scored_batch(ROWS[-7:] + [Row(id="new", ts=ROWS[-1].ts)]))
        check(s, [*ROWS, Row(id="new", ts=ROWS[-1].ts)])


def test_a_replay_after_reopening_is_stored_once(store_url: str) -> None:
    with open_store(store_url) as s:
        s.write_batch(scored_batch(ROWS[:60]))
    with open_store(store_url) as s:
        s.write_batch(scored_batch(ROWS[50:]))
        check(s, ROWS)


def test_a_batch_whose_alerts_were_stored_without_history(store_url: str) -> None:
    with open_store(store_url) as s:
        s.write_batch(scored_batch(ROWS), history="none")
        s.write_batch(scored_batch(ROWS))  # the alerts are replays, the transactions new
        check(s, ROWS)


def test_transactions_inserted_by_raw_sql_are_not_stored_twice(store_url: str) -> None:
    later = Row(id="raw", ts=ROWS[-1].ts + timedelta(minutes=5))
    with open_store(store_url) as s:
        s.write_batch(scored_batch(ROWS[:50]))
        s.write_batch(scored_batch(ROWS[50:]))
        s.query(
            "INSERT INTO transactions (transaction_id, ts, card_id, merchant_id, amount, "
            "currency, amount_base, score, is_anomaly, risk_level, action, model_version, "
            "scored_at) VALUES (?, ?, 'c1', 'm1', 10, 'EUR', 10, 0.5, false, 'LOW', 'approve', "
            "'v1', ?)",
            [later.id, later.ts, later.ts],
        )
        s.write_batch(scored_batch([later, Row(id="after", ts=later.ts)]))
        assert s.count("transactions") == len(ROWS) + 2
        assert s.query("SELECT count(*) FROM transactions WHERE transaction_id = 'raw'") == [(1,)]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_replays_in_any_timestamp_unit_are_stored_once(store_url: str, unit: str) -> None:
    rows = [Row(id=f"u{i}", ts=T0 + timedelta(seconds=i)) for i in range(6)]

    def batch(part: list[Row]) -> ScoredBatch:
        b = scored_batch(part)
        ts = b.transactions["ts"].cast(pa.timestamp(unit))
        tx = b.transactions.set_column(b.transactions.schema.get_field_index("ts"), "ts", ts)
        return ScoredBatch(tx, b.alerts, b.dead_letters, b.source)

    with open_store(store_url) as s:
        s.write_batch(batch(rows[:4]))
        s.write_batch(batch(rows[2:]))
        s.write_batch(batch(rows[5:]))
        assert s.count("transactions") == 6


def test_timestamp_bounds() -> None:
    bounds = duckdb_store._ts_bounds_us
    t = datetime(2026, 3, 1, 12, 30, 15)
    us = (t - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    for unit in ("s", "ms", "us", "ns"):
        ts = pa.chunked_array([pa.array([t, None, t - timedelta(seconds=1)], pa.timestamp(unit))])
        assert bounds(ts) == (us - 1_000_000, us)
    ns = pa.chunked_array([pa.array([us * 1000 + 1], pa.int64()).cast(pa.timestamp("ns"))])
    assert bounds(ns) == (us, us + 1)  # rounded outward
    assert bounds(pa.chunked_array([pa.array([t], pa.timestamp("ms", tz="UTC"))])) is None
    assert bounds(pa.chunked_array([pa.nulls(2, pa.timestamp("ms"))])) is None


# -- rollup increments and folding (DuckDB) ---------------------------------------------------


@pytest.mark.parametrize("ungrouped", [0, 10**9], ids=["grouped", "ungrouped"])
def test_rollup_increments_grouped_or_not(tmp_path, monkeypatch, ungrouped: int) -> None:
    monkeypatch.setattr(duckdb_store, "_UNGROUPED_ROLLUP_ROWS", ungrouped)
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}", compact_every=1000) as s:
        s.write_batch(scored_batch(ROWS[:40]))
        s.write_batch(scored_batch(ROWS[20:70]))  # half replays
        s.write_batch(scored_batch(ROWS[60:]), history="alerts")
        s.write_batch(scored_batch(ROWS[60:]))  # the approved rows are new, the rest replays
        check(s, ROWS)
        s.compact()
        check(s, ROWS)


def delta_rows(s: Store) -> dict[str, int]:
    s.wait_folds()  # type: ignore[attr-defined]  # folds run in the background
    return {t: s.query(f"SELECT count(*) FROM {t}_delta")[0][0] for t in ROLLUPS}


def test_rollups_are_folded_in_turn(tmp_path) -> None:
    every = 6
    path = f"duckdb:{tmp_path / 's.duckdb'}"
    batches = [ROWS[i : i + 4] for i in range(0, 4 * 4 * every, 4)]
    assert all(batches) and len(batches) == 4 * every
    folded: dict[str, list[int]] = {t: [] for t in ROLLUPS}
    with open_store(path, compact_every=every) as s:
        for b, rows in enumerate(batches, start=1):
            s.write_batch(scored_batch(rows))
            for table, n in delta_rows(s).items():
                if n == 0:
                    folded[table].append(b)
            check(s, [r for part in batches[:b] for r in part])
    # Each rollup folded every `every` batches, never two in the same batch.
    for when in folded.values():
        assert when and all(b - a == every for a, b in zip(when, when[1:], strict=False))
    firsts = sorted(when[0] for when in folded.values())
    assert firsts == [every, every + every // 3, every + 2 * every // 3]
    with open_store(path) as s:  # closing folded the rest
        assert delta_rows(s) == dict.fromkeys(ROLLUPS, 0)
        check(s, [r for part in batches for r in part])


def test_folds_take_turns_again_after_a_compaction(tmp_path) -> None:
    every = 6
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}", compact_every=every) as s:
        for i in range(3):
            s.write_batch(scored_batch(ROWS[i : i + 1]))
        s.compact()
        assert delta_rows(s) == dict.fromkeys(ROLLUPS, 0)
        first: dict[str, int] = {}
        for b in range(1, 2 * every):
            s.write_batch(scored_batch(ROWS[10 + b : 11 + b]))
            for table, n in delta_rows(s).items():
                if n == 0:
                    first.setdefault(table, b)
        assert sorted(first.values()) == [6, 8, 10]
        check(s, ROWS[:3] + ROWS[11 : 10 + 2 * every])


@pytest.mark.parametrize("every", [1, 2])
def test_few_batches_between_folds_fold_everything(tmp_path, every: int) -> None:
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}", compact_every=every) as s:
        for i in range(0, 40, 10):
            s.write_batch(scored_batch(ROWS[i : i + 10]))
            if every == 1:
                assert delta_rows(s) == dict.fromkeys(ROLLUPS, 0)
        check(s, ROWS[:40])


def test_a_failed_fold_is_retried(tmp_path, monkeypatch) -> None:
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}", compact_every=1) as s:
        real = s._fold
        calls = []

        def failing(tables: list[str]) -> None:
            calls.append(tables)
            if len(calls) == 1:
                raise StoreError("disk full")
            real(tables)

        monkeypatch.setattr(s, "_fold", failing)
        s.write_batch(scored_batch(ROWS[:10]))
        assert delta_rows(s) != dict.fromkeys(ROLLUPS, 0)
        s.write_batch(scored_batch(ROWS[10:20]))
        assert delta_rows(s) == dict.fromkeys(ROLLUPS, 0)
        assert calls == [list(ROLLUPS), list(ROLLUPS)]
        check(s, ROWS[:20])


def test_a_running_fold_does_not_hold_up_the_writes(tmp_path, monkeypatch) -> None:
    with open_store(f"duckdb:{tmp_path / 's.duckdb'}", compact_every=1) as s:
        started, release = threading.Event(), threading.Event()
        real = s._fold

        def slow(tables: list[str]) -> None:
            started.set()
            assert release.wait(30)
            real(tables)

        monkeypatch.setattr(s, "_fold", slow)
        s.write_batch(scored_batch(ROWS[:10]))  # the fold is due: it starts in the background
        assert started.wait(10)
        s.write_batch(scored_batch(ROWS[10:20]))  # stored while the fold waits
        s.write_batch(scored_batch(ROWS[20:30]))
        check(s, ROWS[:30])  # readers sum the rollups and the deltas meanwhile
        release.set()
        monkeypatch.undo()
        s.compact()
        assert delta_rows(s) == dict.fromkeys(ROLLUPS, 0)
        check(s, ROWS[:30])
