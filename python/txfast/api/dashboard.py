"""The analyst dashboard: one HTML page at ``/`` and its static files under ``/static/``.

The page is plain HTML, CSS and JavaScript shipped in the package (``txfast/api/static``),
with Chart.js vendored beside it (``static/vendor/chart.js``, MIT): nothing is fetched from
a CDN, so it works on a closed network. The page needs no key to load; it asks for one and
then calls the API with it (``Authorization: Bearer``), like any client.

Every response here carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only; no inline script) and is revalidated on each load
(``Cache-Control: no-cache``), so an upgraded server never mixes old and new files.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.router import Router
from litestar.static_files import create_static_files_router

from txfast.api.auth import EXCLUDE_FROM_AUTH

__all__ = ["CHART_JS_VERSION", "SECURITY_HEADERS", "STATIC_DIR", "DashboardController", "static"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The dashboard's files (in the wheel, as package data)."""

CHART_JS_VERSION = "4.6.1"
"""The vendored Chart.js (``static/vendor/chart.js``)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
"""Headers of the page and its files."""

_NO_CACHE = CacheControlHeader(no_cache=True)


def _secure(response: Response) -> Response:
    """Add :data:`SECURITY_HEADERS` to a dashboard response (an ``after_request`` hook)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class DashboardController(Controller):
    """``GET /``: the dashboard page (no key needed to load it)."""

    path = "/"
    tags = ["dashboard"]
    opt = EXCLUDE_FROM_AUTH
    include_in_schema = False

    @get(
        "/",
        operation_id="dashboard",
        summary="The analyst dashboard (HTML)",
        media_type=MediaType.HTML,
        cache_control=_NO_CACHE,
        after_request=_secure,
        sync_to_thread=True,
    )
    def index(self) -> Response[bytes]:
        """The single page; it loads ``static/app.js``, which asks for an API key."""
        return Response((STATIC_DIR / "index.html").read_bytes(), media_type=MediaType.HTML)


def static() -> Router:
    """The router serving :data:`STATIC_DIR` under ``/static/`` (no key needed)."""
    return create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        name="dashboard-static",
        opt=EXCLUDE_FROM_AUTH,
        cache_control=_NO_CACHE,
        after_request=_secure,
        include_in_schema=False,
        tags=["dashboard"],
    )
