"""One map from errors to HTTP responses; every error body is an :class:`ErrorBody`.

- invalid input (query, path, body) → 400, naming each field;
- unknown transaction, key or model version → 404;
- the store failing (closed, unreachable, a failed query) → 503;
- the model registry unreadable → 503;
- anything else → 500 with a generic message (the traceback goes to the log only).

:func:`error_responses` documents them in the OpenAPI schema, route by route.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import MediaType, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from txfast.api.schemas import ErrorBody, FieldError
from txfast.exceptions import InvalidCursorError, NotFoundError, RegistryError, StoreError

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

__all__ = ["EXCEPTION_HANDLERS", "bad_request", "error_responses", "status_of"]

log = logging.getLogger("txfast.api")

_ERRORS = {
    400: "Invalid input: a query or path parameter, or the body (`errors` names each field).",
    401: "Missing, malformed, unknown or revoked API key (with `WWW-Authenticate: Bearer`).",
    403: "The API key's role does not allow this operation.",
    404: "No such transaction, API key or model version.",
    409: "The model registry refused the change.",
    503: "The alert store or the model registry is unavailable.",
}
"""The error responses the routes document, and what each means."""


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """The OpenAPI ``responses`` of a route's possible errors (each an :class:`ErrorBody`).

    Litestar documents a 400 by itself on a route with parameters or a body, but as its own
    ``ValidationException`` body; listing 400 here documents the :class:`ErrorBody` the app
    answers instead.

    Args:
        status_codes: 400, 401, 403, 404, 409 or 503.
    """
    return {
        code: ResponseSpec(ErrorBody, description=_ERRORS[code], generate_examples=False)
        for code in status_codes
    }


def bad_request(field: str, message: str, source: str = "query") -> ValidationException:
    """A 400 naming ``field`` (raise it)."""
    return ValidationException(
        detail=f"{field}: {message}",
        extra=[{"key": field, "source": source, "message": message}],
    )


def status_of(exc: BaseException) -> int:
    """The status code the handlers answer ``exc`` with."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InvalidCursorError):
        return 400
    if isinstance(exc, StoreError | RegistryError):
        return 503
    return 500


def _respond(status: int, detail: str, errors: list[FieldError] | None = None, **kw: Any):
    return Response(
        ErrorBody(status_code=status, detail=detail, errors=errors),
        status_code=status,
        media_type=MediaType.JSON,
        **kw,
    )


def _validation(_: Request, exc: ValidationException) -> Response[ErrorBody]:
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict):
            errors.append(
                FieldError(
                    field=item.get("key") or None,
                    source=item.get("source"),
                    message=str(item.get("message", "invalid value")),
                )
            )
    if errors:
        detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    else:
        detail = exc.detail
    return _respond(400, detail, errors or None)


def _http(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    return _respond(exc.status_code, exc.detail, headers=exc.headers)


def _not_found(_: Request, exc: NotFoundError) -> Response[ErrorBody]:
    return _respond(404, str(exc))


def _cursor(_: Request, exc: InvalidCursorError) -> Response[ErrorBody]:
    message = str(exc)
    return _respond(
        400, f"cursor: {message}", [FieldError(field="cursor", source="query", message=message)]
    )


def _store(request: Request, exc: StoreError) -> Response[ErrorBody]:
    log.warning("%s %s: store error: %s", request.method, request.url.path, exc)
    return _respond(503, f"the alert store is unavailable: {exc}")


def _registry(request: Request, exc: RegistryError) -> Response[ErrorBody]:
    log.warning("%s %s: registry error: %s", request.method, request.url.path, exc)
    return _respond(503, f"the model registry is unavailable: {exc}")


def _internal(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _respond(500, "internal server error (logged on the server)")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ValidationException: _validation,
    HTTPException: _http,
    NotFoundError: _not_found,
    InvalidCursorError: _cursor,
    StoreError: _store,
    RegistryError: _registry,
    Exception: _internal,
}
"""The app's exception handlers (the most specific class of an exception wins)."""
