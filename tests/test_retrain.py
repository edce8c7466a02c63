"""Feedback retraining (`txfast retrain`): store labels, the champion gate, the audit log.

Real DuckDB stores in ``tmp_path``, real training on a small simulated history: 14 days,
the last 3 tested after a 2-day delay, so the candidate trains on days 1-9.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from store_helpers import Row, scored_batch

pytest.importorskip("sklearn")
pytest.importorskip("xgboost")

from txfast.cli import main  # noqa: E402
from txfast.config import load_settings  # noqa: E402
from txfast.registry import Registry  # noqa: E402
from txfast.retrain import merge_labels, retrain, retrain_history  # noqa: E402
from txfast.scoring import Scorer  # noqa: E402
from txfast.simulate import simulate, write_table  # noqa: E402
from txfast.store import Store, open_store  # noqa: E402
from txfast.training.dataset import LabelledHistory, load_history  # noqa: E402
from txfast.training.isolation_forest import train_isolation_forest  # noqa: E402
from txfast.training.metrics import average_precision  # noqa: E402

DAY_MS = 86_400_000
TEST_DAYS, DELAY_DAYS = 3, 2
FAST = {
    "gbt": {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3},
    "iforest": {"n_estimators": 30},
}
PROTOCOL = {"test_days": TEST_DAYS, "delay_days": DELAY_DAYS, "model_params": FAST, "n_jobs": 1}


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return simulate(300, 14, 5, fraud_rate=0.03, start="2026-01-01")


@pytest.fixture(scope="module")
def labelled_path(table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("retrain") / "history.parquet"
    write_table(table, path)
    return path


@pytest.fixture(scope="module")
def unlabelled_path(table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("retrain") / "unlabelled.parquet"
    pq.write_table(table.drop_columns(["label", "scenario"]), path)
    return path


@pytest.fixture(scope="module")
def history(labelled_path: Path) -> LabelledHistory:
    return load_history(load_settings(env={}), labelled_path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"duckdb:{tmp_path / 'txfast.duckdb'}")
    try:
        yield s
    finally:
        s.close()


def _store_transactions(store: Store, table: pa.Table, rows: np.ndarray) -> list[str]:
    """Store these rows of the history as scored transactions (what feedback needs)."""
    ids = table["transaction_id"].take(pa.array(rows)).to_pylist()
    ts = table["timestamp"].take(pa.array(rows)).to_pylist()
    cards = table["card_id"].take(pa.array(rows)).to_pylist()
    merchants = table["merchant_id"].take(pa.array(rows)).to_pylist()
    batch = [
        Row(id=i, ts=datetime.fromtimestamp(t / 1000, UTC).replace(tzinfo=None), card=c, merchant=m)
        for i, t, c, m in zip(ids, ts, cards, merchants, strict=True)
    ]
    store.write_batch(scored_batch(batch))
    return ids


def _label(store: Store, ids: list[str], label: str) -> None:
    for tid in ids:
        store.record_feedback(tid, label, "ana")


def _periods(history: LabelledHistory) -> tuple[np.ndarray, np.ndarray]:
    first, last = int(history.day.min()), int(history.day.max())
    test_start = last - TEST_DAYS + 1
    train = np.flatnonzero(history.day < test_start - DELAY_DAYS)
    test = np.flatnonzero(history.day >= test_start)
    assert first < test_start - DELAY_DAYS
    return train, test


def _champion(history: LabelledHistory, root: Path) -> str:
    """Register and promote an Isolation Forest (a weak model) trained on the whole history."""
    fs = history.features
    trained = train_isolation_forest(
        fs.X,
        fs.feature_names,
        fs.feature_version,
        n_estimators=20,
        ts_ms=fs.ts_ms,
        seed=3,
        n_jobs=1,
    )
    return trained.register(Registry(root), promote=True).version


def _served_ap(root: Path, version: str, history: LabelledHistory, rows, y) -> float:
    fs = history.features
    scorer = Scorer(
        Registry(root).load("default", version),
        feature_names=fs.feature_names,
        feature_version=fs.feature_version,
    )
    return average_precision(y[rows], scorer.score_batch(fs.X[rows]).raw)


def _audit(store: Store, version: str) -> dict:
    entries = store.audit_log(action="model.retrain", target=version)
    assert len(entries) == 1
    assert entries[0].actor == "txfast retrain"
    return entries[0].details


# -- the gate ----------------------------------------------------------------------------------


def test_retrain_promotes_over_no_champion_then_over_a_weak_one(
    history: LabelledHistory, table: pa.Table, store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    train, test = _periods(history)
    frauds = np.flatnonzero(history.features.label == 1)
    _label(store, _store_transactions(store, table, frauds[:15]), "fraud")

    first = retrain_history(history, store, root, **PROTOCOL)
    assert first.champion_version is None and first.champion_ap is None
    assert first.promoted and first.decision == "promoted"
    assert first.candidate_kind == "gbt" and first.labels_from_store == 15
    assert Registry(root).champion_version("default") == first.candidate_version

    champion = _champion(history, root)
    report = retrain_history(history, store, root, **PROTOCOL)
    y = history.features.label
    # Both APs are those of the registered models served on the test days.
    assert report.champion_version == champion
    assert report.champion_ap == pytest.approx(_served_ap(root, champion, history, test, y))
    cand = report.candidate_version
    assert report.candidate_ap == pytest.approx(_served_ap(root, cand, history, test, y))
    assert report.candidate_ap > report.champion_ap
    assert report.promoted and report.decision == "promoted"
    assert report.champion_trained_on_test is True  # the forest saw the whole history
    assert Registry(root).champion_version("default") == cand

    # The candidate never saw the delay or test days, and records them.
    meta = Registry(root).get("default", cand).metadata
    assert meta.training.end_ms < (int(history.day[test].min()) - DELAY_DAYS) * DAY_MS
    assert meta.training.rows == train.size == report.train_rows
    assert meta.metrics["test_average_precision"] == pytest.approx(report.candidate_ap)
    assert meta.params["retrain"]["champion_version"] == champion
    assert report.test_rows == test.size and report.test_frauds == int((y[test] == 1).sum())

    details = _audit(store, cand)
    for key in ("candidate_ap", "champion_ap", "champion_version", "min_gain", "decision"):
        assert details[key] == report.as_dict()[key]
    assert details["train_range"] == ["2026-01-01", "2026-01-09"]
    assert details["test_range"] == ["2026-01-12", "2026-01-14"]
    assert details["labels"]["from_store"] == 15
    assert cand in {v.version for v in store.model_versions()}


def test_a_gate_that_cannot_be_met_keeps_the_champion(
    history: LabelledHistory, table: pa.Table, store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    _label(store, _store_transactions(store, table, np.arange(5)), "legit")
    champion = _champion(history, root)

    report = retrain_history(history, store, root, min_gain=1.0, **PROTOCOL)
    assert not report.promoted and report.decision == "kept champion"
    assert "+ min gain 1" in report.reason
    reg = Registry(root)
    assert reg.champion_version("default") == champion
    assert report.candidate_version in {v.version for v in reg.versions("default")}
    details = _audit(store, report.candidate_version)
    assert details["decision"] == "kept champion" and details["promoted"] is False
    assert details["min_gain"] == 1.0 and details["champion_ap"] == report.champion_ap

    forced = retrain_history(history, store, root, min_gain=1.0, force=True, **PROTOCOL)
    assert forced.promoted and forced.decision == "forced"
    assert reg.champion_version("default") == forced.candidate_version


def test_a_champion_on_other_features_is_not_replaced_unless_forced(
    history: LabelledHistory, store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    fs = history.features
    other = train_isolation_forest(fs.X, fs.feature_names, "other-features/1", n_estimators=10)
    champion = other.register(Registry(root), promote=True).version

    report = retrain_history(history, store, root, **PROTOCOL)
    assert report.decision == "champion incompatible" and not report.promoted
    assert report.champion_version == champion and report.champion_ap is None
    assert "other-features/1" in report.champion_error
    assert Registry(root).champion_version("default") == champion
    assert _audit(store, report.candidate_version)["champion_ap"] is None

    forced = retrain_history(history, store, root, force=True, **PROTOCOL)
    assert forced.decision == "forced" and forced.promoted


def test_store_labels_override_the_file(
    history: LabelledHistory, table: pa.Table, store: Store, tmp_path: Path
) -> None:
    train, _ = _periods(history)
    y_file = history.features.label
    train_frauds = train[y_file[train] == 1][:40]
    train_legit = train[y_file[train] == 0][:60]
    cleared = _store_transactions(store, table, train_frauds)
    flagged = _store_transactions(store, table, train_legit)
    _label(store, cleared, "legit")
    _label(store, flagged[:30], "fraud")
    _label(store, flagged[30:], "legit")  # agrees with the file
    _label(store, flagged[:5], "legit")  # the latest label wins: back to legit
    stray = Row(id="not-in-the-history", ts=datetime(2026, 1, 3))
    store.write_batch(scored_batch([stray]))
    store.record_feedback(stray.id, "fraud", "ana")

    expected = y_file.copy()
    expected[train_frauds] = 0
    expected[train_legit[5:30]] = 1

    report = retrain_history(history, store, tmp_path / "registry", **PROTOCOL)
    labels = report.labels
    assert labels.from_store == report.labels_from_store == 100
    assert labels.store_overrides == 40 + 25
    assert labels.store_unmatched == 1 and labels.store_labels == 101
    assert labels.from_file == history.rows - 100 and labels.unlabelled == 0
    assert labels.frauds == int((expected == 1).sum())
    # The candidate was fitted on the merged labels.
    assert report.train_frauds == int((expected[train] == 1).sum())
    meta = Registry(tmp_path / "registry").get("default", report.candidate_version).metadata
    assert meta.training.positives == report.train_frauds
    assert meta.training.positives != int((y_file[train] == 1).sum())


def test_merge_labels_takes_unlabelled_rows_as_legitimate() -> None:
    ids = pa.array(["a", "b", "c", "d"], pa.large_string())
    store_labels = pa.table(
        {"transaction_id": pa.array(["c", "z"]), "label": pa.array([1, 0], pa.int8())}
    )
    y, counts = merge_labels(ids, np.array([1, -1, 0, -1]), store_labels)
    assert y.tolist() == [1, 0, 1, 0]
    assert (counts.from_store, counts.from_file, counts.unlabelled) == (1, 1, 2)
    assert (counts.store_overrides, counts.store_unmatched, counts.frauds) == (1, 1, 2)


# -- command line ------------------------------------------------------------------------------


def test_cli_retrain_json_on_an_unlabelled_file_with_store_labels(
    history: LabelledHistory, table: pa.Table, unlabelled_path: Path, tmp_path: Path
) -> None:
    url = f"duckdb:{tmp_path / 'txfast.duckdb'}"
    y = history.features.label
    frauds, legit = np.flatnonzero(y == 1), np.flatnonzero(y == 0)[::80]
    with open_store(url) as s:
        _label(s, _store_transactions(s, table, frauds), "fraud")
        _label(s, _store_transactions(s, table, legit), "legit")
    reg = tmp_path / "registry"
    args = ["retrain", "--data", str(unlabelled_path), "--store", url, "--registry", str(reg)]
    args += ["--test-days", "3", "--delay-days", "2", "--trees", "30", "--max-depth", "3"]
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["labels_from_store"] == frauds.size + legit.size and out["labels_from_file"] == 0
    assert out["labels"]["unlabelled"] == history.rows - frauds.size - legit.size
    assert out["candidate_kind"] == "gbt" and out["promoted"] is True
    assert out["champion_version"] is None and out["champion_ap"] is None
    assert out["reason"] == "no champion to beat" and out["min_gain"] == 0.0
    assert out["train_range"] == ["2026-01-01", "2026-01-09"]
    assert out["test_range"] == ["2026-01-12", "2026-01-14"]
    assert 0.0 < out["candidate_ap"] <= 1.0
    assert Registry(reg).champion_version("default") == out["candidate_version"]

    # [retrain] min_gain from the config; the second run compares with the first.
    config = tmp_path / "txfast.toml"
    config.write_text("[retrain]\nmin_gain = 1.0\n")
    text = CliRunner().invoke(main, [*args, "--config", str(config)], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert f"champion {out['candidate_version']} AP" in text.stdout
    assert "KEPT CHAMPION" in text.stdout
    with open_store(url) as s:
        entries = s.audit_log(action="model.retrain")
    assert [e.details["decision"] for e in entries] == ["kept champion", "promoted"]
    assert entries[0].details["min_gain"] == 1.0


def test_retrain_without_any_label_is_refused(unlabelled_path: Path, tmp_path: Path) -> None:
    url = f"duckdb:{tmp_path / 'txfast.duckdb'}"
    reg = tmp_path / "registry"
    settings = load_settings(env={}, overrides={"registry": str(reg)})
    with open_store(url) as s, pytest.raises(ValueError, match="no labels"):
        retrain(settings, unlabelled_path, s, **PROTOCOL)
    result = CliRunner().invoke(
        main, ["retrain", "--data", str(unlabelled_path), "--store", url, "--registry", str(reg)]
    )
    assert result.exit_code == 1
    assert "no labels" in result.output and "has no label for any of its transactions" in (
        result.output
    )
    assert not reg.exists() or Registry(reg).names() == []


def test_history_too_short_for_the_periods_is_refused(
    history: LabelledHistory, store: Store, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"spans 14 day\(s\); 7 test and 7 delay"):
        retrain_history(history, store, tmp_path / "registry")


# -- --label-delay -----------------------------------------------------------------------------


def test_label_delay_overrides_the_config(labelled_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "txfast.toml"
    config.write_text('[features]\nlabels = true\nlabel_delay = "7d"\n')
    base = ["features", "--data", str(labelled_path), "--config", str(config)]
    sums = {}
    for delay in ("7d", "1d"):
        out = tmp_path / f"features-{delay}.parquet"
        result = CliRunner().invoke(main, [*base, "--out", str(out), "--label-delay", delay])
        assert result.exit_code == 0, result.output
        sums[delay] = pq.read_table(out)["merchant_fraud_labels_7d"].to_numpy().sum()
    assert sums["1d"] > sums["7d"] > 0  # labels known sooner are counted more often

    bad = CliRunner().invoke(
        main, [*base, "--out", str(tmp_path / "x.parquet"), "--label-delay", "7x"]
    )
    assert bad.exit_code == 2 and "invalid duration" in bad.output
    for command in ("train", "evaluate", "retrain"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "--label-delay" in help_text
