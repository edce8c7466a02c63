"""A property-based fuzz of the alerts API from its own OpenAPI schema (schemathesis).

The app is :func:`txfast.api.create_app` on a real DuckDB store holding a small varied history
(three days of alerts, labels written by the fuzz itself) and a real model registry. The
requests are generated from ``/schema/openapi.json`` (schemathesis' coverage phase: boundary
and invalid values of every parameter and body field, and its fuzzing phase: Hypothesis
examples, valid and invalid), sent in-process through the ASGI interface, with a fixed seed and
derandomized generation, so every run sends the same requests.

- ``test_fuzz``: authenticated as an admin (every route reachable), per operation: no 5xx, and
  every response matches the schema (body, content type, headers) where it is documented.
- ``test_every_protected_operation_needs_a_key``: the same generated requests without a key are
  401 everywhere but ``/health``, ``/ready`` and ``/metrics`` (``/schema`` is not in the schema).
- ``test_the_live_feed``: ``/alerts/stream`` never ends, so it is left out of the fuzz and
  checked here with deadlines, through a real server: 401, 400, then an event whose data matches
  the schema's ``Alert``; its documented media type is checked beside it.
- ``test_contract``: schemathesis' stricter contract checks: documented status codes, invalid
  input refused, valid input accepted, security as declared (the bearer key enforced where the
  schema asks for it, none asked where none is needed), unexpected methods refused.

schemathesis' pytest integration (``from_fixture``/``parametrize``) does not run on pytest 9.2
(it sets ``Function._nodeid``, which pytest 9.2 no longer has), so each test runs
schemathesis' engine (what ``schemathesis run`` runs) on the operations it covers and fails
with the failing requests as ``curl`` commands.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from litestar import Litestar
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from store_helpers import T0, Row, history, scored_batch

from txfast.api import ApiServer, create_app
from txfast.config import load_settings
from txfast.registry import Registry
from txfast.store import Store, open_store

SEED = 1
MAX_EXAMPLES = 40
"""Hypothesis examples per operation in the fuzzing phase (the coverage phase adds its own)."""

FEATURES = ("amount", "count_1h", "ratio")
OPEN = ("GET /health", "GET /ready", "GET /metrics")
"""Operations that need no key (``/schema`` itself is not in the schema)."""

OPERATIONS = [
    "GET /alerts",
    "GET /alerts/{transaction_id}",
    "POST /alerts/{transaction_id}/feedback",
    "GET /stats",
    "GET /models",
    "POST /models/{version}/promote",
    "POST /keys",
    "GET /keys",
    "DELETE /keys/{key_id}",
    *OPEN,
]
"""Every operation but ``GET /alerts/stream`` (an endless response: see test_the_live_feed)."""

UNEXPECTED_METHODS = ["get", "put", "post", "delete", "patch", "trace"]
"""Methods the coverage phase sends where they are not allowed (405 expected). Schemathesis' default
list also has OPTIONS, checked by ``test_contract`` (``unexpected-methods``)."""

STRICT_CHECKS = [
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "response_headers_conformance",
]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A DuckDB store holding three days of varied transactions and alerts."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    with open_store(f"duckdb:{path}") as s:
        rows = history()
        for i in range(0, len(rows), 50):
            s.write_batch(scored_batch(rows[i : i + 50], feature_names=FEATURES))
        yield s


@pytest.fixture(scope="module")
def fuzz_registry(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's registry (champion v1) with a second version, v2."""
    root = tmp_path_factory.mktemp("fuzz-registry") / "registry"
    shutil.copytree(registry, root)
    reg = Registry(root)
    v1 = reg.load("default")
    reg.register("default", v1.onnx_bytes, v1.metadata)
    return root


@pytest.fixture(scope="module")
def fuzz_key(fuzz_store: Store) -> tuple[int, str]:
    """The fuzz's admin key: its id and token."""
    return fuzz_store.create_api_key("fuzzer", "admin")


@pytest.fixture(scope="module")
def fuzz_app(fuzz_store: Store, fuzz_registry: Path) -> Iterator[Litestar]:
    settings = load_settings(env={}, overrides={"registry": str(fuzz_registry)})
    yield create_app(settings, store=fuzz_store)
    # schemathesis starts an app's lifespan on its first request and keeps it until exit.
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def openapi(fuzz_app: Litestar) -> dict[str, Any]:
    """The app's OpenAPI document."""
    return fuzz_app.openapi_schema.to_schema()


