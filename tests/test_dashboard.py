"""The analyst dashboard in a real headless Chromium (Debian's package, driven by Playwright).

The page is served by the real app (uvicorn in a thread) from the store of a real pipeline that
scores a simulated stream; the live test scores more of that stream while the page is open.

Chromium: ``TXFAST_CHROMIUM``, else ``scripts/chromium.sh`` (which installs Debian's
``chromium`` package when it is missing and runs as root). Without a browser the tests are
skipped, and fail when ``CI=true``. Screenshots go to ``TXFAST_ARTIFACTS`` (default: a
temporary directory, printed); with ``TXFAST_DOCS_DIR=docs`` the README's screenshots
(``dashboard.png``, ``alert-detail.png``) are written there too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
from store_helpers import Row, scored_batch

from txfast.api import ApiServer, create_app
from txfast.config import load_settings
from txfast.pipeline import Pipeline
from txfast.sources import FileSource, SourceBatch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chromium.sh"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1440, "height": 960}
LIVE_WITHIN_S = 2.0
BULK = 60
"""Synthetic alerts of one merchant (more than a page of 50) stored beside the real ones..."""
BULK_MERCHANT = "merch_090777"
BULK_QUIET = 2400
"""... among this many quiet transactions of the same day (a plausible anomaly rate)."""
COUNTRIES = ["NL", "FR", "DE", "GB", "ES", "BE", "IT"]

# -- the browser --------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose browser cannot be had."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"headless Chromium unavailable: {reason}", pytrace=False)
    pytest.skip(f"headless Chromium unavailable: {reason}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """A Chromium executable: ``TXFAST_CHROMIUM`` or the one scripts/chromium.sh provides."""
    given = os.environ.get("TXFAST_CHROMIUM", "").strip()
    if given:
        if not os.access(given, os.X_OK):
            _unavailable(f"TXFAST_CHROMIUM={given} is not an executable")
        return given
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"scripts/chromium.sh failed: {exc}")
    if proc.returncode != 0 or not proc.stdout.strip():
        _unavailable(f"scripts/chromium.sh exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """Headless Chromium under Playwright (its own browsers are never downloaded)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc}); pip install '.[test]'")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # playwright's Error: the binary does not start
            _unavailable(f"{chromium_path} does not start under Playwright: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (``TXFAST_ARTIFACTS``, else a new temporary directory)."""
    given = os.environ.get("TXFAST_ARTIFACTS", "").strip()
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="txfast-dashboard-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots in {path}")
    return path


# -- the served app -----------------------------------------------------------------------------


@dataclass
class Live:
    """The served dashboard over a real pipeline's store."""

    url: str
    pipe: Pipeline
    tokens: dict[str, str]
    rest: list[bytes]
    """Stream events not scored yet (the live test scores them)."""
    bulk_day: datetime

    def alert_ids(self, where: str = "TRUE", params: list[Any] | None = None) -> list[str]:
        """Alert ids matching a SQL condition, newest first (the list's order)."""
        rows = self.pipe.store.query(
            f"SELECT transaction_id FROM alerts WHERE {where} "
            "ORDER BY ts DESC, transaction_id DESC",
            params or [],
        )
        return [r[0] for r in rows]


