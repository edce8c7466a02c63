"""The API's own Prometheus metrics (``GET /metrics``): requests, their duration, the feed.

Each app has its own :class:`prometheus_client.CollectorRegistry`, so several apps in one
process (tests) never share counters. The scorer's metrics are a later addition.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from txfast.api.errors import status_of

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiMetrics"]


class ApiMetrics:
    """Counters of one app, and the ASGI middleware that feeds them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "txfast_api_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "txfast_api_request_duration_seconds",
            "Time to the response's first byte, by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "txfast_api_stream_clients",
            "Clients connected to GET /alerts/stream.",
            registry=self.registry,
        )
        self.stream_events = Counter(
            "txfast_api_stream_events",
            "Alerts sent to GET /alerts/stream clients.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting each routed HTTP request (route template as a label)."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":  # websockets: none yet
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            route = scope.get("path_template") or "unmatched"
            status = 500
            timed = False

            async def send_counted(message: Message) -> None:
                nonlocal status, timed
                if message["type"] == "http.response.start":
                    status = message["status"]
                    self.duration.labels(route).observe(time.perf_counter() - start)
                    timed = True
                await send(message)

            try:
                await app(scope, receive, send_counted)
            except Exception as e:  # answered by the exception handlers further out
                status = status_of(e)
                raise
            finally:
                if not timed:
                    self.duration.labels(route).observe(time.perf_counter() - start)
                self.requests.labels(scope.get("method", "?"), route, str(status)).inc()

        return counted