# -- running schemathesis ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one schemathesis run sent and found."""

    requests: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(operation, status code) → responses."""
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(operation, check, title) → message and the first failing request as curl."""
    errors: list[str] = field(default_factory=list)
    """Errors of schemathesis itself (a schema it cannot use, a crashed phase)."""

    def report(self) -> str:
        lines = [f"{len(self.failures)} failure(s), {len(self.errors)} error(s):"]
        for (op, check, title), detail in sorted(self.failures.items()):
            lines.append(f"- {op}: {check}: {title}\n    " + detail.replace("\n", "\n    "))
        lines += [f"- error: {e}" for e in self.errors]
        return "\n".join(lines)


def run_schemathesis(
    app: Litestar,
    *,
    checks: list[str],
    operations: list[str] | None = None,
    token: str | None = None,
    mode: str = "all",
    max_examples: int = MAX_EXAMPLES,
    unexpected_methods: list[str] = UNEXPECTED_METHODS,
    keep_key: int | None = None,
) -> Outcome:
    """Run schemathesis' coverage and fuzzing phases on ``operations`` of ``app``.

    Args:
        app: The app (its schema is read from ``/schema/openapi.json``).
        checks: The checks run on every response.
        operations: Labels (``"GET /alerts"``) of the operations to test; default all but the
            live feed.
        token: Sent as ``Authorization: Bearer`` with every request (none without).
        mode: ``positive`` (valid input), ``negative`` (invalid) or ``all``.
        max_examples: Examples per operation in the fuzzing phase.
        unexpected_methods: Methods sent where the schema allows none.
        keep_key: A key id never sent to ``DELETE /keys/{key_id}`` (the fuzz's own key).
    """
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {token}"} if token else {},
            "generation": {
                "mode": mode,
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": False},  # the schema has no examples
                "coverage": {"unexpected-methods": unexpected_methods},
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        }
    )
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app, config=config)
    wanted = set(operations or OPERATIONS)
    schema = schema.include(lambda ctx: ctx.operation.label in wanted)
    if keep_key is not None:

        @schema.hook
        def filter_path_parameters(ctx: Any, path_parameters: dict[str, Any] | None) -> bool:
            return not path_parameters or path_parameters.get("key_id") != keep_key

    out = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            rec = event.recorder
            for interaction in rec.interactions.values():
                out.requests += 1
                if interaction.response is not None:
                    out.statuses[(rec.label, interaction.response.status_code)] += 1
            for results in rec.checks.values():
                for check in results:
                    info = check.failure_info
                    if check.status != Status.FAILURE or info is None:
                        continue
                    key = (rec.label, check.name, info.failure.title)
                    out.failures.setdefault(key, f"{info.failure.message}\n{info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            out.errors.append(str(getattr(event, "info", event)))
    return out


# -- the fuzz ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_fuzz(
    fuzz_app: Litestar, fuzz_store: Store, fuzz_key: tuple[int, str], operation: str
) -> None:
    key_id, token = fuzz_key
    out = run_schemathesis(
        fuzz_app, checks=STRICT_CHECKS, operations=[operation], token=token, keep_key=key_id
    )
    assert not out.failures and not out.errors, out.report()
    assert out.requests >= 5, out.statuses
    # Authenticated: the fuzz reached the handlers (not only the key check).
    assert sum(n for (_, status), n in out.statuses.items() if status != 401) >= 5, out.statuses
    key = fuzz_store.lookup_api_key(token)
    assert key is not None and not key.revoked, "the fuzz revoked its own key"


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_protected_operation_needs_a_key(fuzz_app: Litestar, operation: str) -> None:
    out = run_schemathesis(
        fuzz_app,
        checks=["not_a_server_error"],
        operations=[operation],
        # Valid requests: an invalid path (say /keys/abc) matches no route, a 404 before the
        # key is looked at.
        mode="positive",
        max_examples=10,
        unexpected_methods=[],
    )
    assert not out.failures and not out.errors, out.report()
    # An open operation without parameters has a single valid request (sent by the coverage and
    # the fuzzing phases); the others vary their parameters.
    assert out.requests >= (2 if operation in OPEN else 3), out.statuses
    expected = {200} if operation in OPEN else {401}
    got = {status for _, status in out.statuses}
    assert got == expected, out.statuses


