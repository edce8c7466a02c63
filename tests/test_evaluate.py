"""Time-based evaluation, `txfast evaluate` and `txfast train --model gbt|auto`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn")
pytest.importorskip("xgboost")

from txfast.cli import main  # noqa: E402
from txfast.config import load_settings  # noqa: E402
from txfast.evaluate import evaluate_history, make_folds, write_pr_curve_png  # noqa: E402
from txfast.registry import Registry  # noqa: E402
from txfast.simulate import simulate, write_table  # noqa: E402
from txfast.training.dataset import load_history  # noqa: E402
from txfast.training.metrics import average_precision, card_precision_at_k_per_day  # noqa: E402

DAY_MS = 86_400_000
FAST_GBT = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.3}


@pytest.fixture(scope="module")
def history_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = simulate(400, 20, 3, fraud_rate=0.03, start="2026-01-01")
    path = tmp_path_factory.mktemp("eval") / "history.parquet"
    write_table(table, path)
    return path


@pytest.fixture(scope="module")
def history(history_path: Path):
    return load_history(load_settings(None, env={}), history_path)


# -- folds -------------------------------------------------------------------------------------


def test_folds_follow_the_protocol() -> None:
    folds, step = make_folds(0, 59, train_days=30, delay_days=7, test_days=7, folds=3)
    assert step == 7
    assert [(f.train_start, f.train_end, f.test_start, f.test_end) for f in folds] == [
        (0, 30, 37, 44),
        (7, 37, 44, 51),
        (14, 44, 51, 58),
    ]
    first = folds[0].describe(0)
    assert first["train_days"] == [1, 30] and first["test_days"] == [38, 44]


def test_folds_step_shrinks_to_fit_unless_given() -> None:
    # 60 days, 4 folds of 44 days: a 7-day step needs 65 days, so the step becomes 5.
    folds, step = make_folds(0, 59, train_days=30, delay_days=7, test_days=7, folds=4)
    assert step == 5 and folds[-1].test_end == 59
    with pytest.raises(ValueError, match=r"need 65 days; the data has 60 .*at most 3 fold"):
        make_folds(0, 59, train_days=30, delay_days=7, test_days=7, folds=4, step_days=7)
    with pytest.raises(ValueError, match="one fold needs 44 days"):
        make_folds(0, 40, train_days=30, delay_days=7, test_days=7)


# -- the loaded history ------------------------------------------------------------------------


def test_history_carries_cards_days_and_amounts(history, history_path: Path) -> None:
    table = pa.parquet.read_table(history_path)
    assert history.rows == table.num_rows
    # Same card id <=> same card key.
    ids = table["card_id"].to_numpy(zero_copy_only=False)
    pairs = set(zip(ids.tolist(), history.card.tolist(), strict=True))
    assert len(pairs) == len(set(ids)) == np.unique(history.card).size
    np.testing.assert_array_equal(history.day, table["timestamp"].to_numpy() // DAY_MS)
    assert history.amount.min() > 0
    d = history.describe()
    assert d["days"] == 20 and d["first_day"] == "2026-01-01" and d["frauds"] > 50


# -- evaluation --------------------------------------------------------------------------------


def test_evaluate_history_reports_every_metric_per_fold(history) -> None:
    lines: list[str] = []
    report, curves = evaluate_history(
        history,
        train_days=10,
        delay_days=2,
        test_days=3,
        folds=2,
        k=20,
        n_jobs=1,
        model_params={"gbt": FAST_GBT, "iforest": {"n_estimators": 30}},
        progress=lines.append,
    )
    assert report["protocol"]["step_days"] == 3 and report["protocol"]["k"] == 20
    assert report["protocol"]["threshold_target"] == {"target_alert_rate": 0.01}
    assert set(report["models"]) == {"gbt", "iforest"}
    assert len(lines) == 4
    first_day = int(history.day.min())
    for kind, r in report["models"].items():
        assert len(r["folds"]) == 2
        for fold in r["folds"]:
            lo, hi = fold["test_days"]
            test = (history.day >= first_day + lo - 1) & (history.day <= first_day + hi - 1)
            assert fold["test_rows"] == int(test.sum())
            m = fold["metrics"]
            for name in ("auc_roc", "average_precision", "card_precision_at_k", "precision"):
                assert 0.0 <= m[name] <= 1.0
            assert m["alerts_per_day"] == pytest.approx(m["alerts"] / 3)
            assert m["alert_rate"] == pytest.approx(m["alerts"] / fold["test_rows"])
            assert 0 <= m["fraud_amount_caught"] <= m["fraud_amount"]
            assert len(m["card_precision_at_k_per_day"]) == 3
            assert fold["risk_bands"]["high"] == fold["threshold"]
        summary = r["summary"]["average_precision"]
        aps = [f["metrics"]["average_precision"] for f in r["folds"]]
        assert summary["mean"] == pytest.approx(np.mean(aps))
        assert summary["min"] == min(aps) and summary["max"] == max(aps)
        assert [c["fold"] for c in curves[kind]] == [1, 2]
    # On the simulator's fraud the supervised model ranks far better than the forest.
    gbt = report["models"]["gbt"]["summary"]["average_precision"]["mean"]
    iforest = report["models"]["iforest"]["summary"]["average_precision"]["mean"]
    assert gbt > iforest
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN


def test_fold_metrics_are_those_of_the_served_scores(history) -> None:
    """Recompute one fold's figures from the scorer output: the report must match."""
    from txfast.evaluate import _scorer, _train

    report, _ = evaluate_history(
        history,
        models=["gbt"],
        train_days=10,
        delay_days=2,
        test_days=3,
        k=20,
        n_jobs=1,
        model_params={"gbt": FAST_GBT},
    )
    fold = report["models"]["gbt"]["folds"][0]
    first = int(history.day.min())
    train_rows = np.flatnonzero(history.day < first + 10)
    test_rows = np.flatnonzero((history.day >= first + 12) & (history.day < first + 15))
    trained = _train(
        "gbt",
        history,
        train_rows,
        targets={"target_alert_rate": 0.01},
        seed=0,
        n_jobs=1,
        params=FAST_GBT,
    )
    scored = _scorer(trained, history).score_batch(history.features.X[test_rows])
    y = history.features.label[test_rows]
    assert fold["metrics"]["average_precision"] == pytest.approx(average_precision(y, scored.raw))
    cp, _, _ = card_precision_at_k_per_day(
        history.day[test_rows], history.card[test_rows], y, scored.raw, 20
    )
    assert fold["metrics"]["card_precision_at_k"] == pytest.approx(cp)
    assert fold["metrics"]["alerts"] == int(scored.is_anomaly.sum())


