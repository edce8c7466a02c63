"""Explanations: TreeSHAP and path attribution against XGBoost's own, stored with alerts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
xgb = pytest.importorskip("xgboost")

from txfast.config import load_settings  # noqa: E402
from txfast.explain import EXPLAINER_FILE, Explainer, TreeTables  # noqa: E402
from txfast.pipeline import Pipeline  # noqa: E402
from txfast.registry import Registry, RegistryError  # noqa: E402
from txfast.scoring import Scorer  # noqa: E402
from txfast.sources import FileSource  # noqa: E402
from txfast.training import train_gbt, train_isolation_forest  # noqa: E402
from txfast.training.onnx_export import average_path_length  # noqa: E402

F = 6
NAMES = [f"f{i}" for i in range(F)]
VERSION = "fs/1"


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(np.int64)
    x = rng.normal(size=(n, F))
    x[:, 0] += 2.5 * y
    x[:, 2] += 1.5 * y * rng.random(n)
    x[:, 3] = np.round(x[:, 3] * 2)  # ties on thresholds
    x[rng.random(n) < 0.1, 1] = np.nan  # missing values follow the default branch
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def gbt():
    x, y = _data(4000)
    return train_gbt(x, y, NAMES, VERSION, n_estimators=40, max_depth=4, n_jobs=1)


@pytest.fixture(scope="module")
def forest():
    x, _ = _data(4000, seed=1)
    return train_isolation_forest(x, NAMES, VERSION, n_estimators=40, n_jobs=1)


def test_tree_shap_matches_xgboost_pred_contribs(gbt) -> None:
    x, _ = _data(500, seed=5)
    tables = TreeTables.from_bytes(gbt.explainer)
    ours = Explainer(tables, NAMES).contributions(x)
    theirs = gbt.model.predict(xgb.DMatrix(x), pred_contribs=True)
    # XGBoost accumulates in float32; ours in float64.
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    margin = gbt.model.predict(xgb.DMatrix(x), output_margin=True)
    np.testing.assert_allclose(ours.sum(axis=1), margin, atol=2e-4)


def test_path_attribution_matches_xgboost_approx_contribs(gbt) -> None:
    x, _ = _data(300, seed=6)
    tables = TreeTables.from_bytes(gbt.explainer)
    ours = Explainer(tables, NAMES, method="path").contributions(x)
    theirs = gbt.model.predict(xgb.DMatrix(x), pred_contribs=True, approx_contribs=True)
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)


def test_isolation_forest_attribution_adds_up_to_its_isolation_depth(forest) -> None:
    x, _ = _data(400, seed=7)
    x[0, 0] = 9.0  # an outlier on f0 is isolated by f0
    phi = Explainer(TreeTables.from_bytes(forest.explainer), NAMES).contributions(x)
    # score_samples = -2 ** (-E[h] / c): recover the mean isolation depth E[h].
    c = float(average_path_length(forest.model._max_samples))
    depth = -np.log2(-forest.model.score_samples(x)) * c
    np.testing.assert_allclose(phi.sum(axis=1), -depth, atol=1e-6)
    assert np.argmax(phi[0, :F]) == 0
    assert phi[0, 0] > 0, "isolated faster than average: a positive contribution"


def test_explanations_are_json_with_the_top_contributions(gbt) -> None:
    x, _ = _data(50, seed=8)
    explainer = Explainer(TreeTables.from_bytes(gbt.explainer), NAMES, top_k=3)
    docs = [json.loads(d) for d in explainer.explain(x)]
    phi = explainer.contributions(x)
    for row, doc in enumerate(docs):
        assert doc["method"] == "treeshap" and doc["units"] == "log-odds"
        top = doc["top"]
        assert 0 < len(top) <= 3
        expected = np.argsort(-np.abs(phi[row, :F]), kind="stable")[: len(top)]
        assert [t["feature"] for t in top] == [NAMES[j] for j in expected]
        for t in top:
            j = NAMES.index(t["feature"])
            assert t["contribution"] == pytest.approx(phi[row, j], abs=1e-6)
            v = x[row, j]
            assert t["value"] is None if np.isnan(v) else t["value"] == pytest.approx(v, abs=1e-5)
        assert doc["output"] == pytest.approx(phi[row].sum(), abs=1e-5)


def test_invalid_explainer_inputs_are_refused(gbt) -> None:
    tables = TreeTables.from_bytes(gbt.explainer)
    with pytest.raises(ValueError, match="feature names"):
        Explainer(tables, NAMES[:-1])
    explainer = Explainer(tables, NAMES)
    with pytest.raises(Exception, match="columns"):
        explainer.contributions(np.zeros((2, F + 1), np.float32))
    with pytest.raises(ValueError, match="invalid explainer"):
        TreeTables.from_bytes(b"not an npz")


def test_registry_stores_and_checks_the_explainer(gbt, tmp_path: Path) -> None:
    version = gbt.register(tmp_path, promote=True)
    assert (version.path / EXPLAINER_FILE).exists()
    assert EXPLAINER_FILE in version.metadata.artifacts
    scorer = Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)
    x, _ = _data(20, seed=9)
    assert scorer.score_batch(x).explainer is not None
    off = Scorer.from_registry(
        tmp_path, feature_names=NAMES, feature_version=VERSION, explain=False
    )
    assert off.score_batch(x).explainer is None
    (version.path / EXPLAINER_FILE).write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        Scorer.from_registry(tmp_path, feature_names=NAMES, feature_version=VERSION)
    with pytest.raises(RegistryError, match="artifact name"):
        Registry(tmp_path).register(
            "default", gbt.onnx_bytes, gbt.metadata, artifacts={"../x": b"1"}
        )


def _run(history_stream: Path, registry: Path, store: str, **explain: object):
    settings = load_settings(
        env={}, overrides={"store": store, "registry": str(registry), "explain": explain}
    )
    pipe = Pipeline.from_settings(settings)
    try:
        pipe.run(FileSource(history_stream, batch_size=2000), source="stream")
        return pipe.store.query("SELECT transaction_id, features, explanation FROM alerts")
    finally:
        pipe.store.close()


def test_pipeline_stores_an_explanation_with_every_alert(
    stream_events, registry: Path, tmp_path: Path
) -> None:
    path = tmp_path / "stream.jsonl"
    path.write_bytes(b"\n".join(stream_events) + b"\n")
    rows = _run(path, registry, f"duckdb:{tmp_path / 'on.duckdb'}", top_k=4)
    assert rows, "the stream raises alerts"
    names = Pipeline.from_settings(
        load_settings(env={}, overrides={"store": "duckdb::memory:", "registry": str(registry)})
    ).feature_names
    for _tx, features, explanation in rows:
        doc = json.loads(explanation)
        assert doc["method"] == "path" and doc["units"] == "isolation depth"
        assert 0 < len(doc["top"]) <= 4
        for t in doc["top"]:
            assert t["value"] == pytest.approx(features[names.index(t["feature"])], abs=1e-4)
        # The most anomalous-making feature comes first and pushes towards an alert.
        assert doc["top"][0]["contribution"] > 0
    off = _run(path, registry, f"duckdb:{tmp_path / 'off.duckdb'}", enabled=False)
    assert len(off) == len(rows)
    assert all(r[2] is None for r in off)
