"""Scorer: calibration, feature checks, batch scoring and champion reloads."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from txfast.registry import Calibration, ModelMetadata, Registry, RegistryError, TrainingData
from txfast.scoring import (
    Calibrator,
    ModelMismatchError,
    Scorer,
    check_features,
    fit_calibration,
)

NAMES = ["amount", "count_1h", "km_from_prev"]
VERSION = "fs/1"


def make_onnx(n_features: int = len(NAMES), scale: float = 1.0) -> bytes:
    """A tiny stand-in model: raw score = sigmoid(scale * sum(features))."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "scale"], ["scaled"]),
            helper.make_node("Sigmoid", ["scaled"], ["score"]),
        ],
        "stand_in",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def expected_raw(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-scale * x.astype(np.float64).sum(axis=1)))


def make_metadata(
    names: list[str] = NAMES, feature_version: str = VERSION, **kw: object
) -> ModelMetadata:
    fields: dict = {
        "kind": "stand_in",
        "feature_names": names,
        "feature_version": feature_version,
        "calibration": Calibration(quantiles=np.linspace(0.0, 1.0, 101).tolist()),
        "threshold": 0.99,
        "training": TrainingData(rows=1000),
    }
    fields.update(kw)
    return ModelMetadata(**fields)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    reg = Registry(tmp_path / "models")
    reg.register("default", make_onnx(), make_metadata(), promote=True)
    return reg.root


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES))).astype(np.float32)


# -- calibration ------------------------------------------------------------------------------


def test_calibration_is_the_empirical_cdf() -> None:
    rng = np.random.default_rng(0)
    train = rng.gamma(2.0, size=200_000)
    calibrate = Calibrator(fit_calibration(train))
    assert float((calibrate(train) >= 0.99).mean()) == pytest.approx(0.01, abs=1e-3)
    fresh = rng.gamma(2.0, size=200_000)
    assert float((calibrate(fresh) >= 0.95).mean()) == pytest.approx(0.05, abs=2e-3)
    assert calibrate(np.array([np.median(train)]))[0] == pytest.approx(0.5, abs=1e-3)


def test_calibration_bounds_and_dtype() -> None:
    calibrate = Calibrator([1.0, 2.0, 3.0])
    out = calibrate(np.array([-10.0, 1.0, 1.5, 2.0, 3.0, 1e9], dtype=np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])


def test_calibration_keeps_ties_as_steps() -> None:
    # Half the training traffic has exactly the raw score 0.5.
    train = np.concatenate([np.linspace(0.0, 0.49, 500), np.full(1000, 0.5), [0.6, 0.7]])
    calibrate = Calibrator(fit_calibration(train))
    at_tie, above_tie = calibrate(np.array([0.5, np.nextafter(0.5, 1.0)]))
    assert at_tie == pytest.approx(500 / 1502, abs=2e-3)  # share strictly below the tie
    assert above_tie == pytest.approx(1500 / 1502, abs=2e-3)


def test_constant_training_scores() -> None:
    calibrate = Calibrator(fit_calibration(np.full(50, 0.4)))
    np.testing.assert_array_equal(calibrate(np.array([0.3, 0.4, 0.41])), [0.0, 0.0, 1.0])


def test_calibration_with_subnormal_gaps() -> None:
    tiny = np.nextafter(0.0, 1.0)
    calibrate = Calibrator([0.0, tiny, 2 * tiny, 1.0])
    out = calibrate(np.array([-1.0, 0.0, tiny, 1.5 * tiny, 2 * tiny, 0.5, 2.0]))
    assert np.isfinite(out).all()
    assert (np.diff(out) >= 0).all()
    assert out[0] == 0.0 and out[-1] == 1.0


@settings(max_examples=60, deadline=None)
@given(
    quantiles=hnp.arrays(
        np.float64,
        st.integers(2, 60),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=True),
    ),
    raw=hnp.arrays(
        np.float64, st.integers(1, 80), elements=st.floats(-2e6, 2e6, allow_subnormal=True)
    ),
)
def test_calibration_is_monotonic_and_bounded(quantiles: np.ndarray, raw: np.ndarray) -> None:
    calibrate = Calibrator(np.sort(quantiles))
    out = calibrate(np.sort(raw))
    assert ((out >= 0.0) & (out <= 1.0)).all()
    assert (np.diff(out) >= 0).all()


