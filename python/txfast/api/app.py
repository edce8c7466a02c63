"""The Litestar application: :func:`create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio.to_thread
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from prometheus_client import CollectorRegistry

from txfast.api.alerts import AlertsController
from txfast.api.auth import ApiKeyAuth
from txfast.api.context import ApiContext, RuntimeStats
from txfast.api.dashboard import DashboardController, static
from txfast.api.errors import EXCEPTION_HANDLERS
from txfast.api.keys import KeysController, MeController
from txfast.api.models import ModelsController
from txfast.api.schemas import ClosedStructSchemaPlugin
from txfast.api.system import StatsController, SystemController
from txfast.config import Settings
from txfast.registry import Registry
from txfast.store import Store, open_store

__all__ = ["create_app"]

log = logging.getLogger("txfast.api")


def _version() -> str:
    try:
        return version("txfast")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    registry: Registry | None = None,
    runtime_stats: RuntimeStats | None = None,
    scorer_metrics: CollectorRegistry | None = None,
    cors_origins: Sequence[str] | None = None,
    stream_poll_s: float = 0.25,
    stream_keepalive_s: float = 15.0,
    key_cache_s: float = 5.0,
    debug: bool = False,
) -> Litestar:
    """The alerts API (alerts, feedback, live feed, stats, models, keys) and the dashboard.

    The analyst dashboard is served at ``/`` (see :mod:`txfast.api.dashboard`).

    Args:
        settings: Where the store and the registry are (``store``, ``registry``,
            ``model_name``, ``store_migrate``).
        store: An open store to serve (the scorer's, when the API runs in it); the caller
            keeps closing it. Without it, the app opens ``settings.store`` at startup and
            closes it at shutdown.
        registry: The model registry (default: ``Registry(settings.registry)``).
        runtime_stats: Returns the scorer's throughput and latency figures, shown as
            ``runtime`` by ``GET /stats`` (``None`` when the API runs alone).
        scorer_metrics: The scorer's Prometheus registry (``txfast.metrics``), exposed by
            ``GET /metrics`` after the API's own metrics when the API runs in the scorer.
        cors_origins: Origins allowed to call the API from a browser (``["*"]`` for any);
            ``None``: no CORS headers (same-origin only).
        stream_poll_s: Seconds between the live feed's store polls.
        stream_keepalive_s: Seconds between keep-alive comments of a quiet live feed.
        key_cache_s: Seconds a valid API key is trusted without reading the store again; a
            key revoked by another process (``txfast keys revoke``) is refused at most this
            much later, one revoked through this app at once. 0: read on every request.
        debug: Litestar's debug mode (tracebacks in error responses: never in production).

    Returns:
        The ASGI application (serve it with uvicorn, or ``txfast serve``).
    """
    ctx = ApiContext(
        settings=settings,
        scorer_metrics=scorer_metrics,
        registry=registry if registry is not None else Registry(settings.registry),
        store=store,
        runtime_stats=runtime_stats,
        keepalive_s=stream_keepalive_s,
        poll_interval_s=stream_poll_s,
        key_cache_s=key_cache_s,
    )

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        opened = None
        if ctx.store is None:
            opened = await anyio.to_thread.run_sync(
                lambda: open_store(settings.store, migrate=settings.store_migrate)
            )
            ctx.store = opened
            log.info("API serving store %s", opened.url)
        try:
            yield
        finally:
            await ctx.close_stream()
            if opened is not None:
                ctx.store = None
                await anyio.to_thread.run_sync(opened.close)

    def provide_ctx() -> ApiContext:
        return ctx

    cors = None
    if cors_origins:
        cors = CORSConfig(
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
    openapi = OpenAPIConfig(
        title="txfast alerts API",
        version=_version(),
        description=(
            "Alerts, analyst feedback, the live alert feed, dashboard statistics, models and "
            "API keys. Send `Authorization: Bearer <token>` (`txfast keys create`)."
        ),
        path="/schema",
        render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"])],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key from `txfast keys create` or `POST /keys`.",
                )
            }
        ),
        # Every operation needs the key but the open ones (``security: []``, see OpenOperation).
        security=[{"apiKey": []}],
        use_handler_docstrings=True,
    )
    app = Litestar(
        route_handlers=[
            AlertsController,
            StatsController,
            ModelsController,
            KeysController,
            MeController,
            SystemController,
            DashboardController,
            static(),
        ],
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False, use_cache=True)},
        middleware=[
            ctx.metrics.middleware,
            DefineMiddleware(ApiKeyAuth, exclude=["^/schema"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        plugins=[ClosedStructSchemaPlugin()],
        lifespan=[lifespan],
        cors_config=cors,
        openapi_config=openapi,
        logging_config=None,
        debug=debug,
    )
    app.state["ctx"] = ctx
    return app