# -- the live feed, bounded -------------------------------------------------------------------


def _sse_events(response: httpx.Response, deadline: float) -> Iterator[dict[str, str]]:
    """Server-sent events (``:`` holds a comment) until ``deadline`` (time.monotonic)."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        else:
            name, _, value = line.partition(":")
            event[name or ":"] = value.removeprefix(" ")
        if time.monotonic() > deadline:
            return


def test_the_live_feed(
    fuzz_store: Store, fuzz_registry: Path, fuzz_key: tuple[int, str], openapi: dict[str, Any]
) -> None:
    settings = load_settings(env={}, overrides={"registry": str(fuzz_registry)})
    app = create_app(settings, store=fuzz_store, stream_poll_s=0.05, stream_keepalive_s=1.0)
    alert_schema = jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/Alert", "components": openapi["components"]}
    )
    auth = {"Authorization": f"Bearer {fuzz_key[1]}"}
    with ApiServer(app, "127.0.0.1", 0) as server, httpx.Client(base_url=server.url) as http:
        timeout = httpx.Timeout(5.0)
        r = http.get("/alerts/stream", timeout=timeout)
        assert r.status_code == 401 and r.json()["detail"].startswith("missing API key")
        r = http.get("/alerts/stream", params={"risk": "SEVERE"}, headers=auth, timeout=timeout)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "risk"
        with http.stream(
            "GET", "/alerts/stream", params={"risk": "HIGH"}, headers=auth, timeout=timeout
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            stream = _sse_events(resp, time.monotonic() + 10)
            assert next(stream)[":"] == "connected"
            now = datetime.now(UTC).replace(tzinfo=None)
            fuzz_store.write_batch(
                scored_batch(
                    [
                        Row(id="feed-crit", ts=T0, risk="CRITICAL", action="block", created=now),
                        Row(id="feed-high", ts=T0, risk="HIGH", action="alert", created=now),
                    ],
                    feature_names=FEATURES,
                )
            )
            event = next(e for e in stream if "id" in e)
        assert event["event"] == "alert" and event["id"] == "feed-high"
        alert = json.loads(event["data"])
        errors = [e.message for e in alert_schema.iter_errors(alert)]
        assert not errors, errors
        assert alert["transaction_id"] == "feed-high" and alert["risk_level"] == "HIGH"


def test_the_schema_documents_the_live_feed_as_an_event_stream(openapi: dict[str, Any]) -> None:
    content = openapi["paths"]["/alerts/stream"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


# -- the stricter contract checks -------------------------------------------------------------

CONTRACT = [
    pytest.param("status_code_conformance", {}, id="documented-status-codes"),
    pytest.param(
        "negative_data_rejection",
        {},
        id="invalid-input-refused",
    ),
    pytest.param(
        "positive_data_acceptance",
        # Not GET /alerts (an opaque cursor is valid only if the API made it), GET /stats (since
        # must precede until) nor POST /keys (names are unique): their 400s for schema-valid
        # input are by design.
        {
            "operations": [
                op for op in OPERATIONS if op not in ("GET /alerts", "GET /stats", "POST /keys")
            ]
        },
        id="valid-input-accepted",
    ),
    pytest.param("ignored_auth", {}, id="security-as-declared"),
    # OPTIONS on a protected route was a 500 (the role guard read request.user, which the
    # auth middleware does not set for OPTIONS); now a 401 like any request without a key.
    pytest.param(
        "unsupported_method",
        {"unexpected_methods": ["options", "delete", "patch", "put", "trace"]},
        id="unexpected-methods",
    ),
]


@pytest.mark.parametrize(("check", "options"), CONTRACT)
def test_contract(
    fuzz_app: Litestar,
    fuzz_key: tuple[int, str],
    check: str,
    options: dict[str, Any],
) -> None:
    key_id, token = fuzz_key
    out = run_schemathesis(
        fuzz_app,
        checks=[check, "not_a_server_error"],
        token=token,
        keep_key=key_id,
        max_examples=15,
        **options,
    )
    assert not out.failures and not out.errors, out.report()
    assert out.requests >= 20, out.statuses
