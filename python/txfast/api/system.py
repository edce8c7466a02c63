"""Statistics for the dashboard, and the operational endpoints (health, readiness, metrics)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated

import anyio.to_thread
import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.params import QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from txfast.api.auth import EXCLUDE_FROM_AUTH, requires
from txfast.api.context import Ctx
from txfast.api.errors import bad_request
from txfast.api.schemas import Health, Readiness, StatsOut
from txfast.exceptions import RegistryError, StoreError
from txfast.store.base import to_utc_naive

__all__ = ["StatsController", "SystemController"]

log = logging.getLogger("txfast.api")


class StatsController(Controller):
    """``/stats``: what the dashboard charts."""

    path = "/stats"
    tags = ["stats"]
    guards = [requires("viewer")]

    @get("/", operation_id="getStats", summary="Dashboard statistics", sync_to_thread=True)
    def stats(
        self,
        ctx: Ctx,
        days: Annotated[
            int, QueryParameter(ge=1, le=3660, description="Window length in UTC days, to until.")
        ] = 30,
        since: Annotated[
            datetime | None, QueryParameter(description="Window start (default: until - days).")
        ] = None,
        until: Annotated[
            datetime | None,
            QueryParameter(description="Window end, exclusive (default: the end of today, UTC)."),
        ] = None,
        top_merchants: Annotated[
            int, QueryParameter(ge=0, le=100, description="Merchants with the most alerts listed.")
        ] = 10,
    ) -> StatsOut:
        """Risk by country, merchant and hour of day; daily anomaly and false-positive rates.

        ``runtime`` carries the scorer's throughput and latency when the API runs in it.
        """
        if until is None:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            until = today + timedelta(days=1)
        if since is None:
            since = until - timedelta(days=days)
        lo, hi = to_utc_naive(since), to_utc_naive(until)
        assert lo is not None and hi is not None
        if hi <= lo:
            raise bad_request("until", "must be after since")
        stats = ctx.require_store().stats(since, until, top_merchants=top_merchants)
        runtime = None
        if ctx.runtime_stats is not None:
            try:
                runtime = dict(ctx.runtime_stats())
            except Exception:  # the figures are optional; the statistics are not
                log.exception("runtime_stats failed")
        return StatsOut(**msgspec.structs.asdict(stats), runtime=runtime)


class SystemController(Controller):
    """Liveness, readiness and metrics: no key needed (probes and scrapers)."""

    path = "/"
    tags = ["system"]
    opt = EXCLUDE_FROM_AUTH

    @get("/health", operation_id="health", summary="Liveness", sync_to_thread=False)
    def health(self) -> Health:
        """The process answers (it does not look at the store or the model)."""
        return Health()

    @get("/ready", operation_id="ready", summary="Readiness: store and champion model")
    async def ready(self, ctx: Ctx) -> Response[Readiness]:
        """200 when the store answers and the champion model loads, else 503 saying why."""

        def check() -> Readiness:
            store_state = model_state = "ok"
            store_ok = model_ok = True
            try:
                ctx.require_store().ping()
            except StoreError as e:
                store_ok, store_state = False, str(e)
            try:
                model_state = ctx.registry.load(ctx.settings.model_name).info.version
            except RegistryError as e:
                model_ok, model_state = False, str(e)
            return Readiness(ready=store_ok and model_ok, store=store_state, model=model_state)

        result = await anyio.to_thread.run_sync(check)
        return Response(result, status_code=200 if result.ready else 503)

    @get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics of the API",
        media_type=MediaType.TEXT,
        sync_to_thread=False,
    )
    def metrics(self, ctx: Ctx) -> Response[bytes]:
        """Requests by route and status, request durations and the event stream's clients."""
        body = ctx.metrics.exposition()
        if ctx.scorer_metrics is not None:  # the API runs inside the scorer
            body += generate_latest(ctx.scorer_metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