@pytest.fixture(scope="module")
def live(
    history: Path, stream_events: list[bytes], registry: Path, tmp_path_factory
) -> Iterator[Live]:
    """The app serving a pipeline's DuckDB store: the first day of the stream scored, the
    rest left for the live test, plus a synthetic day before it with ``BULK`` alerts of merchant
    ``BULK_MERCHANT``."""
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = load_settings(
        env={}, overrides={"store": f"duckdb:{tmp / 'dash.duckdb'}", "registry": str(registry)}
    )
    pipe = Pipeline.from_settings(settings)
    pipe.warm(FileSource(history))
    split = len(stream_events) * 3 // 4
    pipe.process(SourceBatch(0, payloads=stream_events[:split]), "test")
    bulk_day = datetime(2026, 1, 10)
    levels = ["MEDIUM", "HIGH", "CRITICAL"]
    alerts = [
        Row(
            id=f"tx-bulk-{i:04d}",
            ts=bulk_day + timedelta(minutes=23 * i + 7),
            card=f"card_9{i % 7:05d}",
            user=f"user_9{i % 7:05d}",
            merchant=BULK_MERCHANT,
            country=COUNTRIES[i % 3],
            risk=levels[i % 3],
            action="block" if levels[i % 3] == "CRITICAL" else "alert",
            score=0.99 + i / 10_000,
            amount=round(180.0 + 37.5 * (i % 11), 2),
            explanation=json.dumps(
                {
                    "method": "path",
                    "units": "isolation depth",
                    "expected": -12.7,
                    "output": -8.1,
                    "top": [
                        {"feature": "amount", "value": 1.0, "contribution": 0.9},
                        {"feature": "count_1h", "value": 2.0, "contribution": -0.2},
                    ],
                }
            ),
        )
        for i in range(BULK)
    ]
    quiet = [
        Row(
            id=f"tx-quiet-{i:05d}",
            ts=bulk_day + timedelta(seconds=36 * i),
            card=f"card_8{i % 500:05d}",
            merchant=f"merch_8{i % 300:05d}",
            country=COUNTRIES[i % len(COUNTRIES)],
            amount=round(5.0 + (i * 13) % 300, 2),
            score=0.2,
        )
        for i in range(BULK_QUIET)
    ]
    pipe.store.write_batch(
        scored_batch(alerts + quiet, source="bulk", feature_names=("amount", "count_1h", "ratio"))
    )
    tokens = {
        role: pipe.store.create_api_key(name, role)[1]
        for role, name in (("viewer", "vera"), ("analyst", "alice"))
    }
    app = create_app(
        settings,
        store=pipe.store,
        runtime_stats=lambda: pipe.summary.as_dict(),
    )
    try:
        with ApiServer(app, "127.0.0.1", 0) as server:
            yield Live(server.url, pipe, tokens, stream_events[split:], bulk_day)
    finally:
        pipe.store.close()


class Page:
    """A fresh browser context and page, with its console errors and requests recorded."""

    def __init__(self, browser: Any, live: Live) -> None:
        self.live = live
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.hosts: set[str] = set()
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.hosts.add(urlsplit(r.url).netloc))

    def sign_in(self, role: str = "viewer") -> Any:
        page = self.page
        page.goto(self.live.url + "/")
        page.fill("#api-key", self.live.tokens[role])
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("#live-status[data-state=live]")
        return page

    def row_ids(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "#alerts-table tbody tr", "rows => rows.map(r => r.dataset.id)"
        )

    def apply(self) -> None:
        """Submit the filters and wait for the new list."""
        page = self.page
        before = page.evaluate("() => document.body.dataset.listLoaded")
        page.click("#filters button[type=submit]")
        page.wait_for_function(
            "before => document.body.dataset.listLoaded !== before",
            arg=before,
            polling=50,
            timeout=5000,
        )

    def table(self, selector: str) -> list[list[str]]:
        """The text of a data table's body rows."""
        return self.page.eval_on_selector_all(
            f"{selector} tbody tr",
            "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))",
        )


@pytest.fixture
def ui(browser: Any, live: Live, artifacts: Path, request: pytest.FixtureRequest):
    """A page of the dashboard; its screenshot is saved as an artifact at the end."""
    p = Page(browser, live)
    try:
        yield p
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            p.page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
        finally:
            p.context.close()


def wait_rows(page: Any, predicate: str, timeout: float = 5000) -> None:
    """Wait until ``predicate`` (JS, over the row elements ``rows``) holds."""
    page.wait_for_function(
        f"() => {{ const rows = [...document.querySelectorAll('#alerts-table tbody tr')]; "
        f"return {predicate}; }}",
        polling=50,
        timeout=timeout,
    )


def docs_copy(src: Path, name: str) -> None:
    """Copy a screenshot into ``TXFAST_DOCS_DIR`` when set (the README's pictures).

    With Pillow at hand (the ``train`` extra), the copy is reduced to a 256-colour palette:
    the same picture at a third of the size.
    """
    docs = os.environ.get("TXFAST_DOCS_DIR", "").strip()
    if not docs:
        return
    dest = Path(docs) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(src, dest)
        return
    with Image.open(src) as img:
        img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=1).save(
            dest, optimize=True
        )


