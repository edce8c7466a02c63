"""API keys and the live-feed reads of the store (schema v3), the same tests on DuckDB and
PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import T0, Row, history, scored_batch

from txfast.exceptions import NotFoundError, StoreError
from txfast.store import open_store


def test_api_keys_are_created_looked_up_listed_and_revoked(store_url: str) -> None:
    with open_store(store_url) as s:
        kid, token = s.create_api_key("alice", "analyst", actor="ops")
        other, token2 = s.create_api_key("  bob ", "viewer")
        assert token.startswith("txf_") and len(token) >= 40 and token != token2
        key = s.lookup_api_key(token)
        assert key is not None
        assert (key.id, key.name, key.role, key.created_by) == (kid, "alice", "analyst", "ops")
        assert not key.revoked and key.prefix == token[:10]
        assert key.created_at.tzinfo is not None
        bob = s.lookup_api_key(token2)
        assert bob is not None and bob.name == "bob"
        # Only the token's SHA-256 is stored, never the token.
        stored = s.query("SELECT token_sha256 FROM api_keys ORDER BY id")
        assert stored[0][0] == hashlib.sha256(token.encode()).hexdigest()
        dump = repr(s.query("SELECT * FROM api_keys"))
        assert token not in dump and token2 not in dump
        # Unknown, empty, tampered and absurd tokens match nothing.
        for bad in ("", "txf_nope", token[:-1], token + "x", "x" * 10_000):
            assert s.lookup_api_key(bad) is None
        assert [k.id for k in s.list_api_keys()] == [kid, other]
        # Revoking is idempotent and keeps the first revocation time.
        revoked = s.revoke_api_key(kid, actor="ops")
        assert revoked.revoked and revoked.revoked_at is not None
        again = s.revoke_api_key(kid, actor="ops")
        assert again.revoked_at == revoked.revoked_at
        looked = s.lookup_api_key(token)
        assert looked is not None and looked.revoked
        assert [k.revoked for k in s.list_api_keys()] == [True, False]
        with pytest.raises(NotFoundError):
            s.revoke_api_key(999)
        # A revoked key's name can be reused; an active one's cannot.
        with pytest.raises(StoreError, match="already named 'bob'"):
            s.create_api_key("bob", "admin")
        reused, _ = s.create_api_key("alice", "admin")
        assert reused not in (kid, other)
        # Every change is audited, with the actor given.
        audit = s.audit_log(target=f"api_key:{kid}")
        assert [(e.actor, e.action) for e in audit] == [
            ("ops", "api_key.revoke"),
            ("ops", "api_key.create"),
        ]
        assert audit[1].details == {"name": "alice", "role": "analyst"}
    with open_store(store_url) as s:  # durable
        assert [k.name for k in s.list_api_keys()] == ["alice", "bob", "alice"]


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("x", "root", "unknown role 'root'"),
        ("", "viewer", "a name"),
        ("   ", "viewer", "a name"),
        ("a" * 101, "viewer", "a name"),
        ("tab\there", "viewer", "printable"),
    ],
)
def test_api_key_arguments_are_checked(store_url: str, name: str, role: str, message: str) -> None:
    with open_store(store_url) as s:
        with pytest.raises(StoreError, match=message):
            s.create_api_key(name, role)
        assert s.list_api_keys() == []


def test_alerts_since_reads_by_creation_time_in_pages(store_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    rows = [
        Row(id=f"a{i:02d}", ts=T0 + timedelta(hours=i), risk="HIGH", action="alert", created=c)
        for i, c in enumerate([now - timedelta(seconds=5)] * 3 + [now] * 4)
    ]
    with open_store(store_url) as s:
        assert s.latest_alert_time() is None
        assert s.alerts_since(now - timedelta(days=1)) == []
        s.write_batch(scored_batch(history(days=1)))  # created at their event times (2026-03)
        s.write_batch(scored_batch(rows))
        assert s.latest_alert_time() == now.replace(tzinfo=UTC)
        got = s.alerts_since(now - timedelta(seconds=5))
        assert [a.transaction_id for a in got] == [r.id for r in rows]
        assert [a.transaction_id for a in s.alerts_since(now)] == ["a03", "a04", "a05", "a06"]
        # Pages: after the last (created_at, id) seen.
        first = s.alerts_since(now - timedelta(seconds=5), limit=4)
        assert [a.transaction_id for a in first] == ["a00", "a01", "a02", "a03"]
        last = first[-1]
        rest = s.alerts_since(last.created_at, after_id=last.transaction_id, limit=4)
        assert [a.transaction_id for a in rest] == ["a04", "a05", "a06"]
        with pytest.raises(StoreError, match="limit"):
            s.alerts_since(now, limit=0)
        s.ping()
    with pytest.raises(StoreError):
        s.ping()  # closed
