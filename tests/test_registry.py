"""Model registry: layout, versions, champion pointer, rollback and error reporting."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import msgspec
import numpy as np
import pytest
from onnx import TensorProto, helper

from txfast.registry import (
    Calibration,
    ModelMetadata,
    Registry,
    RegistryError,
    TrainingData,
)

N_FEATURES = 3
NAMES = ["a", "b", "c"]


def make_onnx(n_features: int = N_FEATURES, scale: float = 1.0) -> bytes:
    """A tiny stand-in model: score = sigmoid(scale * sum(features))."""
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


def make_metadata(**overrides: object) -> ModelMetadata:
    fields: dict = {
        "kind": "stand_in",
        "feature_names": NAMES,
        "feature_version": "fs/1",
        "calibration": Calibration(quantiles=np.linspace(0.0, 1.0, 11).tolist()),
        "threshold": 0.99,
        "training": TrainingData(rows=100, start_ms=1, end_ms=2),
        "metrics": {"auc": 0.5},
    }
    fields.update(overrides)
    return ModelMetadata(**fields)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def test_register_writes_layout_and_fills_identity(reg: Registry) -> None:
    onnx_bytes = make_onnx()
    mv = reg.register("default", onnx_bytes, make_metadata())
    assert (mv.name, mv.version, mv.number) == ("default", "v1", 1)
    assert mv.path == reg.root / "default" / "v1"
    assert mv.model_path.read_bytes() == onnx_bytes
    stored = json.loads((mv.path / "metadata.json").read_text())
    assert stored["name"] == "default" and stored["version"] == "v1"
    assert stored["model_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert stored["training"] == {
        "rows": 100,
        "start_ms": 1,
        "end_ms": 2,
        "source": None,
        "rejected": None,
        "labelled": None,
        "positives": None,
        "validation_start_ms": None,
    }
    assert datetime.fromisoformat(stored["created_at"]).tzinfo is not None
    assert reg.get("default", "v1") == mv
    assert reg.names() == ["default"]
    assert reg.champion("default") is None


def test_versions_are_monotonic_and_sorted_numerically(reg: Registry) -> None:
    for _ in range(11):
        reg.register("m", make_onnx(), make_metadata())
    versions = [mv.version for mv in reg.versions("m")]
    assert versions == [f"v{i}" for i in range(1, 12)]


def test_register_accepts_a_mapping(reg: Registry) -> None:
    fields = msgspec.to_builtins(make_metadata())
    fields["name"] = "ignored"
    mv = reg.register("m", make_onnx(), fields)
    assert mv.metadata.name == "m" and mv.metadata.calibration.quantiles[-1] == 1.0


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"kind": "x"}, "invalid metadata"),
        (msgspec.to_builtins(make_metadata()) | {"threshold": 1.5}, "invalid metadata"),
        (msgspec.to_builtins(make_metadata()) | {"feature_names": []}, "invalid metadata"),
        (make_metadata(threshold=1.5), "invalid metadata"),
        (
            msgspec.to_builtins(make_metadata()) | {"training_data": {"rows": 1}},
            "unknown field 'training_data'",
        ),
        (
            msgspec.to_builtins(make_metadata()) | {"training": {"rows": 1, "path": "x"}},
            "unknown field 'training.path'",
        ),
        ("not a mapping", "must be a ModelMetadata or a mapping"),
        (make_metadata(params={"when": object()}), "invalid metadata"),
        (make_metadata(feature_names=["a", "b", "a"]), "duplicate feature name 'a'"),
        (
            make_metadata(calibration=Calibration(quantiles=[0.1, float("inf")])),
            "finite and non-decreasing",
        ),
        (
            make_metadata(calibration=Calibration(quantiles=[0.5, 0.2, 0.9])),
            "non-decreasing",
        ),
        (make_metadata(feature_names=["a", "b"]), "ONNX input has 3 features"),
        (make_metadata(input_name="x"), "no input 'x'"),
        (make_metadata(output_name="y"), "no output 'y'"),
        (make_metadata(training=TrainingData(rows=1, start_ms=5, end_ms=1)), "after end_ms"),
    ],
)
def test_register_rejects_invalid_metadata(reg: Registry, metadata: object, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        reg.register("m", make_onnx(), metadata)  # type: ignore[arg-type]
    assert not (reg.root / "m").exists() or reg.versions("m") == []


def test_register_rejects_bad_names_and_bytes(reg: Registry) -> None:
    for name in ("../evil", "", ".hidden", "a/b", "x" * 200):
        with pytest.raises(RegistryError, match="invalid model name"):
            reg.register(name, make_onnx(), make_metadata())
    with pytest.raises(RegistryError, match="non-empty bytes"):
        reg.register("m", b"", make_metadata())
    with pytest.raises(RegistryError, match="not a valid ONNX model"):
        reg.register("m", b"\xff\x00 definitely not protobuf", make_metadata())


def test_registry_error_is_a_value_error() -> None:
    assert issubclass(RegistryError, ValueError)


def test_promote_champion_and_history(reg: Registry) -> None:
    reg.register("m", make_onnx(), make_metadata())
    reg.register("m", make_onnx(), make_metadata(), promote=True)
    assert reg.champion("m").version == "v2"  # type: ignore[union-attr]
    assert (reg.root / "m" / "CHAMPION").read_text() == "v2\n"
    promoted = reg.promote("m", "v1")
    assert promoted.version == "v1" and reg.champion_version("m") == "v1"
    reg.promote("m", "v1")  # already champion: no new history entry
    events = reg.history("m")
    assert [(e.action, e.version, e.previous) for e in events] == [
        ("promote", "v2", None),
        ("promote", "v1", "v2"),
    ]
    leftovers = [p.name for p in (reg.root / "m").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_rollback_walks_back_through_champions(reg: Registry) -> None:
    for _ in range(3):
        reg.register("m", make_onnx(), make_metadata(), promote=True)
    assert reg.rollback("m").version == "v2"
    assert reg.champion_version("m") == "v2"
    assert reg.rollback("m").version == "v1"
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("m")
    reg.promote("m", "v3")
    assert reg.rollback("m").version == "v1"
    assert [e.action for e in reg.history("m")][-2:] == ["promote", "rollback"]


def test_rollback_without_champion_fails(reg: Registry) -> None:
    reg.register("m", make_onnx(), make_metadata())
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("m")


def test_rollback_trusts_the_pointer_when_history_lags(reg: Registry) -> None:
    # A crash between writing CHAMPION and HISTORY.json leaves the history one change
    # behind; the pointer wins.
    for _ in range(3):
        reg.register("m", make_onnx(), make_metadata())
    reg.promote("m", "v1")
    (reg.root / "m" / "CHAMPION").write_text("v3\n")  # promote v3 whose history was lost
    assert reg.rollback("m").version == "v1"


def test_load_returns_verified_bytes(reg: Registry) -> None:
    onnx_bytes = make_onnx()
    reg.register("m", onnx_bytes, make_metadata(), promote=True)
    loaded = reg.load("m")
    assert loaded.onnx_bytes == onnx_bytes
    assert loaded.info.version == "v1" and loaded.metadata.feature_names == NAMES
    assert reg.load("m", "v1").onnx_bytes == onnx_bytes


def test_unknown_names_and_versions(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="unknown model 'nope'.*known: none"):
        reg.versions("nope")
    reg.register("m", make_onnx(), make_metadata())
    with pytest.raises(RegistryError, match="unknown model 'nope'.*known: m"):
        reg.champion("nope")
    with pytest.raises(RegistryError, match=r"unknown version 'v9' of model 'm' \(known: v1\)"):
        reg.load("m", "v9")
    with pytest.raises(RegistryError, match="invalid version '1'"):
        reg.promote("m", "1")
    with pytest.raises(RegistryError, match="has no champion"):
        reg.load("m")


def test_missing_files_are_reported(reg: Registry) -> None:
    mv = reg.register("m", make_onnx(), make_metadata())
    mv.model_path.unlink()
    with pytest.raises(RegistryError, match="missing .*model.onnx"):
        reg.load("m", "v1")
    with pytest.raises(RegistryError, match="missing .*model.onnx"):
        reg.promote("m", "v1")
    (mv.path / "metadata.json").unlink()
    with pytest.raises(RegistryError, match="missing .*metadata.json"):
        reg.versions("m")


def test_corrupted_files_are_reported(reg: Registry) -> None:
    mv = reg.register("m", make_onnx(), make_metadata(), promote=True)
    mv.model_path.write_bytes(make_onnx(scale=2.0))
    with pytest.raises(RegistryError, match="checksum mismatch"):
        reg.load("m")

    meta_path = mv.path / "metadata.json"
    meta_path.write_text('{"kind": "x", "feature_names": [')
    with pytest.raises(RegistryError, match="corrupted metadata .*metadata.json"):
        reg.get("m", "v1")
    meta_path.write_text(json.dumps({"kind": "x"}))
    with pytest.raises(RegistryError, match="corrupted metadata"):
        reg.champion("m")

    good = msgspec.to_builtins(make_metadata()) | {"name": "m", "version": "v7"}
    meta_path.write_text(json.dumps(good))
    with pytest.raises(RegistryError, match="describes 'm' 'v7'"):
        reg.get("m", "v1")

    (reg.root / "m" / "CHAMPION").write_text("garbage")
    with pytest.raises(RegistryError, match="corrupted champion pointer"):
        reg.champion_version("m")

    (reg.root / "m" / "HISTORY.json").write_text("[not json")
    with pytest.raises(RegistryError, match="corrupted history"):
        reg.history("m")


def test_unknown_fields_in_stored_metadata_are_ignored(reg: Registry) -> None:
    mv = reg.register("m", make_onnx(), make_metadata())
    meta_path = mv.path / "metadata.json"
    stored = json.loads(meta_path.read_text())
    stored["added_by_a_newer_version"] = {"x": 1}
    meta_path.write_text(json.dumps(stored))
    assert reg.get("m", "v1").metadata == mv.metadata


def test_private_entries_are_ignored(reg: Registry) -> None:
    reg.register("m", make_onnx(), make_metadata())
    (reg.root / "m" / ".tmp-abandoned").mkdir()
    (reg.root / "m" / "notes").mkdir()
    (reg.root / ".cache").mkdir()
    assert [mv.version for mv in reg.versions("m")] == ["v1"]
    assert reg.names() == ["m"]
    assert reg.register("m", make_onnx(), make_metadata()).version == "v2"


def test_empty_registry(tmp_path: Path) -> None:
    assert Registry(tmp_path / "absent").names() == []