# -- serving (no browser) -----------------------------------------------------------------------


def test_the_page_and_its_files_need_no_key_and_are_locked_down(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from txfast.api.dashboard import CHART_JS_VERSION, STATIC_DIR

    settings = load_settings(
        env={},
        overrides={"store": f"duckdb:{tmp_path / 's.duckdb'}", "registry": str(tmp_path)},
    )
    with TestClient(create_app(settings)) as c:
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
        assert len(assets) == 4
        for asset in assets:  # relative: the page also works behind a path prefix
            r = c.get(f"/{asset}")
            assert r.status_code == 200, asset
            assert r.headers["content-security-policy"] == csp
            assert r.content == (STATIC_DIR / asset.removeprefix("static/")).read_bytes()
        chart = c.get("/static/vendor/chart.js/chart.umd.min.js")
        assert f"Chart.js v{CHART_JS_VERSION}" in chart.text[:200]
        assert chart.headers["content-type"].startswith("text/javascript")
        assert c.get("/static/vendor/chart.js/LICENSE.md").status_code == 200
        for path in ("/static/nope.js", "/static/../dashboard.py", "/static/%2e%2e/app.py"):
            assert c.get(path).status_code == 404, path
        # The page is not part of the API's schema; /me is.
        paths = c.get("/schema/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/static") for p in paths)
        assert "get" in paths["/me"]


