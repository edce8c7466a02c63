"""Statistics for the dashboard, and the operational endpoints (health, readiness, metrics)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated

import anyio.to_thread
import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from txfast.api.auth import EXCLUDE_FROM_AUTH, OpenOperation, requires
from txfast.api.context import Ctx
from txfast.api.errors import bad_request, error_responses
from txfast.api.params import DATE_TIME, parse_date_time
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

    @get(
        "/",
        operation_id="getStats",
        summary="Dashboard statistics",
        responses=error_responses(400, 401, 503),
        sync_to_thread=True,
    )
    def stats(
        self,
        ctx: Ctx,
        days: Annotated[
            int, QueryParameter(ge=1, le=3660, description="Window length in UTC days, to until.")
        ] = 30,
        since: Annotated[
            str | None,
            QueryParameter(
                description="Window start, RFC 3339, no offset = UTC (default: until - days).",
                schema_extra=DATE_TIME,
            ),
        ] = None,
        until: Annotated[
            str | None,
            QueryParameter(
                description="Window end, exclusive (default: the end of today, UTC).",
                schema_extra=DATE_TIME,
            ),
        ] = None,
        top_merchants: Annotated[
            int, QueryParameter(ge=0, le=100, description="Merchants with the most alerts listed.")
        ] = 10,
    ) -> StatsOut:
        """Risk by country, merchant and hour of day; daily anomaly and false-positive rates.

        ``runtime`` carries the scorer's throughput and latency when the API runs in it.
        """
        start, end = parse_date_time("since", since), parse_date_time("until", until)
        if end is None:
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            end = today + timedelta(days=1)
        if start is None:
            start = end - timedelta(days=days)
        lo, hi = to_utc_naive(start), to_utc_naive(end)
        assert lo is not None and hi is not None
        if hi <= lo:
            raise bad_request("until", "must be after since")
        stats = ctx.require_store().stats(start, end, top_merchants=top_merchants)
        runtime = None
        if ctx.runtime_stats is not None:
            try:
                runtime = dict(ctx.runtime_stats())
            except Exception:  # the figures are optional; the statistics are not
                log.exception("runtime_stats failed")
        return StatsOut(**msgspec.structs.asdict(stats), runtime=runtime)


class SystemController(Controller):
    """Liveness, readiness and metrics: no key needed (probes and scrapers).

    ``opt`` lets their requests through without a key; ``operation_class`` says so in the
    schema (``security: []``).
    """

    path = "/"
    tags = ["system"]
    opt = EXCLUDE_FROM_AUTH

    @get(
        "/health",
        operation_id="health",
        summary="Liveness",
        operation_class=OpenOperation,
        sync_to_thread=False,
    )
    def health(self) -> Health:
        """The process answers (it does not look at the store or the model)."""
        return Health()

    @get(
        "/ready",
        operation_id="ready",
        summary="Readiness: store and champion model",
        operation_class=OpenOperation,
        responses={
            503: ResponseSpec(
                Readiness,
                description="Not ready: the store or the champion model failed (says which).",
                generate_examples=False,
            )
        },
    )
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
        operation_class=OpenOperation,
        sync_to_thread=False,
    )
    def metrics(self, ctx: Ctx) -> Response[bytes]:
        """Requests by route and status, request durations and the event stream's clients."""
        body = ctx.metrics.exposition()
        if ctx.scorer_metrics is not None:  # the API runs inside the scorer
            body += generate_latest(ctx.scorer_metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