@pytest.mark.parametrize(
    ("quantiles", "message"),
    [([1.0], "at least 2"), ([2.0, 1.0], "non-decreasing"), ([0.0, np.inf], "finite")],
)
def test_calibrator_rejects_bad_quantiles(quantiles: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibrator(quantiles)


def test_fit_calibration_validates() -> None:
    assert len(fit_calibration(np.arange(10.0))) == 1001
    assert len(fit_calibration(np.arange(10.0), n_quantiles=5)) == 5
    with pytest.raises(ValueError, match="empty"):
        fit_calibration(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        fit_calibration(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="at least 2"):
        fit_calibration(np.arange(3.0), n_quantiles=1)


# -- feature checks ---------------------------------------------------------------------------


def test_check_features_accepts_a_match() -> None:
    check_features(make_metadata(), tuple(NAMES), VERSION)


@pytest.mark.parametrize(
    ("names", "version", "patterns"),
    [
        (NAMES, "fs/2", ["feature version: model 'fs/1', provided 'fs/2'"]),
        (
            ["amount", "count_24h", "km_from_prev"],
            VERSION,
            ["column 1: model expects 'count_1h', provided 'count_24h'"],
        ),
        (["amount", "km_from_prev", "count_1h"], VERSION, ["column 1"]),
        (NAMES[:2], VERSION, ["column 2: missing feature 'km_from_prev'"]),
        (NAMES + ["extra"], VERSION, ["column 3: unexpected extra feature 'extra'"]),
        (["x", *NAMES[1:]], "fs/0", ["'fs/1', provided 'fs/0'", "column 0"]),
    ],
)
def test_check_features_names_the_difference(
    names: list[str], version: str, patterns: list[str]
) -> None:
    with pytest.raises(ModelMismatchError) as info:
        check_features(make_metadata(name="default", version="v4"), names, version)
    message = str(info.value)
    assert message.startswith("model 'default' v4 does not match")
    for pattern in patterns:
        assert pattern in message
    assert isinstance(info.value, ValueError)


def test_scorer_refuses_mismatched_champion(root: Path) -> None:
    with pytest.raises(ModelMismatchError, match="provided 'fs/9'"):
        Scorer.from_registry(root, feature_names=NAMES, feature_version="fs/9")
    with pytest.raises(ModelMismatchError, match="model expects 'amount', provided 'amt'"):
        Scorer.from_registry(root, feature_names=["amt", *NAMES[1:]], feature_version=VERSION)


def test_scorer_needs_a_champion(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="unknown model 'default'"):
        Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)
    reg.register("default", make_onnx(), make_metadata())
    with pytest.raises(RegistryError, match="no champion"):
        Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)


# -- scoring ----------------------------------------------------------------------------------


def test_scores_are_raw_scores_calibrated(root: Path) -> None:
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION, threads=1)
    assert (scorer.model_name, scorer.model_version, scorer.threshold) == ("default", "v1", 0.99)
    assert scorer.metadata.feature_names == NAMES == scorer.feature_names
    x = batch(500)
    raw = scorer.raw_score(x)
    assert raw.dtype == np.float32 and raw.shape == (500,)
    np.testing.assert_allclose(raw, expected_raw(x), atol=1e-6)
    score = scorer.score(x)
    assert score.dtype == np.float32 and score.shape == (500,)
    np.testing.assert_allclose(score, raw, atol=1e-6)  # identity calibration in this model
    result = scorer.score_batch(x)
    np.testing.assert_array_equal(result.raw, raw)
    np.testing.assert_array_equal(result.score, score)
    np.testing.assert_array_equal(result.is_anomaly, score >= np.float32(0.99))
    assert (result.model_version, result.threshold) == ("v1", 0.99)


