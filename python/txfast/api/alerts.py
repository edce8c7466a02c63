"""Alerts: the filtered list, one transaction's detail, analyst feedback, the live feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from txfast.api.auth import requires
from txfast.api.context import Ctx
from txfast.api.errors import bad_request, error_responses
from txfast.api.params import DATE_TIME, parse_date_time
from txfast.api.schemas import Action, AlertDetail, FeedbackIn, RiskLevel, Sort, Status
from txfast.exceptions import NotFoundError
from txfast.store import AlertPage, AlertQuery, ApiKey, LabelRecord
from txfast.store.base import to_utc_naive

__all__ = ["AlertsController"]

MAX_LIMIT = 500
"""Largest page of ``GET /alerts``."""

EVENT_STREAM = "text/event-stream"
"""The media type of ``GET /alerts/stream`` (server-sent events)."""


class AlertsController(Controller):
    """``/alerts``: list, detail, feedback and the live feed."""

    path = "/alerts"
    tags = ["alerts"]
    guards = [requires("viewer")]

    @get(
        "/",
        operation_id="listAlerts",
        summary="List alerts, newest (or highest score) first, with keyset pagination",
        responses=error_responses(400, 401, 503),
        sync_to_thread=True,
    )
    def list_alerts(
        self,
        ctx: Ctx,
        card: Annotated[str | None, QueryParameter(description="Only this card id.")] = None,
        user: Annotated[str | None, QueryParameter(description="Only this user id.")] = None,
        merchant: Annotated[
            str | None, QueryParameter(description="Only this merchant id.")
        ] = None,
        country: Annotated[
            str | None,
            QueryParameter(description="Only this country (ISO 3166-1 alpha-2).", max_length=2),
        ] = None,
        risk: Annotated[
            list[RiskLevel] | None,
            QueryParameter(
                description="Any of these risk levels (repeat: risk=HIGH&risk=CRITICAL)."
            ),
        ] = None,
        action: Annotated[
            list[Action] | None, QueryParameter(description="Any of these actions (repeatable).")
        ] = None,
        status: Annotated[
            list[Status] | None, QueryParameter(description="Any of these statuses (repeatable).")
        ] = None,
        since: Annotated[
            str | None,
            QueryParameter(
                description="Transactions at or after this time (RFC 3339; no offset = UTC).",
                schema_extra=DATE_TIME,
            ),
        ] = None,
        until: Annotated[
            str | None,
            QueryParameter(description="Transactions before this time.", schema_extra=DATE_TIME),
        ] = None,
        cursor: Annotated[
            str | None,
            QueryParameter(description="The next_cursor of the previous page.", max_length=512),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")] = 50,
        sort: Annotated[
            Sort, QueryParameter(description="time: newest first; score: highest score first.")
        ] = "time",
    ) -> AlertPage:
        """One page of alerts matching every filter given; ``next_cursor`` is null on the last."""
        start, end = parse_date_time("since", since), parse_date_time("until", until)
        lo, hi = to_utc_naive(start), to_utc_naive(end)
        if lo is not None and hi is not None and hi <= lo:
            raise bad_request("until", "must be after since")
        query = AlertQuery(
            card_id=card,
            user_id=user,
            merchant_id=merchant,
            country=country.upper() if country else None,
            risk_levels=tuple(dict.fromkeys(risk or ())),
            actions=tuple(dict.fromkeys(action or ())),
            statuses=tuple(dict.fromkeys(status or ())),
            since=start,
            until=end,
        )
        return ctx.require_store().list_alerts(query, limit=limit, cursor=cursor, sort=sort)

    @get(
        "/stream",
        operation_id="streamAlerts",
        summary="Server-sent events of the alerts stored from now on",
        media_type=EVENT_STREAM,
        responses={
            200: ResponseSpec(
                str,
                description="An endless `text/event-stream`: `alert` events, whose `data` is "
                "an `Alert` (JSON) and `id` its transaction id, and keep-alive comments.",
                media_type=EVENT_STREAM,
                generate_examples=False,
            ),
            **error_responses(400, 401, 503),
        },
    )
    async def stream(
        self,
        ctx: Ctx,
        risk: Annotated[
            list[RiskLevel] | None,
            QueryParameter(description="Only these risk levels (repeatable); default all."),
        ] = None,
    ) -> ServerSentEvent:
        """A ``text/event-stream`` of ``alert`` events.

        Each event's ``id`` is the transaction id and its ``data`` the alert as in
        ``GET /alerts``. The stream opens with a ``connected`` comment and sends a
        ``keep-alive`` comment every 15 s when quiet.
        """
        broadcaster, metrics = ctx.broadcaster, ctx.metrics
        sub = await broadcaster.subscribe(risk or ())

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            metrics.stream_clients.inc()
            try:
                yield ServerSentEventMessage(data=None, comment="connected", retry=2000)
                while True:
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), ctx.keepalive_s)
                    except TimeoutError:
                        yield ServerSentEventMessage(data=None, comment="keep-alive")
                        continue
                    if item is None:  # fell behind, or shutting down
                        return
                    metrics.stream_events.inc()
                    alert_id, data = item
                    yield ServerSentEventMessage(data=data, event="alert", id=alert_id)
            finally:
                metrics.stream_clients.dec()
                broadcaster.unsubscribe(sub)

        return ServerSentEvent(events())

    @get(
        "/{transaction_id:str}",
        operation_id="getAlert",
        summary="Everything stored about one transaction",
        responses=error_responses(400, 401, 404, 503),
        sync_to_thread=True,
    )
    def get_alert(self, ctx: Ctx, transaction_id: FromPath[str]) -> AlertDetail:
        """The transaction, its features, score, risk, rules, explanation, labels and audit."""
        detail = ctx.require_store().get_transaction(transaction_id)
        if detail is None:
            raise NotFoundError(f"no transaction {transaction_id!r}")
        return AlertDetail.of(detail)

    @post(
        "/{transaction_id:str}/feedback",
        operation_id="labelAlert",
        summary="Label a transaction fraud or legit (analyst)",
        guards=[requires("analyst")],
        status_code=201,
        responses=error_responses(400, 401, 403, 404, 503),
        sync_to_thread=True,
    )
    def feedback(
        self,
        ctx: Ctx,
        request: Request[ApiKey, Any, Any],
        transaction_id: FromPath[str],
        data: JSONBody[FeedbackIn],
    ) -> LabelRecord:
        """Record the label with the key's name as the analyst (and an audit entry)."""
        note = data.note.strip() if data.note else None
        try:
            return ctx.require_store().record_feedback(
                transaction_id, data.label, request.user.name, note or None
            )
        except NotFoundError:
            raise NotFoundError(f"no transaction {transaction_id!r}") from None
