from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txfast.simulate import (
    CHANNELS,
    CONTRACT_FIELDS,
    CURRENCIES,
    SCENARIOS,
    iter_json_batches,
    simulate,
    write_table,
)

CARDS, DAYS, SEED = 2000, 30, 11
START_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000

COLUMNS = {
    "transaction_id": pa.string(),
    "timestamp": pa.int64(),
    "card_id": pa.string(),
    "user_id": pa.string(),
    "amount": pa.float64(),
    "currency": pa.string(),
    "merchant_id": pa.string(),
    "merchant_category": pa.string(),
    "country": pa.string(),
    "lat": pa.float64(),
    "lon": pa.float64(),
    "channel": pa.string(),
    "device_id": pa.string(),
    "label": pa.int8(),
    "scenario": pa.string(),
}
HOME_CURRENCY = {
    **dict.fromkeys(["DE", "FR", "ES", "IT", "NL", "BE", "AT", "PT", "IE"], "EUR"),
    "GB": "GBP",
    "US": "USD",
    "CH": "CHF",
    "SE": "SEK",
}


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return simulate(CARDS, DAYS, SEED)


@pytest.fixture(scope="module")
def rows(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays (strings as object arrays, nulls as None / NaN)."""
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type):
            out[name] = np.array(col.to_pylist(), dtype=object)
        else:
            out[name] = col.to_numpy()
    return out


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(min(a, 1.0)))


# ------------------------------------------------------------------------------------------
# Shape and contract
# ------------------------------------------------------------------------------------------


def test_columns_and_types(table: pa.Table) -> None:
    assert table.schema.names == list(COLUMNS)
    for name, typ in COLUMNS.items():
        assert table.schema.field(name).type == typ, name
    for name in ("transaction_id", "timestamp", "card_id", "amount", "currency", "merchant_id"):
        assert table.column(name).null_count == 0, name


def test_sorted_unique_and_in_period(rows: dict[str, np.ndarray]) -> None:
    ts = rows["timestamp"]
    assert np.all(np.diff(ts) >= 0)
    assert ts.min() >= START_MS and ts.max() < START_MS + DAYS * DAY_MS
    ids = rows["transaction_id"]
    assert len(set(ids)) == ids.size
    start_tag = np.datetime64(START_MS, "ms").astype("datetime64[D]").astype(str).replace("-", "")
    assert ids[0] == f"tx-{SEED}-{start_tag}-0"


def test_field_ranges(rows: dict[str, np.ndarray]) -> None:
    amount = rows["amount"]
    assert np.all(amount > 0) and np.all(np.isfinite(amount))
    np.testing.assert_allclose(np.round(amount, 2), amount, rtol=0, atol=1e-9)
    assert set(rows["currency"]) <= set(CURRENCIES)
    assert set(rows["channel"]) == set(CHANNELS)
    assert all(re.fullmatch(r"\d{4}", m) for m in set(rows["merchant_category"]))
    countries = {c for c in rows["country"] if c is not None}
    assert all(re.fullmatch(r"[A-Z]{2}", c) for c in countries)
    assert set(rows["label"]) == {0, 1}
    assert set(rows["scenario"]) <= set(SCENARIOS)


def test_coordinates_both_or_neither(rows: dict[str, np.ndarray]) -> None:
    lat, lon = rows["lat"], rows["lon"]
    assert np.array_equal(np.isnan(lat), np.isnan(lon))
    ok = ~np.isnan(lat)
    assert np.all(np.abs(lat[ok]) <= 90) and np.all(np.abs(lon[ok]) <= 180)
    no_country = np.array([c is None for c in rows["country"]])
    assert no_country.any(), "some events should lack a country"
    assert no_country.mean() < 0.02
    assert not ok[no_country].any(), "coordinates without a country"
    channel = rows["channel"]
    present = (channel == "pos") | (channel == "atm")
    assert ok[present].all(), "card-present transactions are located"
    ecom = channel == "ecom"
    assert 0.2 < ok[ecom].mean() < 0.8, "some e-commerce events are geolocated, some not"


def test_optional_fields_follow_channel(rows: dict[str, np.ndarray]) -> None:
    channel = rows["channel"]
    device_missing = np.array([d is None for d in rows["device_id"]])
    present = (channel == "pos") | (channel == "atm")
    assert device_missing[present].all()
    assert not device_missing[channel == "transfer"].any()
    assert (~device_missing[channel == "ecom"]).mean() > 0.9
    user_missing = np.array([u is None for u in rows["user_id"]])
    assert 0.0 < user_missing.mean() < 0.15


def test_card_ids_are_tokens_not_pans(rows: dict[str, np.ndarray]) -> None:
    for card in set(rows["card_id"]):
        assert re.fullmatch(r"card_\d{6,}", card)
        assert not (card.isdigit() and 13 <= len(card) <= 19 and luhn_ok(card))
    assert luhn_ok("4111111111111111")  # the helper itself recognises a test PAN


def test_label_matches_scenario(rows: dict[str, np.ndarray]) -> None:
    fraud = rows["scenario"] != "normal"
    assert np.array_equal(fraud, rows["label"] == 1)


# ------------------------------------------------------------------------------------------
# Determinism, fraud rate, scenarios
# ------------------------------------------------------------------------------------------


def test_deterministic_by_seed(table: pa.Table) -> None:
    assert simulate(CARDS, DAYS, SEED).equals(table)
    small = simulate(200, 5, 3, fraud_rate=0.02)
    assert simulate(200, 5, 3, fraud_rate=0.02).equals(small)
    assert not simulate(200, 5, 4, fraud_rate=0.02).equals(small)


@pytest.mark.parametrize("rate", [0.0, 0.001, 0.005, 0.02, 0.1])
def test_fraud_rate_respected(rate: float) -> None:
    t = simulate(500, 20, 5, fraud_rate=rate)
    observed = pc.mean(pc.cast(t.column("label"), pa.float64())).as_py()
    assert observed == pytest.approx(rate, rel=0.02, abs=2e-4)


def test_default_fraud_rate_and_concentration(rows: dict[str, np.ndarray]) -> None:
    label = rows["label"]
    assert label.mean() == pytest.approx(0.005, rel=0.02)
    fraud_cards = set(rows["card_id"][label == 1])
    assert len(fraud_cards) < 0.15 * CARDS
    assert label.sum() / len(fraud_cards) >= 3, "fraud comes in bursts on few cards"


def test_all_scenarios_present(rows: dict[str, np.ndarray]) -> None:
    counts = Counter(rows["scenario"])
    assert set(counts) == set(SCENARIOS)
    for name in SCENARIOS[1:]:
        assert counts[name] >= 30, name


def test_fraud_interleaves_with_normal_activity(rows: dict[str, np.ndarray]) -> None:
    card, label, ts = rows["card_id"], rows["label"], rows["timestamp"]
    interleaved = 0
    victims = set(card[label == 1])
    for victim in victims:
        mask = card == victim
        normal_ts, fraud_ts = ts[mask & (label == 0)], ts[mask & (label == 1)]
        if normal_ts.size and normal_ts.min() < fraud_ts.min() < normal_ts.max():
            interleaved += 1
    assert interleaved > 0.5 * len(victims)


# ------------------------------------------------------------------------------------------
# Legitimate behaviour
# ------------------------------------------------------------------------------------------


def _normal(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = rows["label"] == 0
    return {k: v[keep] for k, v in rows.items()}


def test_activity_level_and_daily_rhythm(rows: dict[str, np.ndarray]) -> None:
    n = _normal(rows)
    per_card_day = n["timestamp"].size / (CARDS * DAYS)
    assert 2.5 < per_card_day < 3.5
    per_card = np.array(list(Counter(n["card_id"]).values()))
    assert per_card.std() / per_card.mean() > 0.4, "activity is heterogeneous across cards"
    # Central European cards: little at night, peaks at lunch and in the evening.
    cet = np.isin(n["country"], ["DE", "FR", "IT", "ES", "NL", "AT", "BE"]) & (
        n["channel"] == "pos"
    )
    hour = ((n["timestamp"][cet] // 3_600_000) + 1) % 24
    share = np.bincount(hour, minlength=24) / hour.size
    assert share[1:5].sum() < 0.03
    assert share[12] > 3 * share[3] and share[19] > 3 * share[3]
    assert share[12] > share[10] and share[18] > share[15]


def test_weekends_differ(rows: dict[str, np.ndarray]) -> None:
    n = _normal(rows)
    day = (n["timestamp"] - START_MS) // DAY_MS
    dow = (day + 3) % 7  # 2026-01-01 is a Thursday; Monday = 0
    commute = n["merchant_category"] == "4111"
    weekday = np.bincount(dow[commute], minlength=7)[:5].mean()
    sunday = np.bincount(dow[commute], minlength=7)[6]
    assert sunday < 0.7 * weekday


def test_cards_stay_near_home(rows: dict[str, np.ndarray]) -> None:
    n = _normal(rows)
    pos = n["channel"] == "pos"
    by_card: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for card, lat, lon in zip(n["card_id"][pos], n["lat"][pos], n["lon"][pos], strict=True):
        by_card[card].append((lat, lon))
    near = total = 0
    for points in list(by_card.values())[:300]:
        lat0, lon0 = np.median(np.array(points), axis=0)
        for lat, lon in points:
            total += 1
            near += haversine_km(lat0, lon0, lat, lon) <= 30
    assert near / total > 0.95


def test_currency_matches_country_and_card(rows: dict[str, np.ndarray]) -> None:
    n = _normal(rows)
    present = (n["channel"] == "pos") | (n["channel"] == "atm")
    for country, currency in zip(n["country"][present], n["currency"][present], strict=True):
        assert currency == HOME_CURRENCY.get(country, "USD")
    online: dict[str, set[str]] = defaultdict(set)
    for card, currency in zip(n["card_id"][~present], n["currency"][~present], strict=True):
        online[card].add(currency)
    assert all(len(v) == 1 for v in online.values()), "a card pays online in its own currency"
    assert Counter(n["currency"]).most_common(1)[0][0] == "EUR"


def test_users_own_one_to_three_cards(rows: dict[str, np.ndarray]) -> None:
    cards_of: dict[str, set[str]] = defaultdict(set)
    for user, card in zip(rows["user_id"], rows["card_id"], strict=True):
        if user is not None:
            cards_of[user].add(card)
    sizes = Counter(len(v) for v in cards_of.values())
    assert set(sizes) <= {1, 2, 3} and sizes[2] > 0 and sizes[3] > 0


def test_amounts_lognormal_per_category(rows: dict[str, np.ndarray]) -> None:
    n = _normal(rows)
    eur = n["currency"] == "EUR"
    groceries = n["amount"][eur & (n["merchant_category"] == "5411")]
    transport = n["amount"][eur & (n["merchant_category"] == "4111")]
    assert 10 < np.median(groceries) < 60 and np.median(transport) < 8
    log = np.log(groceries)
    skew = np.mean((log - log.mean()) ** 3) / log.std() ** 3
    assert abs(skew) < 0.5, "log-amounts are roughly symmetric"


# ------------------------------------------------------------------------------------------
# Fraud scenarios
# ------------------------------------------------------------------------------------------


def _scenario(rows: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    keep = rows["scenario"] == name
    return {k: v[keep] for k, v in rows.items()}


def test_card_testing_tiny_ecom_bursts(rows: dict[str, np.ndarray]) -> None:
    ct = _scenario(rows, "card_testing")
    assert np.all(ct["amount"] < 2) and set(ct["channel"]) == {"ecom"}
    bursts: dict[tuple[str, str], list[int]] = defaultdict(list)
    for card, merchant, t in zip(ct["card_id"], ct["merchant_id"], ct["timestamp"], strict=True):
        bursts[card, merchant].append(t)
    long = [ts for ts in bursts.values() if len(ts) >= 5]
    assert long, "single-card bursts"
    assert all(max(ts) - min(ts) < 30 * 60_000 for ts in long)
    cards_per_merchant = Counter(merchant for _, merchant in bursts)
    assert max(cards_per_merchant.values()) >= 5, "some merchants are tested with many cards"


def test_account_takeover_new_device_and_country(rows: dict[str, np.ndarray]) -> None:
    ato = _scenario(rows, "account_takeover")
    n = _normal(rows)
    devices: dict[str, set[str]] = defaultdict(set)
    countries: dict[str, set[str]] = defaultdict(set)
    for card, dev, country in zip(n["card_id"], n["device_id"], n["country"], strict=True):
        devices[card].add(dev)
        countries[card].add(country)
    for card, dev, country in zip(ato["card_id"], ato["device_id"], ato["country"], strict=True):
        assert dev is not None and dev not in devices[card]
        assert country not in countries[card]
    assert set(ato["merchant_category"]) <= {"5732", "6540", "5816", "4829", "6051"}
    eur = ato["currency"] == "EUR"
    assert np.median(ato["amount"][eur]) > 150


def test_impossible_travel(rows: dict[str, np.ndarray]) -> None:
    it = _scenario(rows, "impossible_travel")
    n = _normal(rows)
    present = (n["channel"] == "pos") | (n["channel"] == "atm")
    assert set(it["channel"]) <= {"pos", "atm"}
    checked = 0
    for card in set(it["card_id"]):
        f = it["card_id"] == card
        h = present & (n["card_id"] == card)
        gap = np.abs(n["timestamp"][h][:, None] - it["timestamp"][f][None, :])
        i, j = np.unravel_index(np.argmin(gap), gap.shape)
        assert gap[i, j] <= 60 * 60_000
        km = haversine_km(n["lat"][h][i], n["lon"][h][i], it["lat"][f][j], it["lon"][f][j])
        assert km / max(gap[i, j] / 3_600_000, 1 / 60) > 1000, "faster than an airliner"
        checked += 1
    assert checked >= 5


def test_compromised_merchant_clusters(rows: dict[str, np.ndarray]) -> None:
    cm = _scenario(rows, "compromised_merchant")
    present = (cm["channel"] == "pos") | (cm["channel"] == "atm")
    cards_at: dict[str, set[str]] = defaultdict(set)
    for merchant, card in zip(cm["merchant_id"][present], cm["card_id"][present], strict=True):
        cards_at[merchant].add(card)
    assert max(len(v) for v in cards_at.values()) >= 5


def test_amount_anomalies_far_above_usual(rows: dict[str, np.ndarray]) -> None:
    aa = _scenario(rows, "amount_anomaly")
    n = _normal(rows)
    total: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    for card, amount in zip(n["card_id"], n["amount"], strict=True):
        total[card] += amount
        count[card] += 1
    ratio = np.array(
        [a / (total[c] / count[c]) for c, a in zip(aa["card_id"], aa["amount"], strict=True)]
    )
    assert np.all(ratio > 5) and np.median(ratio) > 15


# ------------------------------------------------------------------------------------------
# JSON events
# ------------------------------------------------------------------------------------------


def test_iter_json_batches_round_trip(table: pa.Table) -> None:
    part = table.slice(1000, 5000)
    batches = list(iter_json_batches(part, batch_size=700))
    assert [len(b) for b in batches] == [700] * 7 + [100]
    events = [e for b in batches for e in b]
    expected = part.drop_columns(["scenario"]).to_pylist()
    for raw, row in zip(events, expected, strict=True):
        assert isinstance(raw, bytes)
        decoded = msgspec.json.decode(raw)
        assert decoded == {k: v for k, v in row.items() if v is not None}
        assert list(decoded) == [f for f in CONTRACT_FIELDS if f in decoded]
        assert isinstance(decoded["timestamp"], int) and isinstance(decoded["amount"], float)
        assert raw == msgspec.json.encode(decoded), "compact, canonical encoding"


def test_iter_json_batches_whole_table_in_order(table: pa.Table) -> None:
    ids = [
        msgspec.json.decode(e)["transaction_id"]
        for b in iter_json_batches(table, batch_size=65_536)
        for e in b
    ]
    assert ids == table.column("transaction_id").to_pylist()


def test_iter_json_batches_escapes_and_types() -> None:
    odd = pa.table(
        {
            "transaction_id": ['q"uote', "back\\slash", "tab\tnew\nline", "ünï €", None],
            "timestamp": pa.array([0, 1, 2, 3, 4], pa.timestamp("ms", tz="UTC")),
            "amount": [1.0, 2.5, float("nan"), float("inf"), 1e-7],
            "label": pa.array([0, 1, None, 0, 1], pa.int8()),
            "merchant_category": pa.array(
                ["5411", "5411", "5732", None, "5411"]
            ).dictionary_encode(),
            "extra": [1, 2, 3, 4, 5],
        }
    )
    events = [msgspec.json.decode(e) for b in iter_json_batches(odd) for e in b]
    assert events == [
        {"transaction_id": 'q"uote', "timestamp": 0, "amount": 1.0, "merchant_category": "5411",
         "label": 0},
        {"transaction_id": "back\\slash", "timestamp": 1, "amount": 2.5,
         "merchant_category": "5411", "label": 1},
        {"transaction_id": "tab\tnew\nline", "timestamp": 2, "merchant_category": "5732"},
        {"transaction_id": "ünï €", "timestamp": 3, "label": 0},
        {"timestamp": 4, "amount": 1e-7, "merchant_category": "5411", "label": 1},
    ]  # fmt: skip
    assert list(iter_json_batches(odd.slice(0, 0))) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_json_batches(odd, batch_size=0))


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return simulate(100, 3, 2, fraud_rate=0.05)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_write_json_lines(small: pa.Table, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    write_table(small, path)
    lines = path.read_bytes().splitlines()
    assert lines == [e for b in iter_json_batches(small) for e in b]


def test_write_parquet_and_csv(small: pa.Table, tmp_path: Path) -> None:
    write_table(small, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(small)
    write_table(small, str(tmp_path / "t.csv"))
    back = pcsv.read_csv(tmp_path / "t.csv")
    assert back.column_names == small.column_names and back.num_rows == small.num_rows
    assert back.column("transaction_id").to_pylist() == small.column("transaction_id").to_pylist()


def test_write_unknown_suffix(small: pa.Table, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.xlsx.*\.jsonl"):
        write_table(small, tmp_path / "t.xlsx")
    with pytest.raises(ValueError, match="no suffix"):
        write_table(small, tmp_path / "noext")


# ------------------------------------------------------------------------------------------
# Arguments and small cases
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cards": 0, "days": 1},
        {"cards": 1, "days": 0},
        {"cards": 10, "days": 1, "seed": -1},
        {"cards": 10, "days": 1, "fraud_rate": -0.1},
        {"cards": 10, "days": 1, "fraud_rate": 0.5},
        {"cards": 10, "days": 1, "users_per_card": 0.0},
        {"cards": 10, "days": 1, "users_per_card": 1.5},
        {"cards": 10, "days": 1, "merchants": 5},
        {"cards": 10, "days": 1, "start": "next tuesday"},
    ],
)
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        simulate(**kwargs)  # type: ignore[arg-type]


def test_start_with_offset_and_time() -> None:
    t = simulate(50, 2, 1, start="2026-03-15T10:00:00+02:00")
    start = int(datetime(2026, 3, 15, 8, tzinfo=UTC).timestamp() * 1000)
    ts = t.column("timestamp").to_numpy()
    assert ts.min() >= start and ts.max() < start + 2 * DAY_MS


def test_same_seed_same_cardholders() -> None:
    first = simulate(300, 7, 9, fraud_rate=0.0)
    later = simulate(300, 7, 9, fraud_rate=0.0, start="2026-02-01")

    def home(t: pa.Table) -> dict[str, str]:
        pos = t.filter(pc.equal(t.column("channel"), "pos"))
        seen: dict[str, Counter[str]] = defaultdict(Counter)
        for card, city in zip(pos.column("card_id").to_pylist(), pos.column("country").to_pylist(),
                              strict=True):  # fmt: skip
            seen[card][city] += 1
        return {card: c.most_common(1)[0][0] for card, c in seen.items()}

    a, b = home(first), home(later)
    common = a.keys() & b.keys()
    assert len(common) > 250
    assert sum(a[c] == b[c] for c in common) > 0.95 * len(common)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cards=st.integers(1, 60),
    days=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
    fraud_rate=st.sampled_from([0.0, 0.005, 0.05, 0.3]),
    users_per_card=st.floats(0.2, 1.0),
)
def test_invariants_hold_for_any_small_simulation(
    cards: int, days: int, seed: int, fraud_rate: float, users_per_card: float
) -> None:
    t = simulate(cards, days, seed, fraud_rate=fraud_rate, users_per_card=users_per_card)
    ts = t.column("timestamp").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert ts.size == 0 or (ts.min() >= START_MS and ts.max() < START_MS + days * DAY_MS)
    assert pc.count_distinct(t.column("transaction_id")).as_py() == t.num_rows
    assert pc.all(pc.greater(t.column("amount"), 0)).as_py() in (True, None)
    assert pc.count_distinct(t.column("card_id")).as_py() <= cards
    label = t.column("label").to_numpy()
    scenario = np.array(t.column("scenario").to_pylist(), dtype=object)
    assert np.array_equal(label == 1, scenario != "normal")
    n_fraud = int(label.sum())
    expected = fraud_rate * (t.num_rows - n_fraud) / (1 - fraud_rate)
    assert abs(n_fraud - expected) <= 1


def test_a_paced_simulated_source_batches_by_linger_and_releases_when_due() -> None:
    """Paced, a batch holds the events due by its release (about ``rate × linger`` of them
    when the consumer keeps up, more when it is late, never over ``batch_size``); unpaced,
    batches are ``batch_size`` events."""
    import time

    from txfast.sources import SimulatedSource

    src = SimulatedSource(cards=600, days=1, seed=3, rate=2000, batch_size=120, linger_ms=25)
    everything = [
        p
        for b in SimulatedSource(cards=600, days=1, seed=3, batch_size=64)
        for p in b.payloads or []
    ]
    t0 = time.perf_counter()
    seen: list[bytes] = []
    sizes = []
    for i, batch in enumerate(src):
        assert batch.position == len(seen)
        seen.extend(batch.payloads or [])
        sizes.append(len(batch.payloads or []))
        # Never ahead of the pace: its last event was due when the batch came out.
        assert time.perf_counter() - t0 >= (len(seen) - 1) / 2000 - 1e-3
        if i == 5:
            time.sleep(0.2)  # a slow consumer: the next batch is larger, capped
        if len(seen) >= 1000:
            break
    assert seen == everything[: len(seen)]  # in order, nothing lost or repeated
    assert max(sizes) == 120 == sizes[6]  # 0.2 s late: 400 events due, 120 at most
    assert 30 <= sorted(sizes)[len(sizes) // 2] <= 80  # keeping up: about 2000/s × 25 ms
    fast = SimulatedSource(cards=20, days=1, seed=3, batch_size=16)
    assert [len(b.payloads or []) for b in fast][:3] == [16, 16, 16]
