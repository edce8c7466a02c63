"""The alerts API against a real store (DuckDB in a temporary file, and PostgreSQL) and a real
registry: every endpoint, role and error case; the live feed through a real HTTP server."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import TestClient
from store_helpers import T0, Row, history, scored_batch

from txfast.api import ApiServer, create_app
from txfast.api.commands import keys, serve
from txfast.api.stream import AlertBroadcaster
from txfast.config import load_settings
from txfast.exceptions import ConfigError
from txfast.registry import Registry
from txfast.store import Store, open_store

ROWS = history()
ALERTS = [r for r in ROWS if r.is_alert]
FEATURES = ("amount", "count_1h", "ratio")
EXPLAINED = Row(
    id="explained",
    ts=T0 + timedelta(days=2, hours=23, minutes=59),
    card="c9",
    risk="CRITICAL",
    action="block",
    score=0.999,
    explanation=json.dumps({"top": [{"feature": "amount", "contribution": 0.7}]}),
)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A store holding :data:`ROWS` (three batches) and :data:`EXPLAINED`."""
    with open_store(store_url) as s:
        for i in range(0, len(ROWS), 50):
            s.write_batch(scored_batch(ROWS[i : i + 50], feature_names=FEATURES))
        s.write_batch(scored_batch([EXPLAINED], feature_names=FEATURES))
        yield s


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    """A key of each role, by role (each key is named after its role's user)."""
    return {
        role: store.create_api_key(name, role)[1]
        for role, name in (("viewer", "vera"), ("analyst", "alice"), ("admin", "adam"))
    }


@pytest.fixture
def api_registry(registry: Path, tmp_path: Path) -> Path:
    """A copy of the session's registry (champion v1) with a second version, v2."""
    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    reg = Registry(root)
    v1 = reg.load("default")
    reg.register("default", v1.onnx_bytes, v1.metadata)
    return root


def make_app(store: Store, registry: Path, **options: Any) -> Litestar:
    settings = load_settings(env={}, overrides={"registry": str(registry)})
    return create_app(settings, store=store, **options)


