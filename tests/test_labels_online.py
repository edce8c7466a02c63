"""Online labels: an analyst's verdict in the store reaches the live feature state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from txfast.config import load_settings
from txfast.features import hash_ids
from txfast.pipeline import Pipeline, build_engine
from txfast.sources import SourceBatch


@pytest.fixture(scope="module")
def future_stream() -> list[bytes]:
    """Two simulated days starting tomorrow: analysts' labels (now) are known before them."""
    from txfast.simulate import iter_json_batches, simulate

    start = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    table = simulate(300, 2, seed=8, start=start)
    return [p for batch in iter_json_batches(table, 4096) for p in batch]


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels are handed out as soon as they are recorded (tests write them one by one)."""
    monkeypatch.setattr("txfast.store._sql.LABEL_SETTLE_S", 0.0)


def _label_settings(**overrides: object):
    s = load_settings(env={}, overrides=overrides)
    return s.replace(features=s.features.__class__(labels=True, label_poll="1h"))


@pytest.fixture(scope="module")
def registry(history: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion trained on the label-aware feature set."""
    from txfast.history import replay_features
    from txfast.training.isolation_forest import train_isolation_forest

    root = tmp_path_factory.mktemp("label-registry")
    fs = replay_features(_label_settings(), history)
    trained = train_isolation_forest(
        fs.X, fs.feature_names, fs.feature_version, n_estimators=30, seed=1
    )
    trained.register(root, promote=True)
    return root


def _settings(tmp_path: Path, registry: Path, name: str):
    return _label_settings(store=f"duckdb:{tmp_path / name}", registry=str(registry))


def test_analyst_labels_reach_the_engine_as_if_known_when_given(
    future_stream: list[bytes], registry: Path, tmp_path: Path
) -> None:
    half = len(future_stream) // 2
    first, second = future_stream[:half], future_stream[half:]
    settings = _settings(tmp_path, registry, "live.duckdb")
    pipe = Pipeline.from_settings(settings)
    try:
        pipe.process(SourceBatch(0, payloads=first), "s")
        assert pipe.poll_labels(force=True) == 0
        # Analysts label the first half's busiest merchant's transactions fraud.
        docs = [json.loads(p) for p in first]
        merchants = [d["merchant_id"] for d in docs]
        target = max(set(merchants), key=merchants.count)
        labelled = [d for d in docs if d["merchant_id"] == target][:5]
        for d in labelled:
            pipe.store.record_feedback(d["transaction_id"], "fraud", analyst="ana")
        # A correction is stored but not counted twice (the first verdict feeds the state).
        pipe.store.record_feedback(labelled[0]["transaction_id"], "legit", analyst="bob")
        assert pipe.poll_labels() == 0, "not yet time to poll"
        assert pipe.poll_labels(force=True) == len(labelled)
        assert pipe.poll_labels(force=True) == 0, "each label event is fed once"
        got = pipe.process(SourceBatch(half, payloads=second), "s").features
        rows = pipe.store.query("SELECT labelled_at FROM labels WHERE analyst = 'ana' ORDER BY id")
    finally:
        pipe.store.close()

    # The same engine fed the same label events offline, known when they were recorded.
    names = pipe.feature_names
    ref = build_engine(settings)
    ref_dec = pipe.decoder.decode(first)
    ref.process(**ref_dec.feature_inputs())
    epoch = datetime(1970, 1, 1)
    known = np.array(  # microseconds rounded up to the millisecond
        [-(-((r[0] - epoch) // timedelta(microseconds=1)) // 1000) for r in rows], np.int64
    )
    ref.process_labels(
        known_ms=known,
        card=hash_ids([d["card_id"] for d in labelled]),
        merchant=hash_ids([d["merchant_id"] for d in labelled]),
        label=np.ones(len(labelled), np.uint8),
    )
    want = ref.process(**pipe.decoder.decode(second).feature_inputs())
    np.testing.assert_array_equal(got, want)

    col = names.index("merchant_fraud_labels_7d")
    later = [i for i, p in enumerate(second) if json.loads(p)["merchant_id"] == target]
    assert later, "the merchant trades again in the second half"
    assert set(got[later, col].tolist()) == {float(len(labelled))}
    others = [i for i, p in enumerate(second) if json.loads(p)["merchant_id"] != target]
    assert got[others, col].max() == 0.0
    card_col = names.index("card_fraud_labels_30d")
    cards = {d["card_id"] for d in labelled}
    same_card = [i for i, p in enumerate(second) if json.loads(p)["card_id"] in cards]
    assert same_card and got[same_card, card_col].min() >= 1.0


def test_labels_are_polled_before_each_batch_when_due(
    future_stream: list[bytes], registry: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, registry, "due.duckdb")
    settings = settings.replace(features=settings.features.__class__(labels=True, label_poll="1ms"))
    pipe = Pipeline.from_settings(settings)
    try:
        pipe.process(SourceBatch(0, payloads=future_stream[:500]), "s")
        tx = json.loads(future_stream[10])["transaction_id"]
        pipe.store.record_feedback(tx, "fraud", analyst="ana")
        pipe.process(SourceBatch(500, payloads=future_stream[500:1000]), "s")
        assert pipe.summary.labels_fed == 1
        assert pipe.summary.as_dict()["labels_fed"] == 1
    finally:
        pipe.store.close()


def test_checkpoints_keep_the_label_cursor_and_read_version_1(tmp_path: Path) -> None:
    import struct
    import zlib

    from txfast.exceptions import SnapshotError
    from txfast.streaming import CheckpointDir

    ck = CheckpointDir(tmp_path, "g")
    ck.save("t", 0, 42, b"state", label_cursor=7)
    assert ck.load("t", 0) == (42, b"state", 7)
    # A checkpoint written before label cursors existed: its state saw no online label.
    v1 = b"TXCK" + struct.pack("<IqI", 1, 9, zlib.crc32(b"old")) + b"old"
    (ck.dir / "t-1.ckpt").write_bytes(v1)
    assert ck.load("t", 1) == (9, b"old", 0)
    (ck.dir / "t-2.ckpt").write_bytes(v1[:-1] + b"X")
    with pytest.raises(SnapshotError, match="corrupted"):
        ck.load("t", 2)
    assert ck.load("t", 3) is None
