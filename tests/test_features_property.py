"""The Rust feature engine equals the pure-Python reference on random streams.

Streams mix many and few cards (so windows of one card collide), shared merchants and users,
equal timestamps, late events (within and beyond the allowed lateness), missing optional
fields, small windows that actually slide within a short stream as well as the defaults,
random batch splits, snapshot/restore in the middle and idle eviction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txfast._core import FeatureEngine, hash_ids
from txfast.reference import ReferenceEngine

BASE_TS_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a Tuesday

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DEFAULT_CONFIG: dict[str, Any] = {}

CITIES = [
    (48.8566, 2.3522),  # Paris
    (40.7128, -74.0060),  # New York
    (51.5074, -0.1278),  # London
    (-33.8688, 151.2093),  # Sydney
    (48.8566, 2.3523),  # a few metres from Paris
]
COUNTRIES = ["FR", "US", "GB", "DE"]
CATEGORIES = ["5411", "5541", "5732", "4829"]

PROPERTY_SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------- helpers


def to_columns(events: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """Turn reference-style events (string ids) into the engine's input columns."""

    def floats(key: str) -> np.ndarray:
        values = [e.get(key) for e in events]
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)

    return (
        np.array([e["ts_ms"] for e in events], dtype=np.int64),
        hash_ids([e["card_id"] for e in events]),
        np.array([e["amount"] for e in events], dtype=np.float64),
        hash_ids([e["merchant_id"] for e in events]),
        hash_ids([e.get("user_id") for e in events]),
        hash_ids([e.get("category") for e in events]),
        hash_ids([e.get("country") for e in events]),
        floats("lat"),
        floats("lon"),
        np.array([e.get("channel", 0) for e in events], dtype=np.uint8),
    )


def assert_rows_match(
    names: list[str], expected: np.ndarray, actual: np.ndarray, events: list[dict[str, Any]]
) -> None:
    """Compare column by column and name the feature (and first bad row) on failure."""
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    for j, name in enumerate(names):
        bad = ~np.isclose(actual[:, j], expected[:, j], rtol=1e-5, atol=1e-5)
        first = int(np.argmax(bad)) if bad.any() else None
        np.testing.assert_allclose(
            actual[:, j],
            expected[:, j],
            rtol=1e-5,
            atol=1e-5,
            err_msg=(
                f"feature {name!r} differs; first bad row {first}: "
                f"event {events[first] if first is not None else None}"
            ),
        )


# ---------------------------------------------------------------------------- strategies

window_lengths = st.lists(
    st.sampled_from([1 * SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, MINUTE]),
    min_size=1,
    max_size=4,
    unique=True,
)  # in any order: columns follow the given order, W_max is the longest


@st.composite
def configs(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """An engine configuration and the typical time step of streams that exercise it."""
    if draw(st.booleans()):
        # Defaults: steps from milliseconds to weeks so every default window slides.
        return dict(DEFAULT_CONFIG), draw(st.sampled_from([SECOND, MINUTE, HOUR, DAY, 7 * DAY]))
    config = {
        "card_windows_ms": tuple(draw(window_lengths)),
        "merchant_windows_ms": tuple(draw(window_lengths)),
        "user_windows_ms": tuple(draw(window_lengths)),
        "allowed_lateness_ms": draw(st.sampled_from([0, 1, SECOND, 3 * SECOND, HOUR])),
    }
    return config, draw(st.sampled_from([100, SECOND, 3 * SECOND]))


amounts = st.one_of(
    st.sampled_from([1.0, 9.99, 10.0, 250.0]),
    st.integers(1, 500_000).map(lambda cents: cents / 100),
)


@st.composite
def streams(draw: st.DrawFn, step_ms: int, lateness_ms: int) -> list[dict[str, Any]]:
    """A stream of events in arrival order, with reference-style (string) identifiers."""
    n = draw(st.integers(1, 50))
    cards = [f"card-{i}" for i in range(draw(st.sampled_from([1, 2, 3, 12])))]
    merchants = [f"m-{i}" for i in range(draw(st.sampled_from([1, 2, 6])))]
    users = [f"u-{i}" for i in range(draw(st.sampled_from([1, 2, 4])))]
    p_late = draw(st.sampled_from([0.0, 0.2, 0.5]))
    steps = st.one_of(
        st.just(0),  # ties
        st.sampled_from([1, SECOND - 1, SECOND, SECOND + 1]),  # window edges
        st.integers(0, step_ms).map(lambda ms: ms - ms % 1000),  # whole seconds
        st.integers(0, step_ms),
    )
    clock = BASE_TS_MS
    events = []
    for _ in range(n):
        clock += draw(steps)
        ts = clock
        if draw(st.floats(0, 1)) < p_late:
            # Late: sometimes within the allowed lateness, sometimes far beyond it.
            ts -= draw(st.integers(0, max(1, 3 * max(lateness_ms, step_ms))))
        location = draw(st.none() | st.sampled_from(CITIES))
        event = {
            "ts_ms": ts,
            "card_id": draw(st.sampled_from(cards)),
            "amount": draw(amounts),
            "merchant_id": draw(st.sampled_from(merchants)),
            "user_id": draw(st.none() | st.sampled_from(users)),
            "category": draw(st.none() | st.sampled_from(CATEGORIES)),
            "country": draw(st.none() | st.sampled_from(COUNTRIES)),
            "lat": None if location is None else location[0],
            "lon": None if location is None else location[1],
            "channel": draw(st.integers(0, 6)),
        }
        events.append(event)
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """A configuration, a stream and the batch boundaries to feed it with."""
    config, step_ms = draw(configs())
    lateness = config.get("allowed_lateness_ms", HOUR)
    events = draw(streams(step_ms, lateness))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=6)))
    bounds = [0, *[c for c in cuts if c < len(events)], len(events)]
    return config, events, bounds