def test_me_names_the_calling_key(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from txfast.store import open_store

    url = f"duckdb:{tmp_path / 's.duckdb'}"
    with open_store(url) as store:
        _, token = store.create_api_key("alice", "analyst")
        settings = load_settings(env={}, overrides={"registry": str(tmp_path)})
        with TestClient(create_app(settings, store=store)) as c:
            r = c.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            me = r.json()
            assert (me["name"], me["role"], me["prefix"]) == ("alice", "analyst", token[:10])
            assert token not in r.text
            assert c.get("/me").status_code == 401
            assert c.get("/me", headers={"Authorization": "Bearer txf_nope"}).status_code == 401


# -- in the browser -----------------------------------------------------------------------------


def test_the_page_loads_and_signs_in_without_console_errors(ui: Page, live: Live) -> None:
    page = ui.page
    response = page.goto(live.url + "/")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.title() == "txfast · alerts"
    assert page.is_visible("#login-form") and not page.is_visible("#app-view")
    page.fill("#api-key", live.tokens["viewer"])
    page.press("#api-key", "Enter")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#live-status[data-state=live]")
    assert page.inner_text("#who-name") == "vera (viewer)"
    # The newest 50 alerts, newest first, with their risk colours; more behind "Load more".
    ids = live.alert_ids()
    assert len(ids) > 50
    assert ui.row_ids() == ids[:50]
    assert page.is_visible("#more")
    first = page.locator("#alerts-table tbody tr").first
    risk = first.get_attribute("data-risk")
    assert first.get_attribute("class").split()[0] == f"risk-{risk}"
    assert first.locator(".badge").inner_text() == risk
    # Totals, charts and the header's model and runtime figures.
    page.wait_for_selector("body[data-stats-loaded]")
    n_tx = live.pipe.store.count("transactions")
    assert page.inner_text("[data-kpi=transactions] .value") == f"{n_tx:,}"
    assert page.inner_text("[data-kpi=alerts] .value") == f"{len(ids):,}"
    days = [r[0] for r in ui.table("#chart-daily details table")]
    assert days == ["2026-01-10", "2026-01-11", "2026-01-12"]
    assert len(ui.table("#chart-hour details table")) == 24
    assert BULK_MERCHANT in [r[0] for r in ui.table("#chart-merchant details table")]
    assert "NL" in [r[0] for r in ui.table("#chart-country details table")]
    for chart in ("daily", "country", "merchant", "hour"):
        assert page.evaluate(
            f"() => !!Chart.getChart(document.querySelector('#chart-{chart} canvas'))"
        )
    runtime = page.inner_text("#runtime")
    assert "model" in runtime and "v1" in runtime and "events" in runtime
    # The key lives in this tab's sessionStorage: a reload stays signed in; signing out forgets.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_visible("#app-view")
    page.click("#sign-out")
    assert page.is_visible("#login-form")
    assert page.evaluate("() => sessionStorage.length") == 0
    assert ui.errors == []
    assert ui.hosts == {urlsplit(live.url).netloc}, "no request leaves the server's origin"


def test_a_bad_key_is_refused(ui: Page, live: Live) -> None:
    page = ui.page
    page.goto(live.url + "/")
    page.fill("#api-key", "txf_not-a-key")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:not(:empty)")
    assert "not accepted" in page.inner_text("#login-error")
    assert not page.is_visible("#app-view")


def test_a_new_alert_appears_within_2_s_of_being_scored(ui: Page, live: Live) -> None:
    page = ui.sign_in("viewer")
    shown = set(ui.row_ids())
    chunks = [live.rest[i : i + 100] for i in range(0, len(live.rest), 100)]
    for position, chunk in enumerate(chunks):
        started = time.monotonic()
        result = live.pipe.process(SourceBatch(position, payloads=chunk), "live")
        alerts = result.stored.alerts
        if alerts.num_rows:
            break
    else:
        pytest.fail("the rest of the stream raised no alert")
    ids = alerts["transaction_id"].to_pylist()
    levels = dict(zip(ids, alerts["risk_level"].to_pylist(), strict=True))
    newest = ids[0]
    page.wait_for_selector(f'#alerts-table tbody tr[data-id="{newest}"]', timeout=5000)
    elapsed = time.monotonic() - started
    print(f"live alert shown {elapsed:.3f} s after its batch started scoring")
    assert elapsed <= LIVE_WITHIN_S, f"shown {elapsed:.2f} s after its transaction was scored"
    wait_rows(page, f"rows.length >= {len(shown) + len(ids)}")
    got = ui.row_ids()
    assert set(got[: len(ids)]) == set(ids), "live alerts go on top"
    assert set(got[len(ids) :]) == shown
    row = page.locator(f'#alerts-table tbody tr[data-id="{newest}"]')
    assert row.get_attribute("data-risk") == levels[newest]
    assert f"risk-{levels[newest]}" in row.get_attribute("class")
    assert "fresh" in row.get_attribute("class")
    assert ui.errors == []


def test_filters(ui: Page, live: Live) -> None:
    page = ui.sign_in("viewer")
    # Risk levels: only HIGH.
    for level in ("LOW", "MEDIUM", "CRITICAL"):
        page.uncheck(f"#filters input[name=risk][value={level}]")
    ui.apply()
    wait_rows(page, "rows.length > 0 && rows.every(r => r.dataset.risk === 'HIGH')")
    high = live.alert_ids("risk_level = 'HIGH'")
    assert ui.row_ids() == high[:50]
    # Highest score first.
    page.select_option("#filters select[name=sort]", "score")
    ui.apply()
    by_score = [
        r[0]
        for r in live.pipe.store.query(
            "SELECT transaction_id FROM alerts WHERE risk_level = 'HIGH' "
            "ORDER BY score DESC, transaction_id DESC LIMIT 50"
        )
    ]
    assert ui.row_ids() == by_score
    # A card (with every level again).
    page.click("#filters button[type=reset]")
    wait_rows(page, "rows.length >= 50")
    card = live.pipe.store.query(
        "SELECT card_id FROM alerts WHERE transaction_id NOT LIKE 'tx-bulk-%' "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )[0][0]
    page.fill("#filters input[name=card]", card)
    ui.apply()
    expected = live.alert_ids("card_id = ?", [card])
    wait_rows(page, f"rows.length === {len(expected)}")
    assert ui.row_ids() == expected
    assert set(
        page.eval_on_selector_all(
            "#alerts-table tbody tr td:nth-child(4)", "cells => cells.map(c => c.textContent)"
        )
    ) == {card}
    # A merchant with more than a page of alerts: keyset pagination with "Load more".
    page.fill("#filters input[name=card]", "")
    page.fill("#filters input[name=merchant]", BULK_MERCHANT)
    page.select_option("#filters select[name=window]", "all")
    ui.apply()
    bulk = live.alert_ids("merchant_id = ?", [BULK_MERCHANT])
    assert len(bulk) == BULK
    wait_rows(page, "rows.length === 50")
    assert page.is_visible("#more")
    page.click("#more")
    wait_rows(page, f"rows.length === {BULK}")
    assert ui.row_ids() == bulk
    assert not page.is_visible("#more")
    # Country (lower case is accepted) and a custom time window (UTC).
    page.fill("#filters input[name=merchant]", "")
    page.fill("#filters input[name=country]", "gb")
    page.select_option("#filters select[name=window]", "custom")
    page.fill("#filters input[name=since]", "2026-01-11T06:00")
    page.fill("#filters input[name=until]", "2026-01-11T18:00")
    ui.apply()
    expected = live.alert_ids(
        "country = 'GB' AND ts >= '2026-01-11 06:00:00' AND ts < '2026-01-11 18:00:00'"
    )
    assert expected
    wait_rows(page, f"rows.length === {len(expected)}")
    assert ui.row_ids() == expected
    # Nothing matches: a clear message. A bad country is refused before any request.
    page.select_option("#filters select[name=status]", "confirmed_fraud")
    ui.apply()
    wait_rows(page, "rows.length === 0")
    assert page.is_visible("#alerts-empty")
    page.fill("#filters input[name=country]", "G1")
    before = page.evaluate("() => document.body.dataset.listLoaded")
    page.click("#filters button[type=submit]")
    assert not page.eval_on_selector("#filters input[name=country]", "i => i.validity.valid")
    page.fill("#filters input[name=country]", "")
    for level in ("LOW", "MEDIUM", "HIGH", "CRITICAL"):
        page.uncheck(f"#filters input[name=risk][value={level}]")
    page.click("#filters button[type=submit]")
    assert "at least one level" in page.inner_text("#filter-error")
    page.wait_for_timeout(300)
    assert page.evaluate("() => document.body.dataset.listLoaded") == before
    assert ui.errors == []


def test_the_detail_view_shows_the_transaction_and_its_explanation(
    ui: Page, live: Live, artifacts: Path
) -> None:
    tid, rules = live.pipe.store.query(
        "SELECT transaction_id, rules FROM alerts WHERE explanation IS NOT NULL "
        "ORDER BY len(rules) DESC, score DESC LIMIT 1"
    )[0]
    detail = live.pipe.store.get_transaction(tid)
    assert detail is not None and detail.explanation and detail.features
    explanation = json.loads(detail.explanation)
    page = ui.sign_in("analyst")
    page.fill("#filters input[name=card]", detail.card_id)
    ui.apply()
    wait_rows(page, f"rows.some(r => r.dataset.id === {json.dumps(tid)})")
    page.click(f'#alerts-table tbody tr[data-id="{tid}"] a')
    page.wait_for_selector("#detail[open]")
    page.wait_for_selector("#explain-chart[data-rendered=true]")
    assert tid in page.inner_text("#detail-title")
    fields = page.inner_text("#detail-body .fields")
    for value in (detail.card_id, detail.merchant_id, detail.model_version, detail.action):
        assert value in fields
    # Features: a name/value table, the explained ones highlighted.
    features = ui.table("#features-table")
    assert [r[0] for r in features] == list(detail.features)
    top = {t["feature"] for t in explanation["top"]}
    highlighted = page.eval_on_selector_all(
        "#features-table tr.top td:first-child", "cells => cells.map(c => c.textContent)"
    )
    assert set(highlighted) == top
    # Rules fired.
    shown_rules = page.eval_on_selector_all("#rules li", "items => items.map(i => i.textContent)")
    assert shown_rules == list(rules)
    # The explanation: a bar per top feature, its contribution as the bar's value.
    bars = page.evaluate(
        "() => { const c = Chart.getChart(document.querySelector('#explain-chart canvas'));"
        " return c.data.labels.map((l, i) => [l, c.data.datasets[0].data[i]]); }"
    )
    assert {label: value for label, value in bars} == {
        t["feature"]: pytest.approx(t["contribution"]) for t in explanation["top"]
    }
    assert [r[0] for r in ui.table("#explain-table")] == [label for label, _ in bars]
    note = page.inner_text(".explain-note")
    assert explanation["method"] in note and "towards an anomaly" in note
    shot = artifacts / "alert-detail.png"
    page.screenshot(path=str(shot))
    docs_copy(shot, "alert-detail.png")
    # Closing, and opening by URL (#alert=ID), which is shareable.
    page.click("#detail-close")
    assert not page.is_visible("#detail")
    page.wait_for_function("() => location.hash === ''")  # closing leaves the alert's URL
    page.goto(f"{live.url}/#alert={tid}")
    page.wait_for_selector("#explain-chart[data-rendered=true]")
    assert tid in page.inner_text("#detail-title")
    assert ui.errors == []


def test_labelling_persists_and_changes_the_false_positive_trend(
    browser: Any, ui: Page, live: Live, artifacts: Path
) -> None:
    day = "2026-01-11"
    first, second = live.alert_ids(
        "CAST(ts AS DATE) = ? AND transaction_id NOT LIKE 'tx-bulk-%' AND transaction_id NOT IN "
        "(SELECT transaction_id FROM labels)",
        [day],
    )[:2]
    # A viewer cannot label: a clear message, nothing stored.
    viewer = Page(browser, live)
    try:
        vpage = viewer.sign_in("viewer")
        vpage.goto(f"{live.url}/#alert={first}")
        vpage.wait_for_selector("#label-legit")
        assert "viewer key" in vpage.inner_text(".label-box")
        vpage.click("#label-legit")
        vpage.wait_for_selector("#label-message.bad")
        message = vpage.inner_text("#label-message")
        assert "analyst" in message and "vera" in message and "viewer" in message
    finally:
        viewer.context.close()
    detail = live.pipe.store.get_transaction(first)
    assert detail is not None and detail.label is None

    page = ui.sign_in("analyst")
    page.wait_for_selector("body[data-stats-loaded]")

    def trend() -> dict[str, list[str]]:
        return {r[0]: r for r in ui.table("#chart-daily details table")}

    def fp_points() -> list[float | None]:
        return page.evaluate(
            "() => Chart.getChart(document.querySelector('#chart-daily canvas'))"
            ".data.datasets[1].data"
        )

    assert trend()[day][4:] == ["0", "–"]
    for tid, label, fp_rate in ((first, "legit", "100.00 %"), (second, "fraud", "50.00 %")):
        page.goto(f"{live.url}/#alert={tid}")
        page.wait_for_selector("#label-fraud")
        page.fill("#label-note", f"checked by the {label} test")
        page.click(f"#label-{label}")
        page.wait_for_selector("#label-message.ok")
        assert "Labelled" in page.inner_text("#label-message")
        # Stored, with the analyst's identity...
        stored = live.pipe.store.get_transaction(tid)
        assert stored is not None and stored.label == label
        assert [(x.analyst, x.note) for x in stored.labels] == [
            ("alice", f"checked by the {label} test")
        ]
        assert "alice" in page.inner_text("#detail-body .history")
        # ... and the false-positive trend follows.
        want = ["1" if label == "legit" else "2", fp_rate]
        deadline = time.monotonic() + 5
        while trend()[day][4:] != want and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert trend()[day][4:] == want
        assert float(fp_rate.split()[0]) in fp_points()
        assert page.inner_text("[data-kpi=fp-rate] .value") == fp_rate
        page.click("#detail-close")
    # The list shows the status; the status filter finds it.
    page.select_option("#filters select[name=status]", "false_positive")
    page.select_option("#filters select[name=window]", "all")
    ui.apply()
    wait_rows(page, "rows.length === 1")
    assert ui.row_ids() == [first]
    assert page.inner_text(f'tr[data-id="{first}"] td.status') == "false positive"
    # The README's picture: every alert, the live feed on, the trends with labels.
    page.select_option("#filters select[name=status]", "")
    page.select_option("#filters select[name=window]", "30d")
    ui.apply()
    wait_rows(page, "rows.length >= 50")
    page.evaluate("() => window.scrollTo(0, 0)")
    shot = artifacts / "dashboard.png"
    page.screenshot(path=str(shot))
    docs_copy(shot, "dashboard.png")
    assert ui.errors == []