@pytest.fixture
def client(store: Store, api_registry: Path) -> Iterator[TestClient]:
    with TestClient(make_app(store, api_registry)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def newest_first(rows: list[Row]) -> list[str]:
    return [r.id for r in sorted(rows, key=lambda r: (r.ts, r.id), reverse=True)]


def all_pages(c: TestClient, token: str, params: dict[str, Any], limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(200):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = c.get("/alerts", params=query, headers=auth(token))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [a["transaction_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


# -- authentication and roles -----------------------------------------------------------------


def test_requests_need_a_valid_key(client: TestClient, store: Store, tokens: dict) -> None:
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": f"Basic {tokens['viewer']}"},
        {"Authorization": "Bearer"},
        auth("txf_not-a-key"),
        auth(tokens["viewer"] + "x"),
    ):
        for method, path in (("GET", "/alerts"), ("GET", "/stats"), ("POST", "/keys")):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in r.json()["detail"] or "Authorization" in r.json()["detail"]
    # Probes, metrics and the schema need no key.
    for path in ("/health", "/ready", "/metrics", "/schema", "/schema/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_roles(client: TestClient, tokens: dict, api_registry: Path) -> None:
    t = next(r for r in ALERTS)
    label = {"label": "fraud"}
    # viewer: reads, cannot label, promote nor manage keys.
    v = auth(tokens["viewer"])
    for path in ("/alerts", f"/alerts/{t.id}", "/stats", "/models"):
        assert client.get(path, headers=v).status_code == 200, path
    r = client.post(f"/alerts/{t.id}/feedback", json=label, headers=v)
    assert r.status_code == 403
    assert r.json()["detail"] == "this needs the analyst role; key 'vera' has the viewer role"
    assert client.post("/models/v2/promote", headers=v).status_code == 403
    assert client.get("/keys", headers=v).status_code == 403
    # analyst: also labels; cannot promote nor manage keys.
    a = auth(tokens["analyst"])
    assert client.post(f"/alerts/{t.id}/feedback", json=label, headers=a).status_code == 201
    r = client.post("/models/v2/promote", headers=a)
    assert r.status_code == 403 and "admin role" in r.json()["detail"]
    assert client.post("/keys", json={"name": "x", "role": "viewer"}, headers=a).status_code == 403
    assert client.delete("/keys/1", headers=a).status_code == 403
    # admin: everything.
    d = auth(tokens["admin"])
    assert client.post(f"/alerts/{t.id}/feedback", json=label, headers=d).status_code == 201
    assert client.get("/keys", headers=d).status_code == 200
    assert Registry(api_registry).champion_version("default") == "v1"  # nothing promoted yet


# -- alert lists ------------------------------------------------------------------------------

FILTERS = [
    ({}, lambda r: True),
    ({"card": "c2"}, lambda r: r.card == "c2"),
    ({"user": "u1"}, lambda r: r.user == "u1"),
    ({"merchant": "m3"}, lambda r: r.merchant == "m3"),
    ({"country": "de"}, lambda r: r.country == "DE"),
    ({"risk": "HIGH"}, lambda r: r.risk == "HIGH"),
    ({"risk": ["HIGH", "CRITICAL"]}, lambda r: r.risk in ("HIGH", "CRITICAL")),
    ({"action": ["block", "review"]}, lambda r: r.action in ("block", "review")),
    ({"status": "open"}, lambda r: True),
    ({"status": "false_positive"}, lambda r: False),
    (
        {"since": (T0 + timedelta(days=1)).isoformat(), "until": "2026-03-02T12:00:00+00:00"},
        lambda r: T0 + timedelta(days=1) <= r.ts < T0 + timedelta(days=1, hours=12),
    ),
    (
        {"card": "c1", "risk": "CRITICAL", "merchant": "m1", "country": "DE"},
        lambda r: (r.card, r.risk, r.merchant, r.country) == ("c1", "CRITICAL", "m1", "DE"),
    ),
]


@pytest.mark.parametrize(("params", "keep"), FILTERS)
def test_list_filters_and_pages(client: TestClient, tokens: dict, params: dict, keep) -> None:
    expected = newest_first([r for r in [*ALERTS, EXPLAINED] if keep(r)])
    assert all_pages(client, tokens["viewer"], params, limit=7) == expected
    one = client.get("/alerts", params={**params, "limit": 500}, headers=auth(tokens["viewer"]))
    assert [a["transaction_id"] for a in one.json()["items"]] == expected
    assert one.json()["next_cursor"] is None


def test_list_by_score_and_item_shape(client: TestClient, tokens: dict) -> None:
    got = all_pages(client, tokens["viewer"], {"sort": "score", "risk": "HIGH"}, limit=5)
    high = [r for r in ALERTS if r.risk == "HIGH"]
    import numpy as np

    expected = sorted(high, key=lambda r: (float(np.float32(r.score)), r.id), reverse=True)
    assert got == [r.id for r in expected]
    r = client.get("/alerts", params={"limit": 1}, headers=auth(tokens["viewer"]))
    item = r.json()["items"][0]
    assert item["transaction_id"] == EXPLAINED.id
    assert item["ts"] == "2026-03-03T23:59:00Z"
    assert item["risk_level"] == "CRITICAL" and item["action"] == "block"
    assert item["rules"] == ["rule_critical"] and item["status"] == "open" and item["label"] is None
    assert set(item) >= {"card_id", "merchant_id", "country", "amount", "score", "model_version"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"risk": "SEVERE"}, "risk"),
        ({"risk": ["HIGH", "high"]}, "risk"),
        ({"action": "approve!"}, "action"),
        ({"status": "closed"}, "status"),
        ({"sort": "amount"}, "sort"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00"}, "until"),
        ({"until": "0.5"}, "until"),  # not epoch seconds: RFC 3339 only
        ({"since": "1772323200"}, "since"),
        ({"since": "2026-03-01"}, "since"),
        ({"since": "2026-03-02T00:00:00", "until": "2026-03-01T00:00:00"}, "until"),
        ({"country": "DEU"}, "country"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "x" * 600}, "cursor"),
    ],
)
def test_list_validation_names_the_field(
    client: TestClient, tokens: dict, params: dict, field: str
) -> None:
    r = client.get("/alerts", params=params, headers=auth(tokens["viewer"]))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status_code"] == 400
    assert body["detail"].startswith(f"{field}: ")
    assert [e["field"] for e in body["errors"]] == [field]


def test_a_cursor_of_another_sort_is_refused(client: TestClient, tokens: dict) -> None:
    v = auth(tokens["viewer"])
    cursor = client.get("/alerts", params={"limit": 2}, headers=v).json()["next_cursor"]
    assert cursor
    r = client.get("/alerts", params={"cursor": cursor, "sort": "score"}, headers=v)
    assert r.status_code == 400
    assert r.json()["detail"] == "cursor: the cursor was made for sort='time', not 'score'"


# -- details and feedback ---------------------------------------------------------------------


def test_alert_detail(client: TestClient, tokens: dict) -> None:
    v = auth(tokens["viewer"])
    r = client.get(f"/alerts/{EXPLAINED.id}", headers=v)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["is_alert"] and d["card_id"] == "c9" and d["risk_level"] == "CRITICAL"
    assert d["features"] == {"amount": 1.0, "count_1h": 2.0, "ratio": 3.0}
    assert d["explanation"] == {"top": [{"feature": "amount", "contribution": 0.7}]}
    assert d["rules"] == ["rule_critical"] and d["model_version"] == "v1"
    assert d["score"] == pytest.approx(0.999, abs=1e-6)
    assert d["labels"] == [] and d["audit"] == [] and d["label"] is None
    assert d["shadow_score"] is None and d["shadow_model_version"] is None
    # A scored transaction that did not alert, and one without an explanation.
    quiet = next(r for r in ROWS if not r.is_alert)
    q = client.get(f"/alerts/{quiet.id}", headers=v).json()
    assert not q["is_alert"] and q["features"] is None and q["explanation"] is None
    plain = client.get(f"/alerts/{ALERTS[0].id}", headers=v).json()
    assert plain["explanation"] is None and plain["features"]["amount"] == ALERTS[0].features[0]
    # Unknown ids (odd characters included) are 404 with a JSON detail.
    for tid in ("nope", "t99999", "%C3%A9t%C3%A9", "a%20b"):
        r = client.get(f"/alerts/{tid}", headers=v)
        assert r.status_code == 404, tid
        assert r.json()["detail"].startswith("no transaction ")


def test_feedback_is_stored_shown_and_audited(
    client: TestClient, store: Store, tokens: dict
) -> None:
    a = auth(tokens["analyst"])
    target = next(r for r in ALERTS if r.risk == "HIGH")
    r = client.post(
        f"/alerts/{target.id}/feedback",
        json={"label": "legit", "note": " known customer "},
        headers=a,
    )
    assert r.status_code == 201, r.text
    rec = r.json()
    assert (rec["transaction_id"], rec["label"], rec["analyst"], rec["note"]) == (
        target.id,
        "legit",
        "alice",
        "known customer",
    )
    # The detail shows the label, its history and the audit trail.
    d = client.get(f"/alerts/{target.id}", headers=auth(tokens["viewer"])).json()
    assert d["label"] == "legit" and d["status"] == "false_positive"
    assert [(x["label"], x["analyst"]) for x in d["labels"]] == [("legit", "alice")]
    assert [(e["actor"], e["action"]) for e in d["audit"]] == [("alice", "feedback")]
    assert d["audit"][0]["details"]["status"] == "false_positive"
    # Lists and training labels see it.
    listed = client.get(
        "/alerts", params={"status": "false_positive"}, headers=auth(tokens["viewer"])
    ).json()
    assert [x["transaction_id"] for x in listed["items"]] == [target.id]
    assert listed["items"][0]["label"] == "legit"
    labels = store.labels()
    assert labels["transaction_id"].to_pylist() == [target.id]
    assert labels["label"].to_pylist() == [0]
    # A later label wins; a missed fraud (no alert) can be labelled too.
    client.post(f"/alerts/{target.id}/feedback", json={"label": "fraud"}, headers=a)
    missed = next(r for r in ROWS if not r.is_alert)
    r = client.post(f"/alerts/{missed.id}/feedback", json={"label": "fraud"}, headers=a)
    assert r.status_code == 201
    table = store.labels()
    latest = dict(zip(table["transaction_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert latest == {target.id: 1, missed.id: 1}
    assert [e.actor for e in store.audit_log(action="feedback")] == ["alice"] * 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": "spam"}, "label"),
        ({"label": 1}, "label"),
        ({}, "label"),
        ({"label": "fraud", "note": "x" * 2001}, "note"),
        ({"label": "fraud", "note": 5}, "note"),
        ({"label": "fraud", "by": "mallory"}, "by"),
    ],
)
def test_feedback_validation_names_the_field(
    client: TestClient, tokens: dict, body: dict, field: str
) -> None:
    r = client.post(f"/alerts/{ALERTS[0].id}/feedback", json=body, headers=auth(tokens["analyst"]))
    assert r.status_code == 400, r.text
    assert field in r.json()["detail"]
    assert (
        client.get(f"/alerts/{ALERTS[0].id}", headers=auth(tokens["viewer"])).json()["labels"] == []
    )


def test_feedback_on_an_unknown_transaction_or_malformed_body(
    client: TestClient, tokens: dict
) -> None:
    a = auth(tokens["analyst"])
    r = client.post("/alerts/nope/feedback", json={"label": "fraud"}, headers=a)
    assert r.status_code == 404 and r.json()["detail"] == "no transaction 'nope'"
    r = client.post(
        f"/alerts/{ALERTS[0].id}/feedback",
        content=b"{not json",
        headers={**a, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "traceback" not in r.text.lower()


# -- statistics, models, keys, probes ---------------------------------------------------------


def test_stats(store: Store, api_registry: Path, tokens: dict) -> None:
    calls = []

    def runtime() -> dict[str, Any]:
        calls.append(1)
        return {"tx_per_s": 12_000.0, "latency_p99_ms": 40.0}

    window = {"since": T0.isoformat(), "until": (T0 + timedelta(days=3)).isoformat()}
    with TestClient(make_app(store, api_registry, runtime_stats=runtime)) as c:
        r = c.get("/stats", params={**window, "top_merchants": 3}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    st = r.json()
    everything = [*ROWS, EXPLAINED]
    assert st["transactions"] == len(everything)
    assert st["alerts"] == len(ALERTS) + 1
    assert st["since"] == "2026-03-01T00:00:00Z" and st["until"] == "2026-03-04T00:00:00Z"
    assert [b["key"] for b in st["by_hour"]] == list(range(24))
    assert len(st["by_merchant"]) == 3
    assert {b["key"] for b in st["by_country"]} == {"FR", "DE", "ES", ""}
    assert set(st["by_country"][0]["by_risk"]) == {"LOW", "MEDIUM", "HIGH", "CRITICAL"}
    assert [d["day"] for d in st["daily"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert sum(d["alerts"] for d in st["daily"]) == st["alerts"]
    assert st["false_positives"] == []
    assert {m["model_version"] for m in st["by_model_version"]} == {"v1", "v2"}
    assert st["runtime"] == {"tx_per_s": 12_000.0, "latency_p99_ms": 40.0} and calls == [1]
    # Standalone (no runtime), the default window (the last 30 days: nothing here), a failing
    # runtime hook, and bad windows.
    with TestClient(make_app(store, api_registry, runtime_stats=lambda: 1 / 0)) as c:
        v = auth(tokens["viewer"])
        r = c.get("/stats", headers=v)
        assert r.status_code == 200 and r.json()["transactions"] == 0
        assert r.json()["runtime"] is None
        assert (
            c.get("/stats", params={"since": "2026-03-02", "until": "2026-03-01"}, headers=v)
        ).status_code == 400
        for bad in (
            {"days": 0},
            {"days": "x"},
            {"top_merchants": 101},
            {"until": "0.5"},
            {"since": "1772323200"},
        ):
            r = c.get("/stats", params=bad, headers=v)
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == next(iter(bad))


def test_models_and_promotion(client: TestClient, store: Store, tokens: dict, api_registry) -> None:
    v = auth(tokens["viewer"])
    m = client.get("/models", headers=v).json()
    assert m["name"] == "default" and m["champion"] == "v1"
    assert [(x["version"], x["is_champion"]) for x in m["versions"]] == [
        ("v1", True),
        ("v2", False),
    ]
    assert m["versions"][0]["kind"] and m["versions"][0]["features"] > 10
    assert [e["version"] for e in m["history"]] == ["v1"]
    d = auth(tokens["admin"])
    r = client.post("/models/v2/promote", headers=d)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "default", "champion": "v2", "previous": "v1"}
    assert Registry(api_registry).champion_version("default") == "v2"
    assert client.get("/models", headers=v).json()["champion"] == "v2"
    audit = store.audit_log(action="model.promote")
    assert [(e.actor, e.target, e.details["previous"]) for e in audit] == [
        ("adam", "model:default/v2", "v1")
    ]
    r = client.post("/models/v7/promote", headers=d)
    assert r.status_code == 404 and "v7" in r.json()["detail"]
    r = client.post("/models/..%2F..%2Fetc/promote", headers=d)
    assert r.status_code in (400, 404)
    r = client.post("/models/latest/promote", headers=d)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "version"


def test_a_key_revoked_elsewhere_is_refused_once_its_cache_entry_expires(
    store: Store, api_registry: Path, tokens: dict
) -> None:
    """Valid keys are trusted for ``key_cache_s`` without a store read; a key revoked by
    another process (``txfast keys revoke``, here the store directly) is refused after that,
    and at once without the cache."""
    vera = next(k for k in store.list_api_keys() if k.name == "vera")
    with TestClient(make_app(store, api_registry, key_cache_s=0.5)) as c:
        assert c.get("/alerts", headers=auth(tokens["viewer"])).status_code == 200
        store.revoke_api_key(vera.id)
        t0 = time.monotonic()
        r = c.get("/alerts", headers=auth(tokens["viewer"]))
        if time.monotonic() - t0 < 0.4:  # still within the entry's life
            assert r.status_code == 200, "the cached key is trusted until it expires"
        time.sleep(0.6)
        r = c.get("/alerts", headers=auth(tokens["viewer"]))
        assert r.status_code == 401 and r.json()["detail"] == "revoked API key"
    alice = next(k for k in store.list_api_keys() if k.name == "alice")
    with TestClient(make_app(store, api_registry, key_cache_s=0)) as c:
        assert c.get("/alerts", headers=auth(tokens["analyst"])).status_code == 200
        store.revoke_api_key(alice.id)
        assert c.get("/alerts", headers=auth(tokens["analyst"])).status_code == 401


def test_keys_endpoints(client: TestClient, store: Store, tokens: dict) -> None:
    d = auth(tokens["admin"])
    r = client.post("/keys", json={"name": "dash", "role": "viewer"}, headers=d)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"].startswith("txf_") and new["role"] == "viewer" and new["name"] == "dash"
    assert new["prefix"] == new["token"][:10]
    assert client.get("/alerts", headers=auth(new["token"])).status_code == 200
    listed = client.get("/keys", headers=d).json()
    assert [k["name"] for k in listed] == ["vera", "alice", "adam", "dash"]
    assert all("token" not in k and "token_sha256" not in k for k in listed)
    assert all(k["revoked_at"] is None for k in listed)
    # Taken names and bad roles are 400s naming the field.
    r = client.post("/keys", json={"name": "dash", "role": "admin"}, headers=d)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "name"
    r = client.post("/keys", json={"name": "x", "role": "root"}, headers=d)
    assert r.status_code == 400 and "role" in r.json()["detail"]
    r = client.post("/keys", json={"name": "", "role": "viewer"}, headers=d)
    assert r.status_code == 400 and "name" in r.json()["detail"]
    # Revoking: the token stops working; unknown ids are 404.
    r = client.delete(f"/keys/{new['id']}", headers=d)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.get("/alerts", headers=auth(new["token"])).status_code == 401
    assert client.delete("/keys/999", headers=d).status_code == 404
    assert client.delete("/keys/abc", headers=d).status_code in (400, 404)
    audit = store.audit_log(target=f"api_key:{new['id']}")
    assert [(e.actor, e.action) for e in audit] == [
        ("adam", "api_key.revoke"),
        ("adam", "api_key.create"),
    ]


def test_ready(store: Store, api_registry: Path, tmp_path: Path, tokens: dict) -> None:
    with TestClient(make_app(store, api_registry)) as c:
        r = c.get("/ready")
        assert r.status_code == 200 and r.json() == {"ready": True, "store": "ok", "model": "v1"}
        assert c.get("/health").json() == {"status": "ok"}
    # No champion: an empty registry, then a model whose champion pointer is missing.
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(make_app(store, empty)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["store"] == "ok"
        assert "unknown model 'default'" in r.json()["model"]
    (api_registry / "default" / "CHAMPION").unlink()
    with TestClient(make_app(store, api_registry)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "no champion" in r.json()["model"]


def test_a_closed_store_is_503_not_500(store_url: str, api_registry: Path, tmp_path) -> None:
    s = open_store(store_url)
    _, token = s.create_api_key("vera", "viewer")
    app = make_app(s, api_registry)
    with TestClient(app) as c:
        assert c.get("/alerts", headers=auth(token)).status_code == 200
        s.close()
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["model"] == "v1"
        assert "closed" in r.json()["store"] or "pool" in r.json()["store"]
        for path in ("/alerts", "/stats", "/alerts/x"):
            r = c.get(path, headers=auth(token))
            assert r.status_code == 503, (path, r.text)
            assert r.json()["detail"].startswith("the alert store is unavailable")
        assert c.get("/health").status_code == 200


def test_the_app_opens_and_closes_its_own_store(tmp_path: Path, api_registry: Path) -> None:
    url = f"duckdb:{tmp_path / 'own.duckdb'}"
    with open_store(url) as s:
        s.write_batch(scored_batch(ROWS[:30]))
        _, token = s.create_api_key("vera", "viewer")
    settings = load_settings(env={}, overrides={"store": url, "registry": str(api_registry)})
    with TestClient(create_app(settings)) as c:
        r = c.get("/alerts", params={"limit": 500}, headers=auth(token))
        assert r.status_code == 200
        assert len(r.json()["items"]) == sum(r.is_alert for r in ROWS[:30])
    with open_store(url) as s:  # closed at shutdown: the file opens again
        assert s.count("transactions") == 30


def test_metrics_count_requests(client: TestClient, tokens: dict) -> None:
    v = auth(tokens["viewer"])
    for _ in range(3):
        client.get("/alerts", headers=v)
    client.get("/alerts", params={"limit": 0}, headers=v)
    client.get("/alerts")
    client.get("/alerts/nope", headers=v)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'txfast_api_requests_total{method="GET",route="/alerts",status="200"} 3.0' in text
    assert 'txfast_api_requests_total{method="GET",route="/alerts",status="400"} 1.0' in text
    assert 'txfast_api_requests_total{method="GET",route="/alerts",status="401"} 1.0' in text
    route = "/alerts/{transaction_id}"
    assert f'txfast_api_requests_total{{method="GET",route="{route}",status="404"}} 1.0' in text
    assert "txfast_api_request_duration_seconds_bucket" in text
    assert "txfast_api_stream_clients 0.0" in text


def test_openapi_schema(client: TestClient) -> None:
    r = client.get("/schema")
    assert r.status_code == 200
    schema = r.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [
        ("/alerts", "get"),
        ("/alerts/stream", "get"),
        ("/alerts/{transaction_id}", "get"),
        ("/alerts/{transaction_id}/feedback", "post"),
        ("/stats", "get"),
        ("/models", "get"),
        ("/models/{version}/promote", "post"),
        ("/keys", "post"),
        ("/keys/{key_id}", "delete"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], path
    params = {p["name"] for p in paths["/alerts"]["get"]["parameters"]}
    assert params >= {"card", "user", "merchant", "country", "risk", "action", "status"}
    assert params >= {"since", "until", "cursor", "limit", "sort"}
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    # The key everywhere but on the probes, which say they need none.
    assert schema["security"] == [{"apiKey": []}]
    for path, item in paths.items():
        for method, op in item.items():
            if path in ("/health", "/ready", "/metrics"):
                assert op["security"] == [], path
            else:
                assert "security" not in op, (method, path)  # the document's
                assert {"401", "503"} <= set(op["responses"]), (method, path)
            # Every error is documented as the body the API answers.
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/ready":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (method, path, code)
    assert set(paths["/models/{version}/promote"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "404",
        "409",
        "503",
    }
    assert set(paths["/ready"]["get"]["responses"]) == {"200", "503"}
    assert list(paths["/alerts/stream"]["get"]["responses"]["200"]["content"]) == [
        "text/event-stream"
    ]
    # The bodies refusing unknown fields say so; the promoted version's pattern is the API's.
    components = schema["components"]["schemas"]
    assert components["FeedbackIn"]["additionalProperties"] is False
    assert components["KeyIn"]["additionalProperties"] is False
    assert "additionalProperties" not in components["Alert"]
    (version,) = paths["/models/{version}/promote"]["post"]["parameters"]
    assert version["schema"]["pattern"] == "^v[1-9][0-9]{0,8}$"
    for name in ("since", "until"):
        (param,) = [p for p in paths["/stats"]["get"]["parameters"] if p["name"] == name]
        assert param["schema"]["format"] == "date-time"


def test_cors(store: Store, api_registry: Path, tokens: dict) -> None:
    origin = "https://dash.example"
    app = make_app(store, api_registry, cors_origins=[origin])
    with TestClient(app) as c:
        pre = c.options(
            "/alerts",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code in (200, 204)
        assert pre.headers["access-control-allow-origin"] == origin
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = c.get("/alerts", headers={**auth(tokens["viewer"]), "Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        other = c.get("/alerts", headers={**auth(tokens["viewer"]), "Origin": "https://evil"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(make_app(store, api_registry)) as c:  # no CORS unless configured
        r = c.get("/alerts", headers={**auth(tokens["viewer"]), "Origin": origin})
        assert "access-control-allow-origin" not in r.headers


# -- the live feed ----------------------------------------------------------------------------


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """``app`` served by uvicorn on a free local port, in a thread; yields its base URL."""
    with ApiServer(app, "127.0.0.1", 0) as server:
        yield server.url


class EventReader:
    """Reads server-sent events off a streaming response, with a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next(self, timeout: float) -> dict[str, str]:
        """The next event or comment block as a field → value dict (``:`` for a comment)."""
        deadline = time.monotonic() + timeout
        event: dict[str, str] = {}
        for line in self._lines:
            if time.monotonic() > deadline:
                break
            if line == "":
                if event:
                    return event
                continue
            name, _, value = line.partition(":")
            event[name or ":"] = value.removeprefix(" ")
        raise AssertionError(f"no event within {timeout} s (partial: {event})")

    def next_alert(self, timeout: float) -> dict[str, str]:
        """The next ``alert`` event, skipping comments, within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.next(left)
            if "id" in event:
                return event
        raise AssertionError(f"no alert within {timeout} s")


def test_the_stream_delivers_new_alerts(store: Store, api_registry: Path, tokens: dict) -> None:
    app = make_app(store, api_registry, stream_poll_s=0.05, stream_keepalive_s=0.5)
    now = datetime.now(UTC).replace(tzinfo=None)
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        r = http.get("/alerts/stream")
        assert r.status_code == 401
        with http.stream(
            "GET", "/alerts/stream", params={"risk": "HIGH"}, headers=auth(tokens["viewer"])
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = EventReader(resp)
            assert events.next(5)[":"] == "connected"  # subscribed: the poller has started
            # Nothing stored before the subscription is sent; a quiet stream keeps alive.
            assert events.next(3) == {":": "keep-alive"}
            written = time.monotonic()
            store.write_batch(
                scored_batch(
                    [
                        Row(id="live-crit", ts=T0, risk="CRITICAL", action="block", created=now),
                        Row(id="live-high", ts=T0, risk="HIGH", action="alert", created=now),
                        Row(id="live-low", ts=T0, risk="LOW", created=now),
                    ]
                )
            )
            got = events.next_alert(5)
            assert time.monotonic() - written < 2.0
            assert got["event"] == "alert" and got["id"] == "live-high"
            alert = json.loads(got["data"])
            assert alert["transaction_id"] == "live-high" and alert["risk_level"] == "HIGH"
            assert alert["created_at"].startswith(now.strftime("%Y-%m-%dT%H:%M"))
            # A later batch, with an alert created earlier than the newest seen (a late
            # commit): still sent, once; the CRITICAL one was filtered out.
            store.write_batch(
                scored_batch(
                    [
                        Row(
                            id="live-late",
                            ts=T0,
                            risk="HIGH",
                            action="review",
                            created=now - timedelta(milliseconds=500),
                        )
                    ]
                )
            )
            got = events.next_alert(5)
            assert got["id"] == "live-late"
            nxt = events.next(3)
            assert nxt == {":": "keep-alive"}, nxt
        metrics = http.get("/metrics").text
        assert "txfast_api_stream_events_total 2.0" in metrics


class _CommitsBetweenReads:
    """A store that commits a batch right after the feed poller's ids-only read."""

    def __init__(self, inner: Store, batches: list[list[Row]]) -> None:
        self.inner, self.batches = inner, batches

    def alert_feed(self, since: datetime, **kwargs: Any) -> Any:
        out = self.inner.alert_feed(since, **kwargs)
        if kwargs.get("ids_only") and self.batches:
            self.inner.write_batch(scored_batch(self.batches.pop(0)))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_the_poller_sends_alerts_committed_between_its_two_reads(store: Store) -> None:
    """The poller reads the lookback's ids, then the new alerts' JSON: an alert committed
    between the two reads is sent by this poll when it is newer than the first new one, by
    the next poll when older (a late commit), and never twice."""
    now = datetime.now(UTC).replace(tzinfo=None)
    feed = AlertBroadcaster(store)
    feed._cursor = feed._start_cursor()
    store.write_batch(
        scored_batch([Row(id="p-first", ts=T0, risk="HIGH", action="alert", created=now)])
    )
    between = [
        [
            Row(
                id="p-newer", ts=T0, risk="HIGH", action="alert", created=now + timedelta(seconds=1)
            ),
            Row(
                id="p-older", ts=T0, risk="HIGH", action="alert", created=now - timedelta(seconds=1)
            ),
        ]
    ]
    feed.store = _CommitsBetweenReads(store, between)  # type: ignore[assignment]
    assert [a.transaction_id for a in feed._poll()] == ["p-first", "p-newer"]
    assert [a.transaction_id for a in feed._poll()] == ["p-older"]
    assert feed._poll() == []
    sent = store.alerts_since(now - timedelta(seconds=2))
    assert sorted(a.transaction_id for a in sent) == ["p-first", "p-newer", "p-older"]


def test_a_store_write_in_this_process_wakes_the_feed_at_once(
    store: Store, api_registry: Path, tokens: dict
) -> None:
    """With a 30 s poll tick, an alert still arrives at once when the scorer in this process
    says it stored something (``alerts_stored``, as ``txfast run --api`` wires it)."""
    app = make_app(store, api_registry, stream_poll_s=30, stream_keepalive_s=60)
    ctx = app.state["ctx"]
    now = datetime.now(UTC).replace(tzinfo=None)
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        with http.stream("GET", "/alerts/stream", headers=auth(tokens["viewer"])) as resp:
            events = EventReader(resp)
            assert events.next(5)[":"] == "connected"
            for i in range(3):
                written = time.monotonic()
                store.write_batch(
                    scored_batch(
                        [Row(id=f"woke-{i}", ts=T0, risk="HIGH", action="alert", created=now)]
                    )
                )
                ctx.alerts_stored()
                got = events.next_alert(10)
                assert got["id"] == f"woke-{i}"
                assert time.monotonic() - written < 2.0, "delivered on the notice, not the tick"


def test_two_subscribers_share_one_poller(store: Store, api_registry: Path, tokens: dict) -> None:
    app = make_app(store, api_registry, stream_poll_s=0.05, stream_keepalive_s=0.5)
    now = datetime.now(UTC).replace(tzinfo=None)
    ctx = app.state["ctx"]
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        v = auth(tokens["viewer"])
        with (
            http.stream("GET", "/alerts/stream", headers=v) as one,
            http.stream("GET", "/alerts/stream", params={"risk": "CRITICAL"}, headers=v) as two,
        ):
            a, b = EventReader(one), EventReader(two)
            assert a.next(5)[":"] == "connected" and b.next(5)[":"] == "connected"
            assert ctx.broadcaster.subscribers == 2
            store.write_batch(
                scored_batch(
                    [
                        Row(id="s-high", ts=T0, risk="HIGH", action="alert", created=now),
                        Row(id="s-crit", ts=T0, risk="CRITICAL", action="block", created=now),
                    ]
                )
            )
            seen_a = [a.next_alert(5)["id"], a.next_alert(5)["id"]]
            assert seen_a == ["s-crit", "s-high"]  # by (created_at, id)
            assert b.next_alert(5)["id"] == "s-crit"
        deadline = time.monotonic() + 5
        while ctx.broadcaster.subscribers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctx.broadcaster.subscribers == 0  # disconnected clients are dropped


# -- commands ---------------------------------------------------------------------------------


def test_keys_commands(tmp_path: Path) -> None:
    url = f"duckdb:{tmp_path / 'k.duckdb'}"
    runner = CliRunner()
    r = runner.invoke(keys, ["list", "--store", url])
    assert r.exit_code == 0 and "no API keys" in r.output
    r = runner.invoke(keys, ["create", "--role", "admin", "--name", "ops", "--store", url])
    assert r.exit_code == 0, r.output
    token = r.output.splitlines()[1]
    assert token.startswith("txf_")
    r = runner.invoke(
        keys, ["create", "--role", "viewer", "--name", "dash", "--store", url, "--json"]
    )
    assert r.exit_code == 0, r.output
    dash = json.loads(r.output)
    assert dash["role"] == "viewer" and dash["token"].startswith("txf_")
    r = runner.invoke(keys, ["create", "--role", "root", "--name", "x", "--store", url])
    assert r.exit_code == 2 and "root" in r.output
    r = runner.invoke(keys, ["create", "--role", "viewer", "--name", "dash", "--store", url])
    assert r.exit_code == 1 and "already named 'dash'" in r.output
    r = runner.invoke(keys, ["list", "--store", url])
    assert r.exit_code == 0 and "ops" in r.output and "dash" in r.output
    assert token not in r.output and token[:10] in r.output
    r = runner.invoke(keys, ["revoke", str(dash["id"]), "--store", url])
    assert r.exit_code == 0 and "revoked API key 2" in r.output
    r = runner.invoke(keys, ["revoke", "99", "--store", url])
    assert r.exit_code == 1 and "no API key 99" in r.output
    r = runner.invoke(keys, ["list", "--store", url, "--json"])
    listed = [json.loads(line) for line in r.output.splitlines()]
    assert [(k["name"], k["revoked_at"] is None) for k in listed] == [
        ("ops", True),
        ("dash", False),
    ]
    with open_store(url) as s:
        key = s.lookup_api_key(token)
        assert key is not None and key.role == "admin" and not key.revoked
        assert {e.action for e in s.audit_log()} >= {"api_key.create", "api_key.revoke"}
        assert all(e.actor.startswith("cli") for e in s.audit_log(action="api_key.create"))


def test_serve_command_help() -> None:
    r = CliRunner().invoke(serve, ["--help"])
    assert r.exit_code == 0
    for option in ("--host", "--port", "--store", "--registry", "--config", "--cors-origin"):
        assert option in r.output


def test_api_server_reports_a_taken_port(store: Store, api_registry: Path) -> None:
    app = make_app(store, api_registry)
    with ApiServer(app, "127.0.0.1", 0) as first:
        assert httpx.get(f"{first.url}/health").json() == {"status": "ok"}
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            ApiServer(make_app(store, api_registry), "127.0.0.1", first.port).start()
    with socket.socket() as probe:  # stopped: the port is free again
        probe.bind(("127.0.0.1", first.port))
