"""Gradient-boosted trees: ONNX export parity, training, registration refusal, serving."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

pytest.importorskip("sklearn")
xgb = pytest.importorskip("xgboost")

from txfast.config import RiskSettings  # noqa: E402
from txfast.exceptions import ParityError  # noqa: E402
from txfast.registry import ModelMetadata, Registry  # noqa: E402
from txfast.rules import RuleEngine  # noqa: E402
from txfast.scoring import Scorer  # noqa: E402
from txfast.training import train_gbt, train_isolation_forest  # noqa: E402
from txfast.training.gbt import resolve_scale_pos_weight  # noqa: E402
from txfast.training.gbt_export import xgboost_to_onnx  # noqa: E402
from txfast.training.onnx_export import check_parity, native_raw_score  # noqa: E402

F = 6
NAMES = [f"f{i}" for i in range(F)]
VERSION = "fs/1"


def _data(n: int, seed: int = 0, fraud_rate: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Rows where fraud has large f0 and f2 (and some noise), with NaN holes."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(np.int64)
    x = rng.normal(size=(n, F))
    x[:, 0] += 2.5 * y
    x[:, 2] += 1.5 * y * rng.random(n)
    x[:, 3] = np.round(x[:, 3] * 2)  # discrete: thresholds land between equal values
    x[:, 4] = rng.lognormal(3, 2, size=n)  # heavy tail
    x[rng.random(n) < 0.1, 1] = np.nan
    x[rng.random(n) < 0.05, 5] = np.nan
    return x.astype(np.float32), y


def _session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    return _session(onnx_bytes).run(["score"], {"features": x})[0]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _data(4000)


@pytest.fixture(scope="module")
def classifier(data: tuple[np.ndarray, np.ndarray]) -> object:
    x, y = data
    return xgb.XGBClassifier(
        n_estimators=40, max_depth=4, learning_rate=0.3, n_jobs=1, random_state=0
    ).fit(x, y)


# -- export ------------------------------------------------------------------------------------


def test_export_is_one_tree_ensemble_and_valid(classifier: object) -> None:
    model = onnx.load_from_string(xgboost_to_onnx(classifier, F))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["TreeEnsembleRegressor", "Reshape"]
    assert [o.name for o in model.graph.output] == ["score"]


def test_export_reproduces_the_margin_exactly(
    classifier: object, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x = _data(3000, seed=1)[0]
    x[::13, 0] = np.nan  # missing values follow default_left
    got = _onnx(xgboost_to_onnx(classifier, F), x)
    expected = classifier.predict(x, output_margin=True)  # type: ignore[attr-defined]
    # Single-threaded onnxruntime adds the trees in XGBoost's order: the float32 sums agree
    # to the last bit or two (XGBoost derives the base margin in float32).
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # The probability is the sigmoid of the exported margin.
    proba = classifier.predict_proba(x)[:, 1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(1 / (1 + np.exp(-got.astype(np.float64))), proba, atol=1e-6)


def test_export_handles_thresholds_on_split_values(classifier: object) -> None:
    """Rows exactly on every split threshold go the way XGBoost sends them (x < t left)."""
    model = onnx.load_from_string(xgboost_to_onnx(classifier, F))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    modes = np.array(attrs["nodes_modes"])
    feats = np.array(attrs["nodes_featureids"])[modes != b"LEAF"]
    values = np.array(attrs["nodes_values"], dtype=np.float32)[modes != b"LEAF"]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(values.size, F)).astype(np.float32)
    x[np.arange(values.size), feats] = values
    got = _onnx(xgboost_to_onnx(classifier, F), x)
    expected = classifier.predict(x, output_margin=True)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_export_rejects_other_models(classifier: object) -> None:
    with pytest.raises(ValueError, match="fitted on 6 features"):
        xgboost_to_onnx(classifier, F + 1)
    with pytest.raises(ValueError, match="xgboost Booster"):
        xgboost_to_onnx(object(), F)
    x, _ = _data(300, seed=4)
    regressor = xgb.XGBRegressor(n_estimators=3, n_jobs=1).fit(x, x[:, 0])
    with pytest.raises(ValueError, match="binary:logistic"):
        xgboost_to_onnx(regressor, F)


def test_native_raw_score_dispatch(classifier: object) -> None:
    x = _data(50, seed=5)[0]
    margin, what = native_raw_score(classifier, x)
    assert what == "xgboost's margin"
    np.testing.assert_array_equal(margin, classifier.predict(x, output_margin=True))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no native raw score"):
        native_raw_score(object(), x)


def test_check_parity_names_the_worst_row(classifier: object, data) -> None:
    x, y = data
    other = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    with pytest.raises(ParityError, match=r"differs from xgboost's margin by .* > 1e-05 \(row \d+"):
        check_parity(classifier, xgboost_to_onnx(other, F), x[:200])


# -- training ----------------------------------------------------------------------------------


def _train(**kwargs: object):
    x, y = _data(5000, seed=7)
    ts = np.arange(x.shape[0], dtype=np.int64) * 60_000 + 1_700_000_000_000
    args: dict = {
        "ts_ms": ts,
        "n_estimators": 60,
        "max_depth": 3,
        "learning_rate": 0.3,
        "n_jobs": 1,
        "early_stopping_rounds": 10,
    }
    args.update(kwargs)
    return train_gbt(x, y, NAMES, VERSION, **args), x, y, ts


def test_train_gbt_metadata_and_out_of_time_validation() -> None:
    trained, x, y, ts = _train(target_alert_rate=0.05)
    meta = msgspec.convert(trained.metadata, type=ModelMetadata)
    assert meta.kind == "gbt" and meta.feature_names == NAMES and meta.feature_version == VERSION
    assert meta.threshold == pytest.approx(0.95)
    assert meta.risk_bands is not None
    assert (meta.risk_bands.medium, meta.risk_bands.high, meta.risk_bands.critical) == (
        pytest.approx(0.75),
        pytest.approx(0.95),
        pytest.approx(0.995),
    )
    t = meta.training
    assert (t.rows, t.start_ms, t.end_ms) == (5000, int(ts[0]), int(ts[-1]))
    assert t.positives == int(y.sum()) and t.labelled == 5000
    # The validation period is the latest 20 % of the rows, by time.
    assert t.validation_start_ms == int(ts[4000])
    assert meta.metrics["validation_rows"] == 1000
    assert meta.metrics["fit_rows"] == 4000
    assert meta.metrics["validation_average_precision"] > 0.5
    assert meta.metrics["parity_max_abs_diff"] <= 1e-5
    assert meta.threshold_calibration is not None
    assert meta.threshold_calibration.reference == "validation"
    assert meta.threshold_calibration.rows == 1000
    # The held-out parity rows are the validation rows.
    assert trained.parity_rows is not None
    np.testing.assert_array_equal(trained.parity_rows, x[4000:])
    # The calibrated threshold flags the target share of the validation period's traffic.
    assert meta.threshold_calibration.expected_alert_rate == pytest.approx(0.05, abs=0.002)
    assert meta.metrics["calibration_rows"] == 1000


def test_early_stopping_keeps_only_the_best_rounds() -> None:
    trained, x, _, _ = _train(n_estimators=150, learning_rate=0.5, early_stopping_rounds=5)
    trees = int(trained.metadata["metrics"]["trees"])
    assert trees < 150
    assert trained.model.num_boosted_rounds() == trees
    graph = onnx.load_from_string(trained.onnx_bytes)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in graph.graph.node[0].attribute}
    assert len(set(attrs["nodes_treeids"])) == trees
    np.testing.assert_allclose(
        _onnx(trained.onnx_bytes, x[:500]), native_raw_score(trained.model, x[:500])[0], atol=1e-5
    )


def test_target_precision_threshold_reaches_the_precision_on_validation() -> None:
    trained, _, _, _ = _train(target_precision=0.9)
    cal = trained.metadata["threshold_calibration"]
    assert cal["method"] == "precision" and cal["target"] == 0.9
    assert cal["expected_precision"] >= 0.9
    assert trained.metadata["metrics"]["validation_precision"] == pytest.approx(
        cal["expected_precision"]
    )
    assert trained.metadata["risk_bands"]["high"] == trained.metadata["threshold"]


def test_unknown_labels_are_not_fitted_but_calibrated() -> None:
    x, y = _data(3000, seed=8)
    y = y.copy()
    y[::3] = -1
    trained = train_gbt(x, y, NAMES, VERSION, n_estimators=20, n_jobs=1)
    meta = trained.metadata
    assert meta["training"]["labelled"] == int((y >= 0).sum())
    assert meta["metrics"]["fit_rows"] + meta["metrics"]["validation_rows"] == (y >= 0).sum()
    # The calibration traffic is the validation period, unlabelled rows included: rows are
    # in time order here, and the period starts at the 80 % quantile of the labelled rows.
    start = int(np.flatnonzero(y >= 0)[int(np.ceil(0.8 * ((y >= 0).sum() - 1)))])
    assert meta["metrics"]["calibration_rows"] == x.shape[0] - start
    scores = _onnx(trained.onnx_bytes, x[start:])
    calibrated = Scorer(_loaded(trained), feature_names=NAMES, feature_version=VERSION).score(
        x[start:]
    )
    assert float((calibrated >= np.float32(meta["threshold"])).mean()) == pytest.approx(
        0.01, abs=0.002
    )
    assert scores.shape == (x.shape[0] - start,)


def _loaded(trained):
    from pathlib import Path

    from txfast.registry import LoadedModel, ModelVersion

    meta = msgspec.convert(dict(trained.metadata, name="m", version="v1"), type=ModelMetadata)
    return LoadedModel(
        info=ModelVersion(name="m", version="v1", path=Path("."), metadata=meta),
        onnx_bytes=trained.onnx_bytes,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y": np.zeros(100, np.int64)}, "both classes"),
        ({"y": np.full(100, -1)}, "no labelled rows"),
        ({"y": np.full(100, 2)}, "0, 1 or -1"),
        ({"y": np.zeros(99, np.int64)}, "shape"),
        ({"validation_fraction": 0.0, "target_precision": 0.5}, "validation period"),
        ({"target_alert_rate": 0.1, "alerts_per_day": 5.0}, "exactly one"),
        ({"scale_pos_weight": "heavy"}, "scale_pos_weight"),
    ],
)
def test_train_gbt_validates_arguments(kwargs: dict, message: str) -> None:
    x, y = _data(100, seed=9)
    y[:5] = 1
    args: dict = {"X": x, "y": y, "feature_names": NAMES, "feature_version": VERSION}
    args.update({"n_estimators": 2, "n_jobs": 1})
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_gbt(**args)


def test_resolve_scale_pos_weight() -> None:
    assert resolve_scale_pos_weight("sqrt", 9900, 100) == pytest.approx(99**0.5)
    assert resolve_scale_pos_weight("balanced", 9900, 100) == pytest.approx(99.0)
    assert resolve_scale_pos_weight(None, 9900, 100) == 1.0
    assert resolve_scale_pos_weight("none", 9900, 100) == 1.0
    assert resolve_scale_pos_weight("2.5", 9900, 100) == 2.5
    with pytest.raises(ValueError, match="positive"):
        resolve_scale_pos_weight(-1.0, 10, 1)


def test_class_weight_moves_the_margin_of_fraud() -> None:
    light, x, y, _ = _train(scale_pos_weight="none", early_stopping_rounds=None, n_estimators=20)
    heavy, _, _, _ = _train(
        scale_pos_weight="balanced", early_stopping_rounds=None, n_estimators=20
    )
    m_light = native_raw_score(light.model, x[y == 1])[0].mean()
    m_heavy = native_raw_score(heavy.model, x[y == 1])[0].mean()
    assert m_heavy > m_light + 1.0  # the fraud class weighs more: higher log-odds
    assert heavy.metadata["metrics"]["scale_pos_weight"] == pytest.approx(
        (y[:4000] == 0).sum() / (y[:4000] == 1).sum()
    )


# -- registration refuses a graph that does not score like the native model --------------------


def _corrupt_leaf(onnx_bytes: bytes, delta: float) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    node = model.graph.node[0]
    for attr in node.attribute:
        if attr.name == "target_weights":
            attr.floats[0] += delta
    return model.SerializeToString()


def _mul_initializer(onnx_bytes: bytes, factor: float) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    for init in model.graph.initializer:
        if init.name == "neg_ln2_over_c":
            value = numpy_helper.to_array(init) * np.float32(factor)
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    return model.SerializeToString()


def test_register_refuses_a_corrupted_gbt_graph(tmp_path) -> None:
    trained, _, _, _ = _train()
    # The first tree's first leaf moves by 1e-3: only rows reaching that leaf differ.
    bad = dataclasses.replace(trained, onnx_bytes=_corrupt_leaf(trained.onnx_bytes, 1e-3))
    with pytest.raises(ParityError, match=r"differs from xgboost's margin by 0\.001 > 1e-05"):
        bad.register(tmp_path)
    assert Registry(tmp_path).names() == []
    # Well under the tolerance is accepted; the untouched model registers.
    ok = dataclasses.replace(trained, onnx_bytes=_corrupt_leaf(trained.onnx_bytes, 1e-7))
    assert ok.register(tmp_path).version == "v1"
    assert trained.register(tmp_path, promote=True).version == "v2"


def test_register_refuses_a_mismatched_native_model(tmp_path) -> None:
    trained, _, _, _ = _train()
    other, _, _, _ = _train(seed=3, max_depth=2)
    swapped = dataclasses.replace(trained, model=other.model)
    with pytest.raises(ParityError, match="rows over tolerance"):
        swapped.register(tmp_path)
    assert not (tmp_path / "default").exists()


def test_register_refuses_a_corrupted_isolation_forest_graph(tmp_path) -> None:
    x, _ = _data(3000, seed=10)
    x = np.nan_to_num(x)
    trained = train_isolation_forest(x, NAMES, VERSION, n_estimators=20)
    bad = dataclasses.replace(trained, onnx_bytes=_mul_initializer(trained.onnx_bytes, 1.001))
    with pytest.raises(ParityError, match="differs from score_samples"):
        bad.register(tmp_path)
    assert Registry(tmp_path).names() == []
    assert trained.register(tmp_path).version == "v1"


# -- serving: scorer, bands and rules ----------------------------------------------------------


def test_gbt_served_by_the_scorer_with_its_bands(tmp_path) -> None:
    trained, x, y, _ = _train(alerts_per_day=30.0)
    trained.register(tmp_path, promote=True)
    scorer = Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)
    batch = scorer.score_batch(x)
    np.testing.assert_allclose(batch.raw, native_raw_score(trained.model, x)[0], atol=1e-5)
    bands = trained.metadata["risk_bands"]
    assert batch.bands == (bands["medium"], bands["high"], bands["critical"])
    assert scorer.risk_bands == batch.bands
    # 30 alerts/day over 5000 minutes (~3.47 days) of 5000 rows: a ~2.1 % alert rate.
    assert float(batch.is_anomaly.mean()) == pytest.approx(30 * 3.4722 / 5000, abs=0.006)
    # Fraud ranks above legitimate traffic.
    assert batch.score[y == 1].mean() > batch.score[y == 0].mean() + 0.3

    # The rules use the model's bands unless the settings set bands.
    n = len(batch.score)
    args = dict(
        amount=np.full(n, 50.0),
        features=np.zeros((n, 37), np.float32),
        channel=np.ones(n, np.uint8),
        category=__import__("pyarrow").array([None] * n, __import__("pyarrow").string()),
        country=__import__("pyarrow").array([None] * n, __import__("pyarrow").string()),
    )
    engine = RuleEngine(RiskSettings(), [], [])
    with_model = engine.apply(batch.score, batch.threshold, bands=batch.bands, **args)
    high = batch.score >= np.float32(bands["high"])
    assert ((with_model.level >= 2) == high).all()
    configured = RuleEngine(RiskSettings(high=0.5, medium=0.4), [], [])
    overridden = configured.apply(batch.score, batch.threshold, bands=batch.bands, **args)
    assert ((overridden.level >= 2) == (batch.score >= 0.5)).all()
