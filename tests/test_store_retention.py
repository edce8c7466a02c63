"""Retention on both backends: what ``prune`` deletes, keeps and archives to Parquet, and
``txfast db prune`` with options or the ``[retention]`` settings."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from store_helpers import T0, history, scored_batch

from txfast.cli import main
from txfast.decode import Rejected
from txfast.store import open_store

ROWS = history(days=4)
ALERTS = [r for r in ROWS if r.is_alert]
CUTOFF = T0 + timedelta(days=2, hours=5)


def fill(url: str) -> tuple[set[str], set[str]]:
    """Store ROWS and two dead letters, label one old alert and one old plain transaction.

    Returns:
        The ids of the old labelled alert and transaction.
    """
    old_alert = next(r for r in ALERTS if r.ts < CUTOFF)
    old_plain = next(r for r in ROWS if r.ts < CUTOFF and not r.is_alert)
    dls = [Rejected(1, "invalid_json", "bad", b"{\x00\xff"), Rejected(2, "too_large", "big", b"x")]
    with open_store(url) as s:
        s.write_batch(scored_batch(ROWS, dead_letters=dls))
        s.record_feedback(old_alert.id, "legit", "alice")
        s.record_feedback(old_plain.id, "fraud", "bob")
        s.query(
            "UPDATE dead_letters SET received_at = ? WHERE position = 1",
            [CUTOFF - timedelta(days=1)],
        )
        explained = next(r for r in ALERTS if r.ts < CUTOFF and r.id != old_alert.id)
        s.query("UPDATE alerts SET explanation = 'why' WHERE transaction_id = ?", [explained.id])
    return {old_alert.id}, {old_plain.id}


def ids(s, table: str) -> set[str]:
    return {r[0] for r in s.query(f"SELECT transaction_id FROM {table}")}


def test_prune_deletes_old_rows_keeps_labelled_ones_and_archives(
    store_url: str, tmp_path: Path
) -> None:
    kept_alert, kept_plain = fill(store_url)
    labelled = kept_alert | kept_plain
    old_tx = {r.id for r in ROWS if r.ts < CUTOFF} - labelled
    old_alerts = {r.id for r in ALERTS if r.ts < CUTOFF} - labelled
    archive = tmp_path / "archive"
    with open_store(store_url) as s:
        stats_before = s.stats(T0, T0 + timedelta(days=4))
        result = s.prune(CUTOFF.replace(tzinfo=UTC), archive_dir=archive, actor="ops")
        assert (result.transactions, result.alerts, result.dead_letters) == (
            len(old_tx),
            len(old_alerts),
            1,
        )
        assert result.kept_labelled == 2
        assert ids(s, "transactions") == {r.id for r in ROWS} - old_tx
        assert ids(s, "alerts") == {r.id for r in ALERTS} - old_alerts
        assert s.query("SELECT position FROM dead_letters") == [(2,)]
        # Labelled rows stay whole; statistics are not pruned.
        d = s.get_transaction(next(iter(kept_alert)))
        assert d is not None and d.is_alert and d.label == "legit" and d.features
        assert s.labels().num_rows == 2
        assert s.stats(T0, T0 + timedelta(days=4)) == stats_before
        (entry,) = s.audit_log(action="retention.prune")
        assert entry.actor == "ops" and entry.details["transactions"] == len(old_tx)
        # Nothing is left to prune.
        again = s.prune(CUTOFF, archive_dir=archive)
        assert (again.transactions, again.alerts, again.dead_letters, again.archive) == (
            0,
            0,
            0,
            [],
        )
    files = sorted(Path(p) for p in result.archive)
    assert [p.parent.name for p in files] == ["alerts", "dead_letters", "transactions"]
    tx = pq.read_table(archive / "transactions").sort_by("transaction_id")
    assert set(tx["transaction_id"].to_pylist()) == old_tx
    by_id = {r.id: r for r in ROWS}
    first = tx.slice(0, 1).to_pylist()[0]
    row = by_id[first["transaction_id"]]
    assert first["ts"] == row.ts and first["card_id"] == row.card
    assert first["score"] == pytest.approx(float(np.float32(row.score)))
    assert first["country"] == row.country and first["amount_base"] == row.amount
    assert first["is_anomaly"] == (row.risk in ("HIGH", "CRITICAL"))
    alerts = pq.read_table(archive / "alerts")
    assert set(alerts["transaction_id"].to_pylist()) == old_alerts
    one = alerts.to_pylist()[0]
    assert one["features"] == pytest.approx(by_id[one["transaction_id"]].features)
    assert one["rules"] == [f"rule_{by_id[one['transaction_id']].risk.lower()}"]
    explanations = alerts["explanation"].to_pylist()
    assert explanations.count("why") == 1 and explanations.count(None) == len(old_alerts) - 1
    dead = pq.read_table(archive / "dead_letters").to_pylist()
    assert [(d["position"], d["payload"]) for d in dead] == [(1, b"{\x00\xff")]


def test_prune_without_archive_only_deletes(store_url: str, tmp_path: Path) -> None:
    fill(store_url)
    with open_store(store_url) as s:
        result = s.prune(CUTOFF)
        assert result.archive == [] and result.transactions > 0
        assert s.query("SELECT count(*) FROM transactions WHERE ts < ?", [CUTOFF]) == [(2,)]
    assert not any(tmp_path.rglob("*.parquet"))


def test_db_prune_command(store_url: str, tmp_path: Path) -> None:
    fill(store_url)
    runner = CliRunner()
    missing = runner.invoke(main, ["db", "prune", "--store", store_url])
    assert missing.exit_code != 0 and "--older-than-days" in missing.output
    # The test rows are from March 2026, long before "now": everything unlabelled goes.
    config = tmp_path / "txfast.toml"
    config.write_text(
        f'store = "{store_url}"\n[retention]\ndays = 30\narchive_dir = "{tmp_path / "arch"}"\n'
    )
    done = runner.invoke(main, ["db", "prune", "--config", str(config), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["transactions"] == len(ROWS) - 2
    assert result["alerts"] == len(ALERTS) - 1
    assert result["kept_labelled"] == 2
    assert len(result["archive"]) == 3 and all(Path(p).exists() for p in result["archive"])
    with open_store(store_url) as s:
        assert s.count("transactions") == 2 and s.count("alerts") == 1
    text = runner.invoke(main, ["db", "prune", "--store", store_url, "--older-than-days", "1"])
    assert text.exit_code == 0, text.output
    assert "0 transactions, 0 alerts, 0 dead letters (2 labelled kept)" in text.output
