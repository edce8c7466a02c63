"""Query parameters the handlers parse themselves, where Litestar's own parsing is too lax.

Litestar converts query values leniently (msgspec's ``strict=False``: the text of a query is
read as whatever the parameter's type needs), so a ``datetime`` parameter took ``until=0.5``
as 0.5 s after the epoch. The date-time parameters are therefore declared as text, documented
as ``format: date-time``, and parsed here strictly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from txfast.api.errors import bad_request

__all__ = ["DATE_TIME", "parse_date_time"]

DATE_TIME: dict[str, Any] = {"format": "date-time"}
"""``schema_extra`` of a date-time query parameter declared ``str | None``."""


def parse_date_time(field: str, value: str | None) -> datetime | None:
    """The date-time in a query parameter (``None`` when absent).

    Args:
        field: The parameter's name (for the error).
        value: Its text: RFC 3339 (``2026-03-01T00:00:00Z``, ``…+01:00``; a space may stand
            for the ``T``), or without an offset, read as UTC.

    Raises:
        ValidationException: A 400 naming ``field`` for anything else (an epoch number, a
            date alone, an invalid date).
    """
    if value is None:
        return None
    try:
        return msgspec.convert(value, datetime)  # strict: RFC 3339 text only
    except msgspec.ValidationError:
        raise bad_request(
            field, f"not an RFC 3339 date-time (e.g. 2026-03-01T00:00:00Z): {value!r}"
        ) from None