def test_evaluate_refuses_unlabelled_history(tmp_path: Path) -> None:
    table = simulate(50, 3, 1)
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array([None] * table.num_rows, pa.int8())
    )
    path = tmp_path / "unlabelled.parquet"
    write_table(table, path)
    unlabelled = load_history(load_settings(None, env={}), path)
    with pytest.raises(ValueError, match="needs labels"):
        evaluate_history(unlabelled, train_days=1, delay_days=0, test_days=1)


def test_pr_curve_png(tmp_path: Path) -> None:
    curves = {
        "gbt": [{"fold": 1, "precision": np.array([0.5, 1.0]), "recall": np.array([1.0, 0.0])}],
        "iforest": [],
    }
    out = tmp_path / "sub" / "pr.png"
    write_pr_curve_png(curves, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- command line ------------------------------------------------------------------------------


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_cli_evaluate_writes_report_and_png(history_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    png = tmp_path / "pr.png"
    args = ["evaluate", "--data", str(history_path), "--train-days", "10", "--delay-days", "2"]
    args += ["--test-days", "3", "--folds", "2", "--k", "20", "--trees", "30", "--max-depth", "3"]
    args += ["--alerts-per-day", "40", "--out", str(out), "--png", str(png), "--json"]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["pr_curve_png"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert printed["protocol"]["threshold_target"] == {"alerts_per_day": 40.0}
    for r in printed["models"].values():
        cal = r["folds"][0]["threshold_calibration"]
        assert cal["method"] == "alert_rate" and cal["alerts_per_day"] == 40.0

    text = _invoke([*args[:-1], "--model", "gbt"])  # human-readable summary
    assert text.exit_code == 0
    assert "gbt: AUC-ROC" in text.output and "iforest" not in text.output


def test_cli_evaluate_explains_folds_that_do_not_fit(history_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(history_path), "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code != 0
    assert "one fold needs 44 days (30 train + 7 delay + 7 test); the data has 20" in result.output


def test_cli_train_gbt_registers_bands_and_calibration(history_path: Path, tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    base = ["train", "--data", str(history_path), "--registry", str(reg), "--trees", "30"]
    result = _invoke([*base, "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    assert "(gbt," in result.output  # auto: the history is labelled
    meta = Registry(reg).champion("default").metadata
    assert meta.kind == "gbt"
    assert meta.threshold_calibration.method == "precision"
    assert meta.threshold_calibration.expected_precision >= 0.8
    assert meta.risk_bands.high == meta.threshold
    assert meta.training.source == str(history_path) and meta.training.positives > 0
    assert meta.metrics["validation_average_precision"] > 0

    result = _invoke([*base, "--model", "isolation-forest", "--alerts-per-day", "30"])
    assert result.exit_code == 0, result.output
    v2 = Registry(reg).get("default", "v2").metadata
    assert v2.kind == "isolation_forest" and v2.threshold_calibration.alerts_per_day == 30.0
    assert "train_average_precision" in v2.metrics  # labels measure the forest, unused to fit

    both = CliRunner().invoke(main, [*base, "--target-precision", "0.8", "--alerts-per-day", "3"])
    assert both.exit_code != 0 and "at most one of" in both.output


def test_cli_train_auto_without_labels_is_isolation_forest(tmp_path: Path) -> None:
    table = simulate(60, 2, 2)
    table = table.drop_columns(["label"])
    path = tmp_path / "nolabels.parquet"
    write_table(table, path)
    reg = tmp_path / "reg"
    result = _invoke(["train", "--data", str(path), "--registry", str(reg), "--trees", "10"])
    assert result.exit_code == 0, result.output
    assert Registry(reg).champion("default").metadata.kind == "isolation_forest"
    gbt = CliRunner().invoke(
        main, ["train", "--data", str(path), "--registry", str(reg), "--model", "gbt"]
    )
    assert gbt.exit_code != 0 and "gbt needs them" in gbt.output


def test_label_column_survives_a_round_trip(history_path: Path) -> None:
    table = pa.parquet.read_table(history_path)
    assert pc.sum(table["label"]).as_py() > 0
