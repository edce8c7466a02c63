"""The store interface (alert lists, details, feedback, labels, statistics, model versions,
audit log), the same tests on DuckDB and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from store_helpers import T0, Row, history, scored_batch

from txfast.exceptions import InvalidCursorError, NotFoundError, StoreError
from txfast.store import Alert, AlertQuery, Store, open_store

ROWS = history()
ALERTS = [r for r in ROWS if r.is_alert]


@pytest.fixture
def store(store_url: str):
    """A store holding :data:`ROWS`, written in three batches."""
    with open_store(store_url) as s:
        for i in range(0, len(ROWS), 50):
            s.write_batch(scored_batch(ROWS[i : i + 50]))
        yield s


def f32(x: float) -> float:
    return float(np.float32(x))


def newest_first(rows: list[Row]) -> list[str]:
    return [r.id for r in sorted(rows, key=lambda r: (r.ts, r.id), reverse=True)]


def all_pages(s: Store, query: AlertQuery | None, limit: int, sort: str = "time") -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = s.list_alerts(query, limit=limit, cursor=cursor, sort=sort)
        assert len(page.items) <= limit
        ids += [a.transaction_id for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


# -- alert lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        (None, lambda r: True),
        (AlertQuery(card_id="c2"), lambda r: r.card == "c2"),
        (AlertQuery(user_id="u1"), lambda r: r.user == "u1"),
        (AlertQuery(merchant_id="m3"), lambda r: r.merchant == "m3"),
        (AlertQuery(country="DE"), lambda r: r.country == "DE"),
        (AlertQuery(risk_levels=("high",)), lambda r: r.risk == "HIGH"),
        (AlertQuery(risk_levels=("HIGH", "CRITICAL")), lambda r: r.risk in ("HIGH", "CRITICAL")),
        (AlertQuery(actions=("review",)), lambda r: r.action == "review"),
        (AlertQuery(actions=("block", "review")), lambda r: r.action in ("block", "review")),
        (AlertQuery(statuses=("open",)), lambda r: True),
        (AlertQuery(statuses=("false_positive",)), lambda r: False),
        (
            AlertQuery(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2)),
            lambda r: T0 + timedelta(days=1) <= r.ts < T0 + timedelta(days=2),
        ),
        (
            AlertQuery(
                risk_levels=("HIGH",),
                card_id="c1",
                since=datetime(2026, 3, 1, 12, tzinfo=UTC),
            ),
            lambda r: r.risk == "HIGH" and r.card == "c1" and r.ts >= T0 + timedelta(hours=12),
        ),
    ],
)
def test_list_alerts_filters_and_pages(store: Store, query, keep) -> None:
    expected = newest_first([r for r in ALERTS if keep(r)])
    first = store.list_alerts(query, limit=5)
    assert [a.transaction_id for a in first.items] == expected[:5]
    assert (first.next_cursor is None) == (len(expected) <= 5)
    assert all_pages(store, query, limit=4) == expected


def test_feed_json_is_the_listed_alert_as_msgspec_encodes_it(store_url: str) -> None:
    """The database encodes the live feed's alerts; every field must come out as the listed
    :class:`Alert` is encoded: times (with and without a fraction), the REAL score's exact
    value, missing values, labels by name, escaped text."""
    now = datetime(2026, 3, 5, 12, 0, 0)
    rows = [
        Row(id="j0", ts=T0, risk="HIGH", action="alert", score=0.1, created=now),
        Row(
            id="j1",
            ts=T0 + timedelta(milliseconds=1500),
            risk="CRITICAL",
            action="block",
            score=0.9974692463874817,
            amount=31.3,
            user=None,
            country=None,
            channel=None,
            category='ça "va"\n\ttab\\',
            created=now + timedelta(milliseconds=1),
        ),
        Row(
            id="j2",
            ts=T0 + timedelta(days=1, milliseconds=7),
            risk="HIGH",
            action="review",
            amount=1e16,
            created=now + timedelta(seconds=1),
        ),
        Row(id="j3", ts=T0 + timedelta(hours=2), created=now),  # approved: not an alert
    ]
    with open_store(store_url) as s:
        s.write_batch(scored_batch(rows))
        s.record_feedback("j0", "fraud", "alice")
        s.record_feedback("j2", "legit", "bob")
        page = s.list_alerts(None, limit=2)
        assert [a.transaction_id for a in page.items] == ["j2", "j1"]
        assert page.next_cursor is not None
        last = s.list_alerts(None, limit=2, cursor=page.next_cursor)
        assert [a.transaction_id for a in last.items] == ["j0"] and last.next_cursor is None
        # Compared with the stored values read back as Python objects.
        stored = {
            r[0]: r
            for r in s.query(
                "SELECT transaction_id, ts, card_id, user_id, merchant_id, merchant_category, "
                "country, channel, amount, currency, amount_base, score, risk_level, action, "
                "model_version, rules, status, label, created_at FROM alerts"
            )
        }
        items = [*page.items, *last.items]
        for a in items:
            r = stored[a.transaction_id]
            expected = Alert(
                transaction_id=r[0],
                ts=r[1].replace(tzinfo=UTC),
                card_id=r[2],
                user_id=r[3],
                merchant_id=r[4],
                merchant_category=r[5],
                country=r[6],
                channel=r[7],
                amount=r[8],
                currency=r[9],
                amount_base=r[10],
                score=f32(r[11]),
                risk_level=r[12],
                action=r[13],
                model_version=r[14],
                rules=list(r[15]),
                status=r[16],
                label={None: None, 1: "fraud", 0: "legit"}[r[17]],
                created_at=r[18].replace(tzinfo=UTC),
            )
            assert a == expected
        assert items[1].user_id is None and items[1].merchant_category == 'ça "va"\n\ttab\\'
        assert items[1].ts == (T0 + timedelta(milliseconds=1500)).replace(tzinfo=UTC)
        assert [a.label for a in items] == ["legit", None, "fraud"]
        assert items[1].score == f32(0.9974692463874817) and items[2].score == f32(0.1)
        # The live feed carries the same JSON.
        feed = s.alert_feed(now - timedelta(seconds=1))
        assert [f.transaction_id for f in feed] == ["j0", "j1", "j2"]
        ids = s.alert_feed(now - timedelta(seconds=1), ids_only=True)
        assert [(f.transaction_id, f.created_us) for f in ids] == [
            (f.transaction_id, f.created_us) for f in feed
        ]
        assert {(f.risk_level, f.json) for f in ids} == {("", "")}
        by_id = {a.transaction_id: a for a in items}
        for f in feed:
            assert msgspec.json.decode(f.json, type=Alert) == by_id[f.transaction_id]
            # The same JSON values as msgspec's encoding, times written the same way (the
            # numbers' text may differ: 1e16 is 10000000000000000.0 in DuckDB's, 31.0 is 31
            # in PostgreSQL's).
            assert json.loads(f.json) == json.loads(msgspec.json.encode(by_id[f.transaction_id]))
            assert f.risk_level == by_id[f.transaction_id].risk_level
            created = by_id[f.transaction_id].created_at
            assert f.created_us == (created - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
                microseconds=1
            )
        raw = {f.transaction_id: json.loads(f.json) for f in feed}
        assert raw["j0"]["ts"] == "2026-03-01T00:00:00Z"
        assert raw["j1"]["created_at"] == "2026-03-05T12:00:00.001000Z"
        assert s.alerts_since(now - timedelta(seconds=1)) == [by_id[f.transaction_id] for f in feed]


def test_list_alerts_items_carry_the_stored_values(store: Store) -> None:
    page = store.list_alerts(AlertQuery(card_id="c3"), limit=1)
    (a,) = page.items
    row = next(r for r in ALERTS if r.id == a.transaction_id)
    assert a.ts == row.ts.replace(tzinfo=UTC)
    assert (a.card_id, a.user_id, a.merchant_id, a.country) == (
        row.card,
        row.user,
        row.merchant,
        row.country,
    )
    assert (a.risk_level, a.action, a.model_version) == (row.risk, row.action, row.model)
    assert a.score == f32(row.score)
    assert a.rules == [f"rule_{row.risk.lower()}"]
    assert (a.status, a.label) == ("open", None)


def test_list_alerts_by_score(store: Store) -> None:
    expected = [r.id for r in sorted(ALERTS, key=lambda r: (f32(r.score), r.id), reverse=True)]
    assert all_pages(store, None, limit=7, sort="score") == expected
    high = AlertQuery(risk_levels=("HIGH",))
    assert all_pages(store, high, limit=3, sort="score") == [
        i for i in expected if next(r for r in ALERTS if r.id == i).risk == "HIGH"
    ]


def test_pagination_is_stable_while_new_alerts_arrive(store: Store) -> None:
    first = store.list_alerts(None, limit=10)
    newer = [
        Row(id=f"new{i}", ts=T0 + timedelta(days=10, minutes=i), risk="HIGH", action="alert")
        for i in range(5)
    ]
    store.write_batch(scored_batch(newer))
    rest = all_pages_from(store, first.next_cursor, limit=10)
    assert [a.transaction_id for a in first.items] + rest == newest_first(ALERTS)


def all_pages_from(s: Store, cursor: str | None, limit: int) -> list[str]:
    ids: list[str] = []
    while cursor is not None:
        page = s.list_alerts(None, limit=limit, cursor=cursor)
        ids += [a.transaction_id for a in page.items]
        cursor = page.next_cursor
    return ids


def test_bad_list_arguments_are_refused(store: Store) -> None:
    cursor = store.list_alerts(None, limit=2).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidCursorError, match="sort='time'"):
        store.list_alerts(None, cursor=cursor, sort="score")
    for bad in ("not a cursor", cursor[:-3] + "!!!", ""):
        with pytest.raises(InvalidCursorError):
            store.list_alerts(None, cursor=bad)
    with pytest.raises(StoreError, match="limit"):
        store.list_alerts(None, limit=0)
    with pytest.raises(StoreError, match="sort"):
        store.list_alerts(None, sort="amount")
    with pytest.raises(StoreError, match="risk level"):
        AlertQuery(risk_levels=("SEVERE",))
    with pytest.raises(StoreError, match="action"):
        AlertQuery(actions=("approve_maybe",))


# -- transaction details ----------------------------------------------------------------------


def test_get_transaction_of_an_alert_names_its_features(store: Store) -> None:
    alert = ALERTS[0]
    store.record_model_version("v1", {"feature_names": ["a", "b", "c"], "kind": "test"})
    d = store.get_transaction(alert.id)
    assert d is not None
    assert d.is_alert and d.status == "open" and d.label is None
    assert d.ts == alert.ts.replace(tzinfo=UTC)
    assert (d.risk_level, d.action, d.model_version) == (alert.risk, alert.action, "v1")
    assert d.score == f32(alert.score)
    assert d.rules == [f"rule_{alert.risk.lower()}"]
    assert d.feature_version == "test/1"
    assert d.features == dict(zip("abc", alert.features, strict=True))
    assert d.labels == [] and d.audit == []


def test_feature_names_come_from_the_batch_or_a_fallback(store_url: str) -> None:
    rows = [
        Row(id="x1", ts=T0, action="alert", risk="HIGH", model="m-named"),
        Row(id="x2", ts=T0, action="alert", risk="HIGH", model="m-unnamed"),
    ]
    with open_store(store_url) as s:
        s.write_batch(scored_batch(rows[:1], feature_names=("p", "q", "r")))
        s.write_batch(scored_batch(rows[1:]))
        named, unnamed = s.get_transaction("x1"), s.get_transaction("x2")
        assert named is not None and unnamed is not None
        assert list(named.features or {}) == ["p", "q", "r"]
        assert list(unnamed.features or {}) == ["f0", "f1", "f2"]
        versions = {v.version: v.metadata for v in s.model_versions()}
        assert versions["m-named"]["feature_names"] == ["p", "q", "r"]
        assert versions["m-unnamed"] == {}


def test_get_transaction_of_a_plain_transaction_and_of_an_unknown_id(store: Store) -> None:
    plain = next(r for r in ROWS if not r.is_alert)
    d = store.get_transaction(plain.id)
    assert d is not None
    assert not d.is_alert
    assert d.features is None and d.rules == [] and d.status is None
    assert d.amount_base == plain.amount and d.merchant_id == plain.merchant
    assert store.get_transaction("nope") is None


# -- feedback and labels ----------------------------------------------------------------------


def test_feedback_labels_the_alert_and_is_audited(store: Store) -> None:
    fraud, legit = ALERTS[0], ALERTS[1]
    rec = store.record_feedback(fraud.id, "fraud", "alice", note="card testing")
    assert (rec.label, rec.analyst, rec.note) == ("fraud", "alice", "card testing")
    store.record_feedback(legit.id, "legit", "bob")
    d = store.get_transaction(fraud.id)
    assert d is not None
    assert (d.status, d.label) == ("confirmed_fraud", "fraud")
    assert [(lb.label, lb.analyst, lb.note) for lb in d.labels] == [
        ("fraud", "alice", "card testing")
    ]
    (entry,) = d.audit
    assert (entry.actor, entry.action, entry.target) == ("alice", "feedback", fraud.id)
    assert entry.details["label"] == "fraud" and entry.details["previous_status"] == "open"
    page = store.list_alerts(AlertQuery(statuses=("false_positive",)))
    assert [(a.transaction_id, a.label) for a in page.items] == [(legit.id, "legit")]
    for row, value in ((fraud, 1), (legit, 0)):
        sql = "SELECT label FROM transactions WHERE transaction_id = ?"
        assert store.query(sql, [row.id]) == [(value,)]


def test_feedback_on_a_missed_fraud_and_relabelling(store: Store) -> None:
    missed = next(r for r in ROWS if not r.is_alert)
    store.record_feedback(missed.id, "fraud", "carol")
    d = store.get_transaction(missed.id)
    assert d is not None and not d.is_alert
    assert d.label == "fraud" and d.status is None
    alert = ALERTS[2]
    store.record_feedback(alert.id, "fraud", "alice")
    store.record_feedback(alert.id, "legit", "bob", note="customer confirmed")
    d = store.get_transaction(alert.id)
    assert d is not None
    assert (d.status, d.label) == ("false_positive", "legit")
    assert [lb.analyst for lb in d.labels] == ["alice", "bob"]
    table = store.labels()
    assert table.column_names == [
        "transaction_id",
        "ts",
        "card_id",
        "merchant_id",
        "label",
        "labelled_at",
    ]
    got = {r["transaction_id"]: r for r in table.to_pylist()}
    assert set(got) == {missed.id, alert.id}
    assert got[alert.id]["label"] == 0 and got[missed.id]["label"] == 1
    assert got[missed.id]["card_id"] == missed.card
    assert got[missed.id]["ts"] == missed.ts
    assert table["ts"].to_pylist() == sorted(table["ts"].to_pylist())


def test_labels_window(store: Store) -> None:
    early, late = ALERTS[0], ALERTS[-1]
    store.record_feedback(early.id, "fraud", "a")
    store.record_feedback(late.id, "legit", "a")
    mid = T0 + timedelta(days=1)
    assert store.labels(until=mid)["transaction_id"].to_pylist() == [early.id]
    assert store.labels(since=mid)["transaction_id"].to_pylist() == [late.id]
    assert store.labels(since=mid, until=mid).num_rows == 0


def test_label_events_hand_out_first_labels_once_settled(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = ALERTS[0], ALERTS[1]
    store.record_feedback(a.id, "fraud", "ana")
    assert store.label_events(0).num_rows == 0, "not settled yet"
    monkeypatch.setattr("txfast.store._sql.LABEL_SETTLE_S", 0.0)
    store.record_feedback(a.id, "legit", "bob")  # a correction is not a second event
    store.record_feedback(b.id, "legit", "ana")
    events = store.label_events(0)
    assert events.column_names == ["id", "card_id", "merchant_id", "label", "labelled_at"]
    assert events["card_id"].to_pylist() == [a.card, b.card]
    assert events["merchant_id"].to_pylist() == [a.merchant, b.merchant]
    assert events["label"].to_pylist() == [1, 0]
    ids = events["id"].to_pylist()
    assert ids == sorted(ids)
    assert store.label_events(ids[0])["id"].to_pylist() == ids[1:]
    assert store.label_events(ids[-1]).num_rows == 0
    assert store.label_events(0, limit=1).num_rows == 1


def test_bad_feedback_is_refused(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no transaction 'ghost'"):
        store.record_feedback("ghost", "fraud", "alice")
    with pytest.raises(StoreError, match="unknown label"):
        store.record_feedback(ALERTS[0].id, "maybe", "alice")
    with pytest.raises(StoreError, match="analyst"):
        store.record_feedback(ALERTS[0].id, "fraud", " ")
    assert store.labels().num_rows == 0
    assert store.audit_log(action="feedback") == []


# -- statistics -------------------------------------------------------------------------------


def expected_stats(rows: list[Row], since: datetime, until: datetime) -> dict:
    """The statistics computed directly from the rows (history = all)."""
    inside = [r for r in rows if since <= r.ts.replace(minute=0) < until]
    by_country: dict = defaultdict(Counter)
    by_hour: dict = defaultdict(Counter)
    daily: dict = defaultdict(Counter)
    models: dict = defaultdict(Counter)
    for r in rows:  # countries: the whole days starting in the window
        if since <= datetime.combine(r.ts.date(), datetime.min.time()) < until:
            by_country[r.country or ""]["n"] += 1
            by_country[r.country or ""]["alerts"] += r.is_alert
            by_country[r.country or ""][r.risk] += 1
    for r in inside:
        by_hour[r.ts.hour]["n"] += 1
        by_hour[r.ts.hour]["alerts"] += r.is_alert
        by_hour[r.ts.hour][r.risk] += 1
        daily[r.ts.date()]["n"] += 1
        daily[r.ts.date()]["alerts"] += r.is_alert
        models[r.model]["n"] += 1
        models[r.model]["alerts"] += r.is_alert
    return {"country": by_country, "hour": by_hour, "daily": daily, "models": models}


def check_stats(s: Store, rows: list[Row], since: datetime, until: datetime) -> None:
    st = s.stats(since, until, top_merchants=3)
    exp = expected_stats(rows, since, until)
    got_country = {b.key: b for b in st.by_country}
    assert set(got_country) == set(exp["country"])
    for key, c in exp["country"].items():
        b = got_country[key]
        assert (b.transactions, b.alerts) == (c["n"], c["alerts"])
        assert b.by_risk == {lv: c[lv] for lv in ("LOW", "MEDIUM", "HIGH", "CRITICAL")}
    assert {b.key: (b.transactions, b.alerts) for b in st.by_hour} == {
        h: (c["n"], c["alerts"]) for h, c in exp["hour"].items()
    }
    for b in st.by_hour:
        assert b.by_risk == {
            lv: exp["hour"][b.key][lv] for lv in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
        }
    assert [(d.day, d.transactions, d.alerts) for d in st.daily] == sorted(
        (day, c["n"], c["alerts"]) for day, c in exp["daily"].items()
    )
    for d in st.daily:
        assert d.anomaly_rate == pytest.approx(d.alerts / d.transactions)
    assert {m.model_version: (m.transactions, m.alerts) for m in st.by_model_version} == {
        m: (c["n"], c["alerts"]) for m, c in exp["models"].items()
    }
    assert st.transactions == sum(c["n"] for c in exp["daily"].values())


def test_stats_match_the_rows(store: Store) -> None:
    check_stats(store, ROWS, T0, T0 + timedelta(days=3))
    check_stats(store, ROWS, T0 + timedelta(hours=5), T0 + timedelta(hours=29))


def test_stats_top_merchants_and_amounts(store: Store) -> None:
    since, until = T0 + timedelta(days=1), T0 + timedelta(days=3)
    st = store.stats(since, until, top_merchants=2)
    inside = [r for r in ROWS if since <= r.ts < until]
    per: dict = defaultdict(Counter)
    amount: dict[str | int, float] = defaultdict(float)
    for r in inside:
        per[r.merchant]["n"] += 1
        per[r.merchant]["alerts"] += r.is_alert
        amount[r.merchant] += r.amount
    ranked = sorted((m for m in per if per[m]["alerts"]), key=lambda m: (-per[m]["alerts"], m))
    assert [b.key for b in st.by_merchant] == ranked[:2]
    for b in st.by_merchant:
        assert (b.transactions, b.alerts) == (per[b.key]["n"], per[b.key]["alerts"])
        assert b.amount == pytest.approx(amount[b.key])
        assert sum(b.by_risk.values()) == b.transactions
    # Merchant figures cover the whole days starting in the window: here only the last day.
    partial = store.stats(since + timedelta(hours=1), until, top_merchants=10)
    last_day = [r for r in ROWS if T0 + timedelta(days=2) <= r.ts < until]
    alerting = {r.merchant for r in last_day if r.is_alert}
    assert {b.key: b.transactions for b in partial.by_merchant} == {
        m: n for m, n in Counter(r.merchant for r in last_day).items() if m in alerting
    }
    assert store.stats(since, until, top_merchants=0).by_merchant == []


def test_stats_false_positive_rate_per_day(store: Store) -> None:
    day1 = [r for r in ALERTS if r.ts < T0 + timedelta(days=1)]
    day2 = [r for r in ALERTS if T0 + timedelta(days=1) <= r.ts < T0 + timedelta(days=2)]
    for r, label in zip(day1[:4], ["legit", "legit", "fraud", "legit"], strict=True):
        store.record_feedback(r.id, label, "a")
    store.record_feedback(day2[0].id, "fraud", "a")
    store.record_feedback(day2[0].id, "legit", "b")  # the latest label counts
    st = store.stats(T0, T0 + timedelta(days=3))
    assert [(f.day, f.labelled, f.false_positives) for f in st.false_positives] == [
        (T0.date(), 4, 3),
        ((T0 + timedelta(days=1)).date(), 1, 1),
    ]
    assert st.false_positives[0].false_positive_rate == pytest.approx(0.75)


@pytest.mark.parametrize("compact_every", [1, 1000])
def test_replayed_and_overlapping_batches_do_not_change_stats(
    store_url: str, compact_every: int
) -> None:
    with open_store(store_url, compact_every=compact_every) as s:
        half = len(ROWS) // 2
        s.write_batch(scored_batch(ROWS[:half]))
        before = s.stats(T0, T0 + timedelta(days=3))
        s.write_batch(scored_batch(ROWS[:half]))
        assert s.stats(T0, T0 + timedelta(days=3)) == before
        # Overlapping: the first half again plus the rest; only the rest counts.
        s.write_batch(scored_batch(ROWS))
        s.write_batch(scored_batch(ROWS[half - 10 :]))
        check_stats(s, ROWS, T0, T0 + timedelta(days=3))
        assert s.count("transactions") == len(ROWS)
        assert s.count("alerts") == len(ALERTS)
    with open_store(store_url) as s:  # after the deltas were folded at close
        check_stats(s, ROWS, T0, T0 + timedelta(days=3))


def test_duplicate_ids_within_a_batch_keep_the_first_row(store_url: str) -> None:
    rows = [
        Row(id="d", ts=T0, risk="HIGH", action="alert", merchant="first"),
        Row(id="d", ts=T0, risk="LOW", action="approve", merchant="second"),
        Row(id="e", ts=T0),
    ]
    with open_store(store_url) as s:
        s.write_batch(scored_batch(rows))
        assert s.query("SELECT merchant_id FROM transactions ORDER BY transaction_id") == [
            ("first",),
            ("m1",),
        ]
        assert s.count("alerts") == 1
        assert s.stats(T0, T0 + timedelta(hours=1)).transactions == 2


@pytest.mark.parametrize(("history_mode", "n"), [("alerts", "alerts"), ("none", 0)])
def test_stats_with_partial_history(store_url: str, history_mode: str, n) -> None:
    with open_store(store_url) as s:
        for _ in range(2):
            s.write_batch(scored_batch(ROWS), history=history_mode)
        st = s.stats(T0, T0 + timedelta(days=3))
        assert st.alerts == len(ALERTS)
        assert st.transactions == (len(ALERTS) if n == "alerts" else 0)


def test_empty_window_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="empty"):
        store.stats(T0, T0)


# -- model versions and audit -----------------------------------------------------------------


def test_model_versions_are_recorded(store: Store) -> None:
    assert [v.version for v in store.model_versions()] == ["v1", "v2"]
    store.record_model_version("v2", {"feature_names": ["x"], "threshold": 0.99})
    store.record_model_version("v3", {"kind": "gbt"})
    versions = {v.version: v for v in store.model_versions()}
    assert versions["v2"].metadata == {"feature_names": ["x"], "threshold": 0.99}
    assert versions["v3"].metadata == {"kind": "gbt"}
    assert versions["v1"].first_seen <= versions["v3"].first_seen
    assert [e.target for e in store.audit_log(action="model_version.record")] == ["v3", "v2"]


def test_audit_log_is_append_only_and_filtered(store: Store) -> None:
    ids = [
        store.audit("alice", "rule.change", "critical_high_value", {"amount_gte": 4000}),
        store.audit("bob", "rule.change", "auto_approve_small"),
        store.audit("alice", "export", None, {"rows": 10}),
    ]
    assert ids == sorted(ids)
    assert [e.id for e in store.audit_log(actor="alice")] == [ids[2], ids[0]]
    assert [e.target for e in store.audit_log(action="rule.change", limit=1)] == [
        "auto_approve_small"
    ]
    (entry,) = store.audit_log(target="critical_high_value")
    assert entry.details == {"amount_gte": 4000} and entry.actor == "alice"
    assert entry.logged_at <= datetime.now(UTC)
    assert not hasattr(store, "delete_audit") and not hasattr(store, "update_audit")
    with pytest.raises(StoreError):
        store.audit("", "x", None)


@pytest.mark.postgres
def test_postgres_audit_log_refuses_updates_and_deletes(pg_database: str) -> None:
    with open_store(pg_database) as s:
        s.audit("alice", "x", "y")
        for statement in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(StoreError, match="append-only"):
                s.query(statement)
        assert [e.actor for e in s.audit_log(action="x")] == ["alice"]


# -- concurrency ------------------------------------------------------------------------------


def test_reads_while_the_scorer_writes(store_url: str) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    totals: list[int] = []
    batches = [ROWS[i : i + 12] for i in range(0, len(ROWS), 12)]
    with open_store(store_url, compact_every=3) as s:

        def write() -> None:
            try:
                for b in batches:
                    s.write_batch(scored_batch(b))
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        def read() -> None:
            try:
                while not done.is_set():
                    totals.append(s.stats(T0, T0 + timedelta(days=3)).transactions)
                    ids = all_pages(s, AlertQuery(risk_levels=("HIGH",)), limit=5)
                    assert len(ids) == len(set(ids))
                    s.get_transaction(ROWS[0].id)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert totals == sorted(totals)
        assert all(t % 12 == 0 or t == len(ROWS) for t in totals)
        check_stats(s, ROWS, T0, T0 + timedelta(days=3))


def test_a_failed_fold_does_not_fail_the_write(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(store_url, compact_every=1) as s:

        def broken(*args: object, **kwargs: object) -> None:
            raise StoreError("database went away")

        # What the background fold calls on each backend.
        monkeypatch.setattr(
            s, "_fold" if store_url.startswith("duckdb:") else "_fold_deltas", broken
        )
        s.write_batch(scored_batch(ROWS[:40]))
        s.write_batch(scored_batch(ROWS[40:]))
        s.wait_folds()  # type: ignore[attr-defined]  # on both backends, not in Store
        monkeypatch.undo()
        check_stats(s, ROWS, T0, T0 + timedelta(days=3))  # read from the deltas
        s.compact()  # type: ignore[attr-defined]  # on both backends, not in Store
        check_stats(s, ROWS, T0, T0 + timedelta(days=3))
        assert s.count("transactions") == len(ROWS)
