"""The ONNX export reproduces IsolationForest.score_samples (negated) to 1e-5."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("sklearn")
from sklearn.ensemble import IsolationForest  # noqa: E402

from txfast.registry import ModelMetadata  # noqa: E402
from txfast.training import (  # noqa: E402
    KIND,
    ParityError,
    check_parity,
    isolation_forest_to_onnx,
    train_isolation_forest,
)
from txfast.training import isolation_forest as if_module  # noqa: E402
from txfast.training.onnx_export import average_path_length  # noqa: E402

ATOL = 1e-5
F = 7


def _training_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [
        rng.normal(size=n),
        np.round(rng.normal(scale=2.0, size=n)),  # discrete: many equal values
        rng.lognormal(3.0, 1.5, size=n),  # heavy tail
        rng.normal(size=n) * 1e30,  # huge magnitudes
        rng.normal(size=n) * 1e-30,  # tiny magnitudes
        rng.integers(0, 2, size=n),  # flag
        np.where(rng.random(n) < 0.3, -1.0, rng.exponential(50.0, size=n)),  # -1 = undefined
    ]
    return np.column_stack(cols).astype(np.float32)


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def _onnx_scores(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(["score"], {"features": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _max_diff(model: IsolationForest, session: ort.InferenceSession, x: np.ndarray) -> float:
    expected = -model.score_samples(x)
    return float(np.abs(_onnx_scores(session, x).astype(np.float64) - expected).max())


@pytest.fixture(scope="module")
def forest() -> IsolationForest:
    return IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(
        _training_data(5000)
    )


@pytest.fixture(scope="module")
def exported(forest: IsolationForest) -> bytes:
    return isolation_forest_to_onnx(forest, F)


@pytest.fixture(scope="module")
def session(exported: bytes) -> ort.InferenceSession:
    return _session(exported)


def test_graph_is_one_tree_ensemble_and_valid(exported: bytes) -> None:
    model = onnx.load_from_string(exported)
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1
    assert len(ops) <= 4
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "features" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1] == F
    assert out.name == "score" and len(out.type.tensor_type.shape.dim) == 1


def test_output_shape_and_dtype(session: ort.InferenceSession) -> None:
    out = _onnx_scores(session, _training_data(33, seed=5))
    assert out.shape == (33,) and out.dtype == np.float32
    assert ((out > 0) & (out <= 1)).all()


def test_parity_on_held_out_data(forest: IsolationForest, session: ort.InferenceSession) -> None:
    x = _training_data(20000, seed=1)
    x[:2000] *= 10.0  # push some rows out of the training range (anomalies)
    assert _max_diff(forest, session, x) <= ATOL


def test_parity_at_split_thresholds(forest: IsolationForest, session: ort.InferenceSession) -> None:
    # For every split, put a row exactly on the threshold (as float32) and one ulp either
    # side. sklearn compares float32 inputs with float64 thresholds, so rounding the
    # threshold to the nearest float32 would send some of these rows the wrong way.
    rng = np.random.default_rng(2)
    base = _training_data(1000, seed=3)
    rows, rounded_up = [], 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            if feature < 0:
                continue
            t32 = np.float32(threshold)
            rounded_up += int(float(t32) > threshold)
            for value in (
                t32,
                np.nextafter(t32, np.float32(np.inf)),
                np.nextafter(t32, np.float32(-np.inf)),
            ):
                row = base[rng.integers(len(base))].copy()
                row[feature] = value
                rows.append(row)
    x = np.array(rows, dtype=np.float32)
    assert rounded_up > 0  # the data really exercises the rounding direction
    assert _max_diff(forest, session, x) <= ATOL


def test_parity_extreme_magnitudes(forest: IsolationForest, session: ort.InferenceSession) -> None:
    f32 = np.finfo(np.float32)
    specials = np.array(
        [
            0.0,
            -0.0,
            f32.max,
            -f32.max,
            f32.tiny,
            -f32.tiny,
            f32.smallest_subnormal,
            1e-38,
            -1e-38,
            1e38,
            -1e38,
            1.0,
            -1.0,
        ],
        dtype=np.float32,
    )
    rng = np.random.default_rng(4)
    x = rng.choice(specials, size=(4000, F)).astype(np.float32)
    mixed = _training_data(4000, seed=6)
    mask = rng.random(mixed.shape) < 0.3
    mixed[mask] = rng.choice(specials, size=int(mask.sum()))
    assert _max_diff(forest, session, np.vstack([x, mixed])) <= ATOL


def test_parity_with_nan(forest: IsolationForest, session: ort.InferenceSession) -> None:
    rng = np.random.default_rng(7)
    x = _training_data(5000, seed=8)
    x[rng.random(x.shape) < 0.2] = np.nan
    assert _max_diff(forest, session, x) <= ATOL


@pytest.mark.parametrize(
    ("max_samples", "max_features"), [(2, 1.0), (3, 1.0), (17, 1.0), (256, 0.5), (64, 3)]
)
def test_parity_other_shapes(max_samples: int, max_features: float) -> None:
    x = _training_data(2000, seed=9)
    model = IsolationForest(
        n_estimators=20, max_samples=max_samples, max_features=max_features, random_state=1
    ).fit(x)
    session = _session(isolation_forest_to_onnx(model, F))
    held_out = _training_data(3000, seed=10)
    assert _max_diff(model, session, held_out) <= ATOL


def test_equal_leaf_splits_are_collapsed(forest: IsolationForest, exported: bytes) -> None:
    node = onnx.load_from_string(exported).graph.node[0]
    n_nodes = len(next(a.ints for a in node.attribute if a.name == "nodes_nodeids"))
    assert n_nodes < sum(e.tree_.node_count for e in forest.estimators_)


def test_average_path_length_values() -> None:
    c = average_path_length(np.array([0, 1, 2, 3, 256]))
    assert c[0] == 0.0 and c[1] == 0.0 and c[2] == 1.0
    assert c[3] == pytest.approx(2 * (np.log(2) + np.euler_gamma) - 4 / 3)
    assert c[4] == pytest.approx(10.2448, abs=1e-4)


def test_export_rejects_wrong_feature_count(forest: IsolationForest) -> None:
    with pytest.raises(ValueError, match="fitted on 7 features"):
        isolation_forest_to_onnx(forest, F + 1)
    with pytest.raises(ValueError, match="fitted sklearn.ensemble.IsolationForest"):
        isolation_forest_to_onnx(object(), F)


def test_check_parity_detects_a_wrong_graph(forest: IsolationForest) -> None:
    other = IsolationForest(n_estimators=10, random_state=5).fit(_training_data(500, seed=11))
    with pytest.raises(ParityError, match="differs from score_samples"):
        check_parity(forest, isolation_forest_to_onnx(other, F), _training_data(200, seed=12))


# -- training ---------------------------------------------------------------------------------

NAMES = [f"f{i}" for i in range(F)]


def test_train_returns_registry_ready_metadata() -> None:
    x = _training_data(6000, seed=13)
    trained = train_isolation_forest(
        x, NAMES, "fs/1", n_estimators=50, target_alert_rate=0.02, time_range_ms=(10, 20)
    )
    meta = msgspec.convert(trained.metadata, type=ModelMetadata)
    assert meta.kind == KIND
    assert meta.feature_names == NAMES and meta.feature_version == "fs/1"
    assert meta.threshold == pytest.approx(0.98)
    assert len(meta.calibration.quantiles) == 1001
    assert meta.training.rows == 6000
    assert (meta.training.start_ms, meta.training.end_ms) == (10, 20)
    assert meta.metrics["holdout_rows"] == 600
    assert meta.metrics["parity_max_abs_diff"] <= ATOL
    assert meta.metrics["train_alert_rate"] == pytest.approx(0.02, abs=0.005)
    assert "name" not in trained.metadata and "version" not in trained.metadata
    scores = _onnx_scores(_session(trained.onnx_bytes), x)
    np.testing.assert_allclose(scores, -trained.model.score_samples(x), atol=ATOL)


def test_train_small_sample_checks_parity_on_training_rows() -> None:
    trained = train_isolation_forest(_training_data(300), NAMES, "fs/1", n_estimators=10)
    assert trained.metadata["metrics"]["holdout_rows"] == 0
    assert trained.metadata["metrics"]["parity_rows"] == 300
    assert trained.metadata["params"]["max_samples"] == 256


def test_train_raises_when_export_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    other = IsolationForest(n_estimators=10, random_state=5).fit(_training_data(500, seed=11))
    monkeypatch.setattr(
        if_module, "isolation_forest_to_onnx", lambda model, n: isolation_forest_to_onnx(other, n)
    )
    with pytest.raises(ParityError, match=r"> 1e-05"):
        train_isolation_forest(_training_data(400), NAMES, "fs/1", n_estimators=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_names": NAMES[:-1]}, "feature names were given"),
        ({"feature_names": ["a"] * F}, "unique"),
        ({"target_alert_rate": 0.0}, "target_alert_rate"),
        ({"X": np.zeros((1, F), np.float32)}, "at least 2"),
        ({"X": np.zeros(F, np.float32)}, "2-D"),
        ({"time_range_ms": (5, 1)}, "start is after end"),
    ],
)
def test_train_validates_arguments(kwargs: dict, message: str) -> None:
    args = {"X": _training_data(50), "feature_names": NAMES, "feature_version": "fs/1"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_isolation_forest(**args)


# -- benchmark (deselected by default: pytest -m benchmark -s) --------------------------------


@pytest.mark.benchmark
def test_throughput_against_score_samples() -> None:
    x = _training_data(60000, seed=14)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(x[:50000])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(
        isolation_forest_to_onnx(model, F), options, providers=["CPUExecutionProvider"]
    )

    def best_of(fn, batch: np.ndarray, reps: int) -> float:
        fn(batch)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                fn(batch)
            times.append((time.perf_counter() - start) / reps)
        return min(times)

    results = {}
    for size, reps in ((8192, 20), (1, 2000)):
        batch = np.ascontiguousarray(x[50000 : 50000 + size])
        t_onnx = best_of(lambda b: sess.run(["score"], {"features": b}), batch, reps)
        t_sk = best_of(model.score_samples, batch, max(2, reps // 200))
        results[size] = (t_onnx, t_sk)
        print(
            f"batch {size}: onnx {t_onnx * 1e6:.1f} us ({size / t_onnx:,.0f} rows/s), "
            f"sklearn {t_sk * 1e6:.1f} us ({size / t_sk:,.0f} rows/s), "
            f"ratio {t_sk / t_onnx:.1f}x"
        )
    assert results[8192][0] < results[8192][1]