def test_scoring_accepts_other_layouts_and_rejects_bad_shapes(root: Path) -> None:
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    x64 = batch(10).astype(np.float64)
    np.testing.assert_allclose(scorer.raw_score(x64), expected_raw(x64), atol=1e-6)
    fortran = np.asfortranarray(batch(10))
    np.testing.assert_allclose(scorer.raw_score(fortran), expected_raw(fortran), atol=1e-6)
    assert scorer.score(np.empty((0, 3), np.float32)).shape == (0,)
    assert scorer.score(batch(1)).shape == (1,)
    with pytest.raises(ValueError, match="3 feature columns, got shape \\(4, 2\\)"):
        scorer.score(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="got shape \\(3,\\)"):
        scorer.score(np.zeros(3, np.float32))


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_threads_must_be_positive(root: Path, threads: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        Scorer.from_registry(
            root,
            feature_names=NAMES,
            feature_version=VERSION,
            threads=threads,  # type: ignore[arg-type]
        )


def test_direct_construction_does_not_reload(root: Path) -> None:
    scorer = Scorer(Registry(root).load("default"), feature_names=NAMES, feature_version=VERSION)
    assert scorer.model_version == "v1"
    assert scorer.reload_if_changed() is False


# -- reloading --------------------------------------------------------------------------------


def test_reload_follows_the_champion_pointer(root: Path) -> None:
    reg = Registry(root)
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    x = batch(50)
    assert scorer.reload_if_changed() is False

    reg.register("default", make_onnx(scale=2.0), make_metadata())
    assert scorer.reload_if_changed() is False  # registered, not promoted
    reg.promote("default", "v2")
    assert scorer.reload_if_changed() is True
    assert scorer.model_version == "v2"
    np.testing.assert_allclose(scorer.raw_score(x), expected_raw(x, 2.0), atol=1e-6)
    assert scorer.reload_if_changed() is False

    reg.rollback("default")
    assert scorer.reload_if_changed() is True
    assert scorer.model_version == "v1"
    np.testing.assert_allclose(scorer.raw_score(x), expected_raw(x), atol=1e-6)


def test_reload_keeps_the_current_model_on_mismatch(root: Path) -> None:
    reg = Registry(root)
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    reg.register("default", make_onnx(), make_metadata(feature_version="fs/2"), promote=True)
    with pytest.raises(ModelMismatchError, match="'fs/2', provided 'fs/1'"):
        scorer.reload_if_changed()
    assert scorer.model_version == "v1"
    assert scorer.score(batch(5)).shape == (5,)


def test_reload_keeps_the_current_model_when_the_new_one_is_broken(root: Path) -> None:
    reg = Registry(root)
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    mv = reg.register("default", make_onnx(scale=3.0), make_metadata(), promote=True)
    mv.model_path.write_bytes(b"truncated")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        scorer.reload_if_changed()
    assert scorer.model_version == "v1"


def test_reload_swaps_between_batches(root: Path) -> None:
    reg = Registry(root)
    reg.register("default", make_onnx(scale=2.0), make_metadata())
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    x = batch(2000, seed=3)
    expected = {"v1": expected_raw(x, 1.0), "v2": expected_raw(x, 2.0)}
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()

    def score_forever() -> None:
        while not stop.is_set():
            result = scorer.score_batch(x)
            seen.add(result.model_version)
            if not np.allclose(result.raw, expected[result.model_version], atol=1e-6):
                errors.append(f"batch mixed models (labelled {result.model_version})")

    worker = threading.Thread(target=score_forever)
    worker.start()
    try:
        for version in ("v2", "v1", "v2", "v1"):
            reg.promote("default", version)
            assert scorer.reload_if_changed() is True
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert seen <= {"v1", "v2"}


# -- end to end with a trained Isolation Forest -----------------------------------------------


def test_trained_isolation_forest_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from txfast.training import train_isolation_forest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, len(NAMES))).astype(np.float32)
    trained = train_isolation_forest(x, NAMES, VERSION, n_estimators=50)
    trained.register(tmp_path, promote=True)
    scorer = Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)
    np.testing.assert_allclose(scorer.raw_score(x), -trained.model.score_samples(x), atol=1e-5)
    scores = scorer.score(x)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert float((scores >= scorer.threshold).mean()) == pytest.approx(0.01, abs=0.003)
    outlier = np.full((1, len(NAMES)), 8.0, dtype=np.float32)
    assert scorer.score(outlier)[0] == 1.0


def test_runtime_modules_do_not_import_sklearn() -> None:
    code = (
        "import sys, txfast.registry, txfast.scoring, txfast.training; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_challenger_scores_in_shadow_and_never_acts(root: Path, caplog) -> None:
    reg = Registry(root)
    reg.register("default", make_onnx(scale=2.0), make_metadata())
    reg.register("default", make_onnx(), make_metadata(feature_version="fs/2"))
    scorer = Scorer.from_registry(root, feature_names=NAMES, feature_version=VERSION)
    x = batch(200, seed=4)
    plain = scorer.score_batch(x)
    assert plain.shadow_score is None and scorer.shadow_version is None

    reg.set_challenger("default", "v2")
    scorer.reload_if_changed()
    shadowed = scorer.score_batch(x)
    assert scorer.model_version == "v1" and shadowed.shadow_version == "v2"
    np.testing.assert_array_equal(shadowed.score, plain.score)  # the champion still decides
    np.testing.assert_array_equal(shadowed.is_anomaly, plain.is_anomaly)
    challenger = Scorer(reg.load("default", "v2"), feature_names=NAMES, feature_version=VERSION)
    np.testing.assert_allclose(shadowed.shadow_score, challenger.score(x), atol=1e-7)
    assert not np.allclose(shadowed.shadow_score, plain.score)

    # A challenger trained on other features is skipped, loudly; the champion goes on.
    reg.set_challenger("default", "v3")
    with caplog.at_level("ERROR", logger="txfast.scoring"):
        scorer.reload_if_changed()
    assert "not run in shadow" in caplog.text
    assert scorer.score_batch(x).shadow_score is None

    # Promoting the challenger ends its shadow; --off stops one.
    reg.set_challenger("default", "v2")
    scorer.reload_if_changed()
    reg.promote("default", "v2")
    assert reg.challenger_version("default") is None
    assert scorer.reload_if_changed() is True
    after = scorer.score_batch(x)
    assert after.model_version == "v2" and after.shadow_score is None
    with pytest.raises(RegistryError, match="is the champion"):
        reg.set_challenger("default", "v2")
    reg.set_challenger("default", "v1")
    scorer.reload_if_changed()
    assert scorer.score_batch(x).shadow_version == "v1"
    reg.set_challenger("default", None)
    scorer.reload_if_changed()
    assert scorer.score_batch(x).shadow_score is None