engine_layouts = st.fixed_dictionaries(
    {"shards": st.sampled_from([1, 3, 64]), "threads": st.sampled_from([None, 1, 2])}
)


# ---------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(scenario=scenarios(), layout=engine_layouts)
def test_batches_match_reference(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list[int]], layout: dict[str, Any]
) -> None:
    config, events, bounds = scenario
    reference = ReferenceEngine(**config)
    engine = FeatureEngine(**config, **layout)
    assert engine.feature_names == reference.feature_names
    expected = reference.process_batch(events)
    parts = [
        engine.process(*to_columns(events[start:stop]))
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    actual = np.concatenate(parts) if parts else np.empty((0, len(reference.feature_names)))
    assert_rows_match(reference.feature_names, expected, actual, events)


@PROPERTY_SETTINGS
@given(scenario=scenarios(), layout=engine_layouts, data=st.data())
def test_snapshot_restore_midstream_matches_reference(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list[int]],
    layout: dict[str, Any],
    data: st.DataObject,
) -> None:
    config, events, bounds = scenario
    reference = ReferenceEngine(**config)
    engine = FeatureEngine(**config, **layout)
    expected = reference.process_batch(events)
    restore_after = data.draw(st.sets(st.integers(0, len(bounds) - 2)), label="restore_after")
    parts = []
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        parts.append(engine.process(*to_columns(events[start:stop])))
        if i in restore_after:
            blob = engine.snapshot()
            assert isinstance(blob, bytes)
            stats = engine.stats()
            engine = FeatureEngine.restore(bytes(bytearray(blob)))
            assert engine.feature_names == reference.feature_names
            assert engine.feature_version == reference.feature_version
            assert engine.stats() == stats
    actual = np.concatenate(parts)
    assert_rows_match(reference.feature_names, expected, actual, events)


@PROPERTY_SETTINGS
@given(scenario=scenarios(), layout=engine_layouts, data=st.data())
def test_idle_eviction_matches_reference(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], list[int]],
    layout: dict[str, Any],
    data: st.DataObject,
) -> None:
    config, events, bounds = scenario
    config = {**config, "idle_ttl_ms": data.draw(st.sampled_from([None, 0, SECOND, 5 * SECOND]))}
    reference = ReferenceEngine(**config)
    engine = FeatureEngine(**config, **layout)
    expected_parts = []
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        batch = events[start:stop]
        expected_parts.append(reference.process_batch(batch))
        parts.append(engine.process(*to_columns(batch)))
        newest = max(e["ts_ms"] for e in events[:stop])
        watermark = data.draw(
            st.sampled_from([None, newest, newest + 2 * SECOND, newest + 30 * DAY]),
            label="watermark",
        )
        assert engine.evict_idle(watermark) == reference.evict_idle(watermark)
    assert_rows_match(
        reference.feature_names, np.concatenate(expected_parts), np.concatenate(parts), events
    )
