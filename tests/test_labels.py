"""Label-aware features: no leakage, Rust equals the reference, snapshots, offline replay.

The leakage proof: a label whose known time is after a transaction's time never changes any
feature of that transaction, whether it is given to the engine before or after it, and
whatever its value (``test_labels_known_after_t_change_nothing_at_t``,
``test_each_row_equals_an_engine_holding_only_labels_known_by_its_time``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_features_property import (
    BASE_TS_MS,
    DAY,
    HOUR,
    SECOND,
    assert_rows_match,
    streams,
    to_columns,
)

from txfast._core import FeatureEngine, hash_ids
from txfast.config import load_settings
from txfast.exceptions import InputError
from txfast.features import FeatureEngine as PyFeatureEngine
from txfast.features import engine_from_settings
from txfast.reference import ReferenceEngine

LABEL_SETTINGS = settings(
    max_examples=80,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

label_windows = st.lists(
    st.sampled_from([1 * SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND]),
    min_size=0,
    max_size=3,
    unique=True,
)


@st.composite
def label_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Small transaction windows and label windows that slide within a short stream."""
    merchant = draw(label_windows)
    card = draw(label_windows.filter(lambda w: w or merchant))
    return {
        "card_windows_ms": (5 * SECOND,),
        "merchant_windows_ms": (5 * SECOND,),
        "user_windows_ms": (5 * SECOND,),
        "allowed_lateness_ms": draw(st.sampled_from([0, SECOND, 3 * SECOND, HOUR])),
        "merchant_label_windows_ms": tuple(merchant),
        "card_label_windows_ms": tuple(card),
    }


