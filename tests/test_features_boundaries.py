"""Hand-computed examples that pin the semantics of docs/features.md.

Each example runs through both the pure-Python reference and the Rust engine, checks that they
agree on every column, and then checks the documented value by hand. A window boundary off by
one, a late event that sees the future or a lost retention rule makes one of these fail.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from txfast._core import FeatureEngine, hash_id, hash_ids
from txfast.exceptions import ConfigError, InputError, SnapshotError, TxfastError
from txfast.reference import ReferenceEngine, window_suffix

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

T = 1_717_249_500_000  # 2024-06-01T13:45:00Z, a Saturday

PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)
LONDON = (51.5074, -0.1278)

# Small windows so that a few seconds of events cross every boundary.
SMALL = {
    "card_windows_ms": (5 * SECOND, MINUTE),
    "merchant_windows_ms": (5 * SECOND,),
    "user_windows_ms": (5 * SECOND,),
    "allowed_lateness_ms": 10 * SECOND,
}


# ---------------------------------------------------------------------------- helpers


def event(
    ts_ms: int,
    card_id: str = "card-1",
    amount: float = 10.0,
    merchant_id: str = "m-1",
    *,
    user_id: str | None = None,
    category: str | None = None,
    country: str | None = None,
    location: tuple[float, float] | None = None,
    channel: int = 0,
) -> dict[str, Any]:
    return {
        "ts_ms": ts_ms,
        "card_id": card_id,
        "amount": amount,
        "merchant_id": merchant_id,
        "user_id": user_id,
        "category": category,
        "country": country,
        "lat": None if location is None else location[0],
        "lon": None if location is None else location[1],
        "channel": channel,
    }


def to_columns(events: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    def floats(key: str) -> np.ndarray:
        return np.array(
            [math.nan if e.get(key) is None else e[key] for e in events], dtype=np.float64
        )

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


def assert_rows_match(names: list[str], expected: np.ndarray, actual: np.ndarray) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    for j, name in enumerate(names):
        np.testing.assert_allclose(
            actual[:, j],
            expected[:, j],
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"feature {name!r}: rust (actual) != reference (desired)",
        )


class Pair:
    """A reference engine and a Rust engine fed the same events."""

    def __init__(self, **config: Any) -> None:
        self.reference = ReferenceEngine(**config)
        self.rust = FeatureEngine(**config)
        assert self.rust.feature_names == self.reference.feature_names
        self.names = self.reference.feature_names

    def process(self, *events: dict[str, Any]) -> list[dict[str, float]]:
        """Process events as one batch; return the rows as name -> value (both agree)."""
        expected = self.reference.process_batch(list(events))
        actual = self.rust.process(*to_columns(list(events)))
        assert_rows_match(self.names, expected, actual)
        return [dict(zip(self.names, map(float, row), strict=True)) for row in expected]

    def evict_idle(self, watermark_ms: int | None = None) -> int:
        evicted = self.reference.evict_idle(watermark_ms)
        assert self.rust.evict_idle(watermark_ms) == evicted
        return evicted


def run(*events: dict[str, Any], **config: Any) -> list[dict[str, float]]:
    return Pair(**config).process(*events)


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Hand-written haversine with the documented radius."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def f32(x: float) -> float:
    return float(np.float32(x))


# ---------------------------------------------------------------------------- ids and names


def test_hash_ids_are_stable_and_zero_means_absent() -> None:
    assert hash_id("card-1") == 3_889_914_603_958_869_906
    assert hash_id("") == 17_665_956_581_633_026_203
    ids = hash_ids([None, "", "card-1"])
    assert ids.dtype == np.uint64
    assert ids.tolist() == [0, 0, 3_889_914_603_958_869_906]


def test_default_feature_names_and_version() -> None:
    reference = ReferenceEngine()
    rust = FeatureEngine()
    assert rust.feature_names == reference.feature_names
    assert rust.feature_version == reference.feature_version == "txfast-features/2"
    windows = ["1m", "1h", "24h", "7d", "30d"]
    assert reference.feature_names == [
        "amount_base",
        "log_amount",
        "hour",
        "dow",
        "is_weekend",
        "channel",
        *[f"card_count_{w}" for w in windows],
        *[f"card_sum_{w}" for w in windows],
        *[f"card_mean_{w}" for w in windows],
        *[f"card_max_{w}" for w in windows],
        "card_amount_ratio_30d",
        "card_amount_z_30d",
        "card_secs_since_prev",
        "card_km_from_prev",
        "card_kmh_from_prev",
        "card_new_country_30d",
        "card_new_merchant_30d",
        "card_category_share_30d",
        "merchant_count_24h",
        "merchant_count_7d",
        "user_distinct_cards_24h",
    ]


@pytest.mark.parametrize(
    ("window_ms", "suffix"),
    [(SECOND, "1s"), (90 * SECOND, "90s"), (MINUTE, "1m"), (90 * MINUTE, "90m"), (7 * DAY, "7d")],
)
def test_window_suffix(window_ms: int, suffix: str) -> None:
    assert window_suffix(window_ms) == suffix
    rust = FeatureEngine(card_windows_ms=(window_ms,))
    assert f"card_count_{suffix}" in rust.feature_names


def test_columns_follow_the_given_window_order() -> None:
    config = {**SMALL, "card_windows_ms": (MINUTE, 5 * SECOND)}
    pair = Pair(**config)
    assert pair.names[6:8] == ["card_count_1m", "card_count_5s"]
    assert "card_amount_ratio_1m" in pair.names  # W_max is the longest, not the last
    _, row = pair.process(event(T, amount=10.0), event(T + 10 * SECOND, amount=30.0))
    assert (row["card_count_1m"], row["card_count_5s"]) == (2, 1)
    assert row["card_amount_ratio_1m"] == pytest.approx(1.5, rel=1e-6)


# ---------------------------------------------------------------------------- calendar


def test_first_transaction_of_a_card() -> None:
    (row,) = run(
        event(
            T,
            amount=42.5,
            user_id="u-1",
            category="5411",
            country="FR",
            location=PARIS,
            channel=2,
        )
    )
    assert row["amount_base"] == 42.5
    assert row["log_amount"] == pytest.approx(math.log(43.5), rel=1e-6)
    assert (row["hour"], row["dow"], row["is_weekend"], row["channel"]) == (13, 5, 1, 2)
    for name, value in row.items():
        if name.startswith(("card_count_", "merchant_count_", "user_distinct_cards_")):
            assert value == 1, name
        if name.startswith(("card_sum_", "card_mean_", "card_max_")):
            assert value == 42.5, name
    assert row["card_amount_ratio_30d"] == 1
    assert row["card_amount_z_30d"] == 0
    assert row["card_secs_since_prev"] == -1
    assert row["card_km_from_prev"] == -1
    assert row["card_kmh_from_prev"] == -1
    assert row["card_new_country_30d"] == 1
    assert row["card_new_merchant_30d"] == 1
    assert row["card_category_share_30d"] == 1


def test_missing_optional_fields_give_documented_defaults() -> None:
    first, second = run(
        event(T, location=PARIS, country="FR", user_id="u-1", category="5411"),
        event(T + HOUR, merchant_id="m-2", channel=0),
    )
    assert first["card_km_from_prev"] == -1
    assert second["card_km_from_prev"] == -1  # this event has no location
    assert second["card_kmh_from_prev"] == -1
    assert second["card_new_country_30d"] == 0  # no country: 0, not 1
    assert second["card_category_share_30d"] == -1
    assert second["user_distinct_cards_24h"] == -1
    assert second["channel"] == 0
    assert second["card_secs_since_prev"] == 3600


def test_calendar_features_in_utc() -> None:
    sunday_2359 = T + DAY + 10 * HOUR + 14 * MINUTE + 59 * SECOND + 999
    monday_0000 = sunday_2359 + 1
    sunday, monday = run(event(sunday_2359), event(monday_0000))
    assert (sunday["hour"], sunday["dow"], sunday["is_weekend"]) == (23, 6, 1)
    assert (monday["hour"], monday["dow"], monday["is_weekend"]) == (0, 0, 0)


# ---------------------------------------------------------------------------- window edges


@pytest.mark.parametrize("window_ms", [5 * SECOND, MINUTE])
@pytest.mark.parametrize(("gap", "included"), [(-1, True), (0, False)])
def test_card_window_edge(window_ms: int, gap: int, included: bool) -> None:
    suffix = window_suffix(window_ms)
    _, row = run(event(T, amount=10.0), event(T + window_ms + gap, amount=30.0), **SMALL)
    if included:
        assert row[f"card_count_{suffix}"] == 2
        assert row[f"card_sum_{suffix}"] == 40
        assert row[f"card_mean_{suffix}"] == 20
    else:
        assert row[f"card_count_{suffix}"] == 1
        assert row[f"card_sum_{suffix}"] == 30
        assert row[f"card_mean_{suffix}"] == 30
    assert row[f"card_max_{suffix}"] == 30


@pytest.mark.parametrize(("gap", "included"), [(-1, True), (0, False)])
def test_longest_card_window_edge_for_ratio_z_and_new_flags(gap: int, included: bool) -> None:
    events = [
        event(T, amount=10.0, country="FR", merchant_id="m-1", category="5411"),
        event(T + 1, amount=20.0, country="US", merchant_id="m-2", category="5411"),
        event(T + MINUTE + gap, amount=50.0, country="FR", merchant_id="m-1", category="5411"),
    ]
    row = run(*events, **SMALL)[-1]
    if included:
        # Other events in the window: 10 and 20 -> mean 15, population sigma 5.
        assert row["card_amount_ratio_1m"] == pytest.approx(50 / (80 / 3), rel=1e-6)
        assert row["card_amount_z_1m"] == pytest.approx((50 - 15) / 5, rel=1e-6)
        assert row["card_new_country_1m"] == 0
        assert row["card_new_merchant_1m"] == 0
        assert row["card_category_share_1m"] == 1
    else:
        # Only one other event (20) left: the z-score is undefined (0).
        assert row["card_amount_ratio_1m"] == pytest.approx(50 / 35, rel=1e-6)
        assert row["card_amount_z_1m"] == 0
        assert row["card_new_country_1m"] == 1
        assert row["card_new_merchant_1m"] == 1
    # Retention keeps W_max + L, so the previous event is always known here.
    assert row["card_secs_since_prev"] == pytest.approx((MINUTE + gap - 1) / 1000)


@pytest.mark.parametrize(("gap", "included"), [(-1, True), (0, False)])
def test_merchant_window_edge(gap: int, included: bool) -> None:
    _, row = run(
        event(T, card_id="card-1", merchant_id="m-1"),
        event(T + 5 * SECOND + gap, card_id="card-2", merchant_id="m-1"),
        **SMALL,
    )
    assert row["merchant_count_5s"] == (2 if included else 1)
    assert row["card_count_5s"] == 1  # other card


@pytest.mark.parametrize(("gap", "included"), [(-1, True), (0, False)])
def test_user_window_edge(gap: int, included: bool) -> None:
    _, row = run(
        event(T, card_id="card-1", merchant_id="m-1", user_id="u-1"),
        event(T + 5 * SECOND + gap, card_id="card-2", merchant_id="m-2", user_id="u-1"),
        **SMALL,
    )
    assert row["user_distinct_cards_5s"] == (2 if included else 1)


def test_equal_timestamps_are_all_included() -> None:
    rows = run(
        event(T, amount=1.0, user_id="u-1"),
        event(T, amount=2.0, card_id="card-2", user_id="u-1"),
        event(T, amount=3.0, user_id="u-1"),
        **SMALL,
    )
    assert [r["card_count_5s"] for r in rows] == [1, 1, 2]
    assert [r["card_sum_5s"] for r in rows] == [1, 2, 4]
    assert [r["merchant_count_5s"] for r in rows] == [1, 2, 3]
    assert [r["user_distinct_cards_5s"] for r in rows] == [1, 2, 2]
    assert [r["card_secs_since_prev"] for r in rows] == [-1, -1, 0]
    assert [r["card_new_merchant_1m"] for r in rows] == [1, 1, 0]


# ---------------------------------------------------------------------------- lateness


def test_late_event_does_not_see_later_events() -> None:
    on_time, late, tie = run(
        event(T + 4 * SECOND, amount=50.0, merchant_id="m-1", country="US", user_id="u-1"),
        event(T, amount=10.0, merchant_id="m-1", country="US", user_id="u-1"),  # 4 s late
        event(T + 4 * SECOND, amount=5.0, merchant_id="m-1", country="US", user_id="u-1"),
        **SMALL,
    )
    assert on_time["card_count_5s"] == 1
    # The late event's windows end at its own time: the later event is not in them.
    assert late["card_count_5s"] == late["card_count_1m"] == 1
    assert late["card_sum_1m"] == late["card_max_1m"] == 10
    assert late["card_secs_since_prev"] == -1
    assert late["card_new_merchant_1m"] == 1
    assert late["card_new_country_1m"] == 1
    assert late["merchant_count_5s"] == 1
    assert late["card_amount_z_1m"] == 0
    # The next event sees both: the tie (processed earlier) and the late one.
    assert tie["card_count_5s"] == 3
    assert tie["card_sum_5s"] == 65
    assert tie["card_secs_since_prev"] == 0
    assert tie["card_new_merchant_1m"] == 0
    assert tie["merchant_count_5s"] == 3


def test_secs_since_prev_uses_largest_event_time_not_last_processed() -> None:
    rows = run(
        event(T + 3 * SECOND),
        event(T + 1 * SECOND),  # late
        event(T + 2 * SECOND),  # late; previous in event time is T + 1 s
        event(T + 5 * SECOND),
        **SMALL,
    )
    assert [r["card_secs_since_prev"] for r in rows] == [-1, -1, 1, 2]


@pytest.mark.parametrize(("lateness_ms", "truncated"), [(2 * SECOND, True), (10 * SECOND, False)])
def test_event_later_than_allowed_lateness_has_truncated_windows(
    lateness_ms: int, truncated: bool
) -> None:
    config = {
        "card_windows_ms": (5 * SECOND, 10 * SECOND),
        "merchant_windows_ms": (10 * SECOND,),
        "user_windows_ms": (10 * SECOND,),
        "allowed_lateness_ms": lateness_ms,
    }
    rows = run(
        event(T, card_id="card-1", merchant_id="m-1", user_id="u-1", amount=10.0),
        event(T + 13 * SECOND, card_id="card-1", merchant_id="m-1", user_id="u-1", amount=20.0),
        # 8 s late. Retention kept ts > T + 13 s - 10 s - L; with L = 2 s the event at T is gone.
        event(T + 5 * SECOND, card_id="card-1", merchant_id="m-1", user_id="u-2", amount=30.0),
        event(T + 5 * SECOND, card_id="card-2", merchant_id="m-2", user_id="u-1", amount=40.0),
        **config,
    )
    card_late, user_late = rows[2], rows[3]
    if truncated:
        assert card_late["card_count_10s"] == 1
        assert card_late["card_sum_10s"] == 30
        assert card_late["card_secs_since_prev"] == -1
        assert card_late["card_new_merchant_10s"] == 1
        assert card_late["merchant_count_10s"] == 1
        assert user_late["user_distinct_cards_10s"] == 1
    else:
        assert card_late["card_count_10s"] == 2
        assert card_late["card_sum_10s"] == 40
        assert card_late["card_secs_since_prev"] == 5
        assert card_late["card_new_merchant_10s"] == 0
        assert card_late["merchant_count_10s"] == 2
        assert user_late["user_distinct_cards_10s"] == 2
    # The 5 s window never reached back to T: (T, T + 5 s].
    assert card_late["card_count_5s"] == 1


# ---------------------------------------------------------------------------- location


def test_impossible_travel_paris_to_new_york_in_one_hour() -> None:
    expected_km = haversine_km(PARIS, NEW_YORK)
    assert expected_km == pytest.approx(5837.25, abs=0.01)
    _, row = run(event(T, location=PARIS), event(T + HOUR, location=NEW_YORK))
    assert row["card_km_from_prev"] == pytest.approx(expected_km, rel=1e-6)
    assert row["card_kmh_from_prev"] == pytest.approx(expected_km, rel=1e-6)  # 1 hour


def test_speed_uses_at_least_one_second() -> None:
    _, tie, half_second = run(
        event(T, location=PARIS),
        event(T, location=LONDON),
        event(T + 500, location=PARIS),
    )
    km = haversine_km(PARIS, LONDON)
    assert tie["card_km_from_prev"] == pytest.approx(km, rel=1e-6)
    assert tie["card_kmh_from_prev"] == pytest.approx(km * 3600, rel=1e-6)
    assert half_second["card_kmh_from_prev"] == pytest.approx(km * 3600, rel=1e-6)


def test_previous_location_follows_processing_order() -> None:
    _, unlocated, late = run(
        event(T + HOUR, location=NEW_YORK),
        event(T + 2 * HOUR),  # no location: the card's last location stays New York
        event(T, location=PARIS),  # late, but New York was processed before it
    )
    assert unlocated["card_km_from_prev"] == -1
    km = haversine_km(NEW_YORK, PARIS)
    assert late["card_km_from_prev"] == pytest.approx(km, rel=1e-6)
    assert late["card_kmh_from_prev"] == pytest.approx(km, rel=1e-6)  # |t - t_loc| = 1 h


def test_location_survives_retention_pruning() -> None:
    config = {**SMALL, "allowed_lateness_ms": 0}
    _, row = run(event(T, location=PARIS), event(T + 30 * DAY, location=LONDON), **config)
    assert row["card_secs_since_prev"] == -1  # the event itself was pruned
    assert row["card_count_1m"] == 1
    km = haversine_km(PARIS, LONDON)
    assert row["card_km_from_prev"] == pytest.approx(km, rel=1e-6)
    assert row["card_kmh_from_prev"] == pytest.approx(km / (30 * 24), rel=1e-6)


# ---------------------------------------------------------------------------- aggregates


def test_amount_z_score_two_pass_population_sigma() -> None:
    rows = run(
        event(T, amount=10.0),
        event(T + MINUTE, amount=20.0),
        event(T + 2 * MINUTE, amount=30.0),
        event(T + 3 * MINUTE, amount=50.0),
    )
    assert [r["card_amount_z_30d"] for r in rows[:3]] == [0, 0, pytest.approx(3.0, rel=1e-6)]
    sigma = math.sqrt(200 / 3)
    assert rows[3]["card_amount_z_30d"] == pytest.approx(30 / sigma, rel=1e-6)
    assert rows[3]["card_amount_ratio_30d"] == pytest.approx(50 / (110 / 4), rel=1e-6)


def test_amount_z_score_is_zero_without_spread() -> None:
    rows = run(event(T, amount=7.3), event(T + 1, amount=7.3), event(T + 2, amount=100.0))
    assert rows[2]["card_amount_z_30d"] == 0


def test_amounts_are_rounded_to_float32() -> None:
    amount = 0.1  # not representable; float32(0.1) != 0.1
    rows = run(*(event(T + i, amount=amount) for i in range(3)))
    assert rows[2]["card_sum_1m"] == f32(3 * f32(amount))
    assert rows[2]["amount_base"] == f32(amount)


def test_category_share() -> None:
    rows = run(
        event(T, amount=10.0, category="5411"),
        event(T + 1, amount=30.0, category="5541"),
        event(T + 2, amount=60.0, category="5411"),
        event(T + 3, amount=100.0),
        event(T + 4, amount=100.0, category="5732"),
    )
    shares = [r["card_category_share_30d"] for r in rows]
    assert shares == [1, 0.75, pytest.approx(0.7, rel=1e-6), -1, pytest.approx(100 / 300, rel=1e-6)]


def test_user_distinct_cards() -> None:
    rows = run(
        event(T, card_id="card-1", user_id="u-1"),
        event(T + 1, card_id="card-2", user_id="u-1"),
        event(T + 2, card_id="card-1", user_id="u-1"),
        event(T + 3, card_id="card-3"),
        event(T + 4, card_id="card-3", user_id="u-2"),
        event(T + 5, card_id="card-3", user_id="u-1"),
    )
    assert [r["user_distinct_cards_24h"] for r in rows] == [1, 2, 2, -1, 1, 3]


def test_batch_split_does_not_change_results() -> None:
    events = [
        event(T + i * 700, card_id=f"card-{i % 3}", merchant_id=f"m-{i % 2}", user_id="u-1")
        for i in range(12)
    ]
    whole = FeatureEngine(**SMALL).process(*to_columns(events))
    engine = FeatureEngine(**SMALL)
    split = np.concatenate([engine.process(*to_columns(events[i : i + 1])) for i in range(12)])
    np.testing.assert_array_equal(split, whole)


def test_empty_batch() -> None:
    engine = FeatureEngine(**SMALL)
    out = engine.process(*to_columns([]))
    assert out.shape == (0, len(engine.feature_names))
    assert out.dtype == np.float32


# ---------------------------------------------------------------------------- idle eviction


def test_evict_idle_is_strictly_older_than_watermark_minus_ttl() -> None:
    pair = Pair(**SMALL, idle_ttl_ms=10 * SECOND)
    pair.process(event(T, card_id="card-1", merchant_id="m-1", user_id="u-1"))
    assert pair.evict_idle(T + 10 * SECOND) == 0  # newest == watermark - ttl: kept
    assert pair.evict_idle(T + 10 * SECOND + 1) == 3  # card, merchant and user
    assert pair.evict_idle(T + 10 * SECOND + 1) == 0


def test_evict_idle_default_ttl_and_watermark() -> None:
    # Default TTL is W_max + L of each kind: card 60 s + 10 s, merchant and user 5 s + 10 s.
    pair = Pair(**SMALL)
    pair.process(
        event(T, card_id="card-1", merchant_id="m-1", user_id="u-1"),
        event(T + 20 * SECOND, card_id="card-2", merchant_id="m-2", user_id="u-2"),
    )
    # Watermark defaults to the newest event time seen: only m-1 and u-1 are idle long enough.
    assert pair.evict_idle() == 2
    pair.process(event(T + 71 * SECOND, card_id="card-2", merchant_id="m-2", user_id="u-2"))
    assert pair.evict_idle() == 1  # card-1: T < T + 71 s - 70 s


def test_evict_idle_keeps_features_of_on_time_events() -> None:
    events = [
        event(T + offset, card_id=card, merchant_id=merchant, user_id=user, amount=amount)
        for offset, card, merchant, user, amount in [
            (0, "card-1", "m-1", "u-1", 10.0),
            (2 * SECOND, "card-2", "m-1", "u-1", 20.0),
            (30 * SECOND, "card-1", "m-2", "u-2", 30.0),
            (80 * SECOND, "card-2", "m-1", "u-1", 40.0),
            (80 * SECOND, "card-3", "m-3", None, 50.0),
            (200 * SECOND, "card-1", "m-2", "u-1", 60.0),
            (201 * SECOND, "card-1", "m-1", "u-2", 70.0),
            (270 * SECOND, "card-1", "m-1", "u-2", 80.0),
            (271 * SECOND, "card-1", "m-1", "u-2", 90.0),
        ]
    ]
    plain = Pair(**SMALL)
    evicting = Pair(**SMALL)
    evicted = 0
    for e in events:
        (expected,) = plain.process(e)
        (actual,) = evicting.process(e)
        assert actual == expected
        evicted += evicting.evict_idle()
    assert evicted > 0
    assert evicting.rust.stats() != plain.rust.stats()


def test_evict_idle_forgets_the_card_location() -> None:
    pair = Pair(**SMALL)
    pair.process(event(T, location=PARIS))
    assert pair.evict_idle(T + 2 * DAY) == 2  # card and merchant
    (row,) = pair.process(event(T + 2 * DAY, location=LONDON))
    assert row["card_km_from_prev"] == -1
    assert row["card_new_merchant_1m"] == 1


# ---------------------------------------------------------------------------- snapshots


def _engine_with_state() -> tuple[FeatureEngine, list[dict[str, Any]]]:
    events = [
        event(T + i * 900, card_id=f"card-{i % 4}", user_id=f"u-{i % 3}", location=PARIS)
        for i in range(20)
    ]
    engine = FeatureEngine(**SMALL)
    engine.process(*to_columns(events))
    return engine, events


def test_snapshot_round_trip_continues_identically() -> None:
    engine, _ = _engine_with_state()
    blob = engine.snapshot()
    assert isinstance(blob, bytes)
    restored = FeatureEngine.restore(blob)
    assert restored.feature_names == engine.feature_names
    assert restored.stats() == engine.stats()
    more = [event(T + 20_000 + i * 300, card_id=f"card-{i % 5}", location=LONDON) for i in range(8)]
    np.testing.assert_array_equal(
        restored.process(*to_columns(more)), engine.process(*to_columns(more))
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda blob: b"", id="empty"),
        pytest.param(lambda blob: b"not a txfast snapshot", id="garbage"),
        pytest.param(lambda blob: bytes(64), id="zeros"),
        pytest.param(lambda blob: bytes([blob[0] ^ 0xFF]) + blob[1:], id="bad-magic"),
        pytest.param(lambda blob: blob[:1], id="truncated-1"),
        pytest.param(lambda blob: blob[:8], id="truncated-8"),
        pytest.param(lambda blob: blob[: len(blob) // 2], id="truncated-half"),
        pytest.param(lambda blob: blob[:-1], id="truncated-last-byte"),
    ],
)
def test_restore_rejects_corrupted_snapshot(corrupt: Any) -> None:
    engine, _ = _engine_with_state()
    with pytest.raises(SnapshotError):
        FeatureEngine.restore(corrupt(engine.snapshot()))
    assert issubclass(SnapshotError, TxfastError)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"card_windows_ms": ()}, id="no-card-window"),
        pytest.param({"card_windows_ms": (0,)}, id="zero-window"),
        pytest.param({"card_windows_ms": (-MINUTE,)}, id="negative-window"),
        pytest.param({"merchant_windows_ms": (0,)}, id="zero-merchant-window"),
        pytest.param({"user_windows_ms": (-1,)}, id="negative-user-window"),
        pytest.param({"card_windows_ms": (MINUTE, MINUTE)}, id="duplicate-window"),
        pytest.param({"card_windows_ms": (1_500,)}, id="window-not-whole-seconds"),
        pytest.param({"allowed_lateness_ms": -1}, id="negative-lateness"),
        pytest.param(
            {"merchant_windows_ms": (50 * DAY,), "allowed_lateness_ms": 0},
            id="merchant-retention-over-2**32-ms",
        ),
    ],
)
def test_invalid_config_raises(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FeatureEngine(**config)
    with pytest.raises(ValueError):
        ReferenceEngine(**config)


def test_merchant_retention_limit_is_inclusive() -> None:
    window = 49 * DAY
    lateness = 2**32 - 1 - window
    ReferenceEngine(merchant_windows_ms=(window,), allowed_lateness_ms=lateness)
    FeatureEngine(merchant_windows_ms=(window,), allowed_lateness_ms=lateness)
    with pytest.raises(ValueError):
        ReferenceEngine(merchant_windows_ms=(window,), allowed_lateness_ms=lateness + 1)
    with pytest.raises(ConfigError):
        FeatureEngine(merchant_windows_ms=(window,), allowed_lateness_ms=lateness + 1)


@pytest.mark.parametrize("config", [{"shards": 0}, {"idle_ttl_ms": -1}])
def test_invalid_engine_layout_raises(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FeatureEngine(**config)


@pytest.mark.parametrize("column", range(10))
def test_mismatched_column_lengths_raise(column: int) -> None:
    engine = FeatureEngine()
    columns = list(to_columns([event(T), event(T + 1)]))
    columns[column] = columns[column][:1]
    with pytest.raises(InputError):
        engine.process(*columns)


@pytest.mark.parametrize("amount", [0.0, -5.0, math.nan, math.inf, 1e-50])
def test_invalid_amount_raises(amount: float) -> None:
    with pytest.raises(InputError):
        FeatureEngine().process(*to_columns([event(T, amount=amount)]))
    with pytest.raises(ValueError):
        ReferenceEngine().process_event(**event(T, amount=amount))


@pytest.mark.parametrize(("lat", "lon"), [(PARIS[0], None), (None, PARIS[1])])
def test_lat_without_lon_raises(lat: float | None, lon: float | None) -> None:
    bad = {**event(T), "lat": lat, "lon": lon}
    with pytest.raises(InputError):
        FeatureEngine().process(*to_columns([bad]))
    with pytest.raises(ValueError):
        ReferenceEngine().process_event(**bad)


def test_rejected_batch_changes_nothing() -> None:
    engine = FeatureEngine(**SMALL)
    before = engine.stats()
    with pytest.raises(InputError):
        engine.process(*to_columns([event(T), event(T + 1, amount=-1.0)]))
    assert engine.stats() == before
    (row,) = engine.process(*to_columns([event(T + 2)]))
    assert row[engine.feature_names.index("card_secs_since_prev")] == -1
    assert row[engine.feature_names.index("card_count_5s")] == 1


def test_evict_idle_drops_the_previous_event_of_a_late_event() -> None:
    # Card TTL = 60 s + 10 s. card-1 is idle at watermark T + 100 s (T + 25 s < T + 30 s), but
    # an event 9 s late (L = 10 s) would still have seen T + 25 s as its previous event.
    late = event(T + 91 * SECOND, card_id="card-1", merchant_id="m-3")
    rows = {}
    for evict in (False, True):
        pair = Pair(**SMALL)
        pair.process(
            event(T + 25 * SECOND, card_id="card-1", merchant_id="m-1"),
            event(T + 100 * SECOND, card_id="card-2", merchant_id="m-2"),
        )
        if evict:
            assert pair.evict_idle() == 2  # card-1 and m-1
        (rows[evict],) = pair.process(late)
    assert rows[False]["card_secs_since_prev"] == 66
    assert rows[True]["card_secs_since_prev"] == -1
    window_columns = [n for n in rows[False] if n != "card_secs_since_prev"]
    assert [rows[True][n] for n in window_columns] == [rows[False][n] for n in window_columns]


def test_features_written_into_rows_of_a_larger_matrix() -> None:
    events = [event(T + i * SECOND, card_id=f"card-{i % 3}", amount=5.0 + i) for i in range(12)]
    whole = FeatureEngine(**SMALL).process(*to_columns(events))
    engine = FeatureEngine(**SMALL)
    X = np.full((20, whole.shape[1]), -7.0, dtype=np.float32)
    first = engine.process(*to_columns(events[:5]), out=X[2:7])
    assert first.base is X or np.shares_memory(first, X)
    engine.process(*to_columns(events[5:]), out=X[7:14])
    np.testing.assert_array_equal(X[2:14], whole)
    assert (X[:2] == -7).all() and (X[14:] == -7).all()  # nothing written outside
    with pytest.raises(InputError, match="cells"):
        engine.process(*to_columns(events[:2]), out=X[0:3])
    with pytest.raises(InputError, match="columns"):
        engine.process(*to_columns(events[:2]), out=np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match="contiguous"):
        engine.process(*to_columns(events[:2]), out=np.zeros((whole.shape[1], 2), np.float32).T)