@st.composite
def labels_for(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Labels about the stream's cards and merchants, known around the stream's times."""
    times = [e["ts_ms"] for e in events]
    cards = sorted({e["card_id"] for e in events}) + ["card-unseen"]
    merchants = sorted({e["merchant_id"] for e in events}) + ["m-unseen"]
    known = st.one_of(
        st.sampled_from(times),  # exactly at a transaction's time
        st.sampled_from(times).map(lambda t: t + 1),  # one ms after
        st.sampled_from(times).map(lambda t: t - 1),
        st.integers(min(times) - 12 * SECOND, max(times) + 12 * SECOND),
    )
    return draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "known_ms": known,
                    "card_id": st.sampled_from(cards) | st.none(),
                    "merchant_id": st.sampled_from(merchants) | st.none(),
                    "label": st.sampled_from([0, 1]),
                }
            ),
            max_size=40,
        )
    )


def label_columns(labels: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    return (
        np.array([x["known_ms"] for x in labels], dtype=np.int64),
        hash_ids([x["card_id"] for x in labels]),
        hash_ids([x["merchant_id"] for x in labels]),
        np.array([x["label"] for x in labels], dtype=np.uint8),
    )


@st.composite
def label_scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], list]:
    """A configuration, a stream and labels interleaved with it: a list of operations,
    ``("tx", [events])`` batches and ``("labels", [labels])`` groups, in order."""
    config = draw(label_configs())
    events = draw(streams(SECOND, config["allowed_lateness_ms"]))
    labels = draw(labels_for(events))
    # Each label goes before the transaction at a random position (len(events): at the end).
    positions = [draw(st.integers(0, len(events))) for _ in labels]
    cuts = set(draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=4)))
    ops: list[tuple[str, list[dict[str, Any]]]] = []
    batch: list[dict[str, Any]] = []
    for i in range(len(events) + 1):
        group = [x for x, p in zip(labels, positions, strict=True) if p == i]
        if group or i in cuts:
            if batch:
                ops.append(("tx", batch))
                batch = []
            if group:
                ops.append(("labels", group))
        if i < len(events):
            batch.append(events[i])
    if batch:
        ops.append(("tx", batch))
    return config, events, ops


engine_layouts = st.fixed_dictionaries(
    {"shards": st.sampled_from([1, 3, 64]), "threads": st.sampled_from([None, 1, 2])}
)


# ---------------------------------------------------------------------------- Rust = reference


@LABEL_SETTINGS
@given(scenario=label_scenarios(), layout=engine_layouts, data=st.data())
def test_label_features_match_reference_with_snapshots_and_eviction(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list],
    layout: dict[str, Any],
    data: st.DataObject,
) -> None:
    config, events, ops = scenario
    reference = ReferenceEngine(**config)
    engine = FeatureEngine(**config, **layout)
    assert engine.feature_names == reference.feature_names
    assert engine.labels_enabled
    expected, actual = [], []
    seen: list[int] = []
    for kind, items in ops:
        if kind == "labels":
            for x in items:
                reference.process_label(**x)
            assert engine.process_labels(*label_columns(items)) == len(items)
        else:
            expected.append(reference.process_batch(items))
            actual.append(engine.process(*to_columns(items)))
            seen += [e["ts_ms"] for e in items]
        action = data.draw(st.sampled_from(["none", "none", "snapshot", "evict"]), label="act")
        if action == "snapshot":
            stats = engine.stats()
            engine = FeatureEngine.restore(engine.snapshot())
            assert engine.feature_names == reference.feature_names
            restored = engine.stats()
            for key in ("label_entities", "labels", "cards", "merchants", "card_events"):
                assert restored[key] == stats[key], key
        elif action == "evict" and seen:
            watermark = data.draw(
                st.sampled_from([None, max(seen), max(seen) + 7 * SECOND, max(seen) + DAY]),
                label="watermark",
            )
            assert engine.evict_idle(watermark) == reference.evict_idle(watermark)
    assert_rows_match(
        reference.feature_names, np.concatenate(expected), np.concatenate(actual), events
    )


# ---------------------------------------------------------------------------- no leakage


@LABEL_SETTINGS
@given(scenario=label_scenarios(), layout=engine_layouts, data=st.data())
def test_labels_known_after_t_change_nothing_at_t(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list],
    layout: dict[str, Any],
    data: st.DataObject,
) -> None:
    """Every label given before every transaction; those known after a cut time are then
    dropped, or replaced by different labels (other value, entity, later known time): no
    feature of any transaction at or before the cut moves."""
    config, events, _ = scenario
    labels = data.draw(labels_for(events), label="labels")
    times = sorted({e["ts_ms"] for e in events})
    cut = data.draw(st.sampled_from(times), label="cut")
    before = [x for x in labels if x["known_ms"] <= cut]
    after = [x for x in labels if x["known_ms"] > cut]
    changed = [
        {
            **x,
            "label": 1 - x["label"],
            "known_ms": x["known_ms"] + data.draw(st.integers(0, 5 * SECOND), label="shift"),
            "merchant_id": data.draw(st.sampled_from([x["merchant_id"], "m-0", None])),
            "card_id": data.draw(st.sampled_from([x["card_id"], "card-0", None])),
        }
        for x in after
    ]
    # Extra labels known just after the cut, about every card and merchant.
    extra = [
        {"known_ms": cut + 1, "card_id": e["card_id"], "merchant_id": e["merchant_id"], "label": 1}
        for e in events
    ]
    rows = {}
    for name, given_labels in (
        ("all", labels),
        ("known_by_cut", before),
        ("changed", before + changed + extra),
    ):
        engine = FeatureEngine(**config, **layout)
        engine.process_labels(*label_columns(given_labels))
        rows[name] = engine.process(*to_columns(events))
    at_or_before = np.array([e["ts_ms"] <= cut for e in events])
    for name in ("known_by_cut", "changed"):
        np.testing.assert_array_equal(rows[name][at_or_before], rows["all"][at_or_before], name)


@LABEL_SETTINGS
@given(scenario=label_scenarios(), layout=engine_layouts, data=st.data())
def test_each_row_equals_an_engine_holding_only_labels_known_by_its_time(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list],
    layout: dict[str, Any],
    data: st.DataObject,
) -> None:
    """Labels given in random order, some after the transactions they are about: the row
    of a transaction at t equals the one an engine that never saw a label known after t
    computes (the exact contract: label given before the transaction and known_ms <= t).

    Rows of events more than the allowed lateness behind the newest event are left out:
    retention may have dropped labels they would count (see docs/features.md).
    """
    config, events, ops = scenario
    engine = FeatureEngine(**config, **layout)
    given_before: list[list[dict[str, Any]]] = []
    so_far: list[dict[str, Any]] = []
    rows = []
    for kind, items in ops:
        if kind == "labels":
            engine.process_labels(*label_columns(items))
            so_far += items
        else:
            rows.append(engine.process(*to_columns(items)))
            given_before += [list(so_far)] * len(items)
    actual = np.concatenate(rows)
    newest = None
    for i, event in enumerate(events):
        t = event["ts_ms"]
        newest = t if newest is None else max(newest, t)
        if t < newest - config["allowed_lateness_ms"]:
            continue
        visible = [x for x in given_before[i] if x["known_ms"] <= t]
        oracle = FeatureEngine(**config, shards=1, threads=1)
        oracle.process_labels(*label_columns(visible))
        expected = oracle.process(*to_columns(events[: i + 1]))[-1]
        np.testing.assert_array_equal(actual[i], expected, f"row {i}")


# ---------------------------------------------------------------------------- unit cases


DAY_MS = 86_400_000


def test_window_edges_rate_and_defaults() -> None:
    engine = PyFeatureEngine(merchant_label_windows_ms=[7 * DAY_MS], card_label_windows_ms=[DAY_MS])
    assert engine.feature_names[-3:] == [
        "merchant_fraud_labels_7d",
        "merchant_fraud_rate_7d",
        "card_fraud_labels_24h",
    ]
    t = BASE_TS_MS
    c, m = hash_ids(["card-1"]), hash_ids(["m-1"])
    engine.process_labels([t, t, t + 1], np.repeat(c, 3), np.repeat(m, 3), [1, 0, 1])
    rows = []
    for ts in (t - 1, t, t + 1, t + DAY_MS, t + 7 * DAY_MS):
        cols = to_columns([{"ts_ms": ts, "card_id": "card-1", "amount": 5.0, "merchant_id": "m-1"}])
        rows.append(engine.process(*cols)[0, -3:].tolist())
    assert rows == [
        [0.0, -1.0, 0.0],  # nothing known yet
        [1.0, 0.5, 1.0],  # known exactly at t counts; the one at t + 1 does not
        [2.0, pytest.approx(2 / 3), 2.0],
        [2.0, pytest.approx(2 / 3), 1.0],  # those known at t left the 24 h card window
        [1.0, 1.0, 0.0],  # and the 7 d merchant window: only the one at t + 1 is left
    ]
    with pytest.raises(InputError):
        engine.process_labels([t], c, m, [2])
    with pytest.raises(InputError):
        engine.process_labels([t, t], c, m, [1, 1])


def test_labels_off_by_default_and_ignored() -> None:
    engine = PyFeatureEngine()
    assert not engine.labels_enabled
    assert len(engine.feature_names) == 37
    assert engine.process_labels([BASE_TS_MS], hash_ids(["c"]), hash_ids(["m"]), [1]) == 1
    assert engine.stats()["labels"] == 0
    assert engine.feature_version == "txfast-features/2"


def test_settings_switch_label_features_on() -> None:
    off = load_settings(env={})
    assert off.features.labels is False
    assert not engine_from_settings(off.features).labels_enabled
    on = load_settings(env={}, overrides={"features": {"labels": True}})
    engine = engine_from_settings(on.features)
    assert engine.feature_names[-5:] == [
        "merchant_fraud_labels_7d",
        "merchant_fraud_labels_30d",
        "merchant_fraud_rate_7d",
        "merchant_fraud_rate_30d",
        "card_fraud_labels_30d",
    ]


def test_snapshot_round_trip_keeps_label_state() -> None:
    config: dict[str, Any] = {
        "merchant_label_windows_ms": [DAY_MS],
        "card_label_windows_ms": [DAY_MS],
    }
    a = PyFeatureEngine(**config)
    b = PyFeatureEngine(**config)
    t = BASE_TS_MS
    events = [
        {
            "ts_ms": t + i * HOUR,
            "card_id": f"card-{i % 3}",
            "amount": 9.0,
            "merchant_id": f"m-{i % 2}",
        }
        for i in range(30)
    ]
    labels = [
        {
            "known_ms": t + i * HOUR + 5 * HOUR,
            "card_id": f"card-{i % 3}",
            "merchant_id": f"m-{i % 2}",
            "label": i % 2,
        }
        for i in range(30)
    ]
    for e in (a, b):
        e.process_labels(*label_columns(labels))
    expected = a.process(*to_columns(events))
    first = b.process(*to_columns(events[:12]))
    restored = PyFeatureEngine.from_snapshot(b.snapshot())
    assert restored.feature_names == b.feature_names
    assert restored.stats()["labels"] == b.stats()["labels"] > 0
    rest = restored.process(*to_columns(events[12:]))
    np.testing.assert_array_equal(np.concatenate([first, rest]), expected)
    assert expected[:, -1].max() > 0


# ---------------------------------------------------------------------------- offline replay


def test_history_replay_counts_only_labels_known_by_each_transaction(history: Path) -> None:
    """``replay_features`` with labels on: each label known ``label_delay`` after its
    transaction; the label columns equal a direct numpy computation over the file."""
    import pyarrow.parquet as pq

    from txfast.history import replay_features

    settings = load_settings(
        env={},
        overrides={
            "features": {
                "labels": True,
                "merchant_label_windows": ["2d", "7d"],
                "card_label_windows": ["7d"],
                "label_delay": "1d",
            },
            "pipeline": {"history_batch_size": 997},
        },
    )
    fs = replay_features(settings, history)
    names = fs.feature_names
    assert fs.feature_version == "txfast-features/2"
    table = pq.read_table(history)
    assert len(fs.ts_ms) == table.num_rows  # the simulator writes only valid events
    ts = fs.ts_ms
    label = fs.label.astype(np.int64)
    merchant = hash_ids(table["merchant_id"].to_pylist())
    card = hash_ids(table["card_id"].to_pylist())
    known = ts + DAY_MS
    assert (label == 1).sum() > 0

    def count(keys: np.ndarray, mask: np.ndarray, window: int) -> np.ndarray:
        out = np.zeros(len(ts))
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            k = np.sort(known[rows[mask[rows]]])
            t = ts[rows]
            out[rows] = np.searchsorted(k, t, side="right") - np.searchsorted(
                k, t - window, side="right"
            )
        return out

    for w, suffix in ((2 * DAY_MS, "2d"), (7 * DAY_MS, "7d")):
        fraud = count(merchant, label == 1, w)
        every = count(merchant, label >= 0, w)
        np.testing.assert_array_equal(
            fs.X[:, names.index(f"merchant_fraud_labels_{suffix}")], fraud
        )
        rate = np.where(every > 0, fraud / np.maximum(every, 1), -1.0).astype(np.float32)
        np.testing.assert_array_equal(fs.X[:, names.index(f"merchant_fraud_rate_{suffix}")], rate)
    card_fraud = count(card, label == 1, 7 * DAY_MS)
    np.testing.assert_array_equal(fs.X[:, names.index("card_fraud_labels_7d")], card_fraud)
    assert card_fraud.max() > 0
    # The first day sees no label at all (none is known yet).
    first_day = ts < ts.min() + DAY_MS
    assert (fs.X[first_day, names.index("merchant_fraud_rate_7d")] == -1).all()


def test_label_delay_must_be_positive() -> None:
    from txfast.exceptions import ConfigError
    from txfast.history import feed_history_labels

    with pytest.raises(ConfigError):
        load_settings(env={}, overrides={"features": {"labels": True, "label_delay": "0d"}})
    engine = PyFeatureEngine(card_label_windows_ms=[DAY_MS])
    cols = {
        "ts_ms": np.array([BASE_TS_MS]),
        "card": hash_ids(["c"]),
        "merchant": hash_ids(["m"]),
        "label": np.array([1], dtype=np.int8),
    }
    with pytest.raises(ValueError):
        feed_history_labels(engine, cols, 0)
    assert feed_history_labels(engine, cols, 1) == 1
