"""The event contract of ``transactions_raw`` as msgspec Structs, and the reference decoder.

:class:`Transaction` documents the wire format (JSON, one object per message, key =
``card_id``). :func:`decode_event` validates one payload with plain Python and msgspec; it is
the executable specification of the native batch decoder (:class:`txfast.decode.Decoder`),
which applies the same rules straight into columns, and the tests check that both agree.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime

import msgspec

__all__ = [
    "CHANNELS",
    "CONTRACT_FIELDS",
    "MAX_TS_MS",
    "MIN_TS_MS",
    "REJECT_REASONS",
    "Rejection",
    "Transaction",
    "decode_event",
    "looks_like_pan",
]

CHANNELS = ("pos", "ecom", "atm", "moto", "transfer", "other")
"""Known channels; any other value is kept as is and coded as ``other`` for features."""

CONTRACT_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "card_id",
    "user_id",
    "amount",
    "currency",
    "merchant_id",
    "merchant_category",
    "country",
    "lat",
    "lon",
    "channel",
    "device_id",
    "label",
)
"""Fields of the event contract, in the order they are written to JSON."""

REJECT_REASONS = (
    "empty_message",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_timestamp",
    "invalid_amount",
    "unknown_currency",
    "pan_card_id",
    "invalid_value",
)
"""Stable reason codes of rejected events (dead letters)."""

MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_ID_LEN = 256


class Transaction(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One payment event as sent by upstream systems.

    Attributes:
        transaction_id: Unique id; the idempotency key everywhere.
        timestamp: Event time: epoch milliseconds, or ISO-8601 with an offset.
        card_id: Card token. A 13-19 digit Luhn-valid value (a raw card number) is rejected.
        amount: Amount in ``currency``; positive and finite.
        currency: ISO 4217 code present in the configured rates table.
        merchant_id: Merchant (or terminal) id.
        user_id: Account holder id, optional.
        merchant_category: MCC (four digits) or a category name, optional.
        country: ISO 3166-1 alpha-2 code, optional.
        lat: Latitude in degrees, optional; given together with ``lon``.
        lon: Longitude in degrees, optional.
        channel: ``pos``, ``ecom``, ``atm``, ``moto``, ``transfer`` or another value.
        device_id: Device fingerprint, optional.
        label: 1 fraud, 0 genuine; only in historical data used for training.
    """

    transaction_id: str
    timestamp: int | float | str
    card_id: str
    amount: float
    currency: str
    merchant_id: str
    user_id: str | None = None
    merchant_category: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    channel: str | None = None
    device_id: str | None = None
    label: int | bool | None = None


class Rejection(msgspec.Struct, frozen=True):
    """Why a payload was rejected."""

    reason: str
    message: str


class Normalized(msgspec.Struct, frozen=True, kw_only=True):
    """A validated event, normalised (upper-case codes, epoch ms, base-currency amount)."""

    transaction_id: str
    ts_ms: int
    card_id: str
    amount: float
    amount_base: float
    currency: str
    merchant_id: str
    user_id: str | None
    merchant_category: str | None
    country: str | None
    lat: float | None
    lon: float | None
    channel: str | None
    device_id: str | None
    label: int


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)$"
)


def _parse_iso(text: str) -> int:
    m = _ISO.match(_strip(text))
    if m is None:
        raise ValueError(
            f"timestamp {text!r} is not ISO-8601 with an offset (e.g. 2026-01-31T12:00:00Z)"
        )
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        base = datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59))
    except ValueError:
        raise ValueError(f"timestamp {text!r} has an out-of-range date or time field") from None
    if int(s) > 60:
        raise ValueError(f"timestamp {text!r} has an out-of-range date or time field")
    offset_min = 0
    if not z:
        oh_i, om_i = int(oh), int(om or 0)
        if oh_i > 23 or om_i > 59:
            raise ValueError(f"timestamp {text!r} is not ISO-8601 with an offset")
        offset_min = (oh_i * 60 + om_i) * (-1 if sign == "-" else 1)
    millis = int((frac or "0")[:3].ljust(3, "0"))
    epoch = datetime(1970, 1, 1)
    secs = (base - epoch).days * 86_400 + (base - epoch).seconds - offset_min * 60
    return secs * 1000 + millis


def looks_like_pan(value: str) -> bool:
    """True for 13-19 digits (spaces and dashes ignored) that pass the Luhn check."""
    if any(c not in "0123456789 -" for c in value):
        return False
    digits = [int(c) for c in value if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for k, d in enumerate(reversed(digits)):
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _required(value: str | None, field: str) -> str:
    if value is None:
        raise _Reject("missing_field", f"missing required field `{field}`")
    if not _strip(value):
        raise _Reject("missing_field", f"required field `{field}` is empty")
    if len(value.encode()) > MAX_ID_LEN:
        raise _Reject("invalid_value", f"`{field}` is longer than {MAX_ID_LEN} bytes")
    if _has_control(value):
        raise _Reject("invalid_value", f"`{field}` contains a control character")
    return value


# Unicode White_Space, the set Rust's str::trim removes (str.strip also removes \x1c-\x1f).
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def _strip(value: str) -> str:
    return value.strip(_WHITESPACE)


def _has_control(value: str) -> bool:
    """Control characters (Unicode category Cc) have no place in ids (and break stores)."""
    return any(unicodedata.category(c) == "Cc" for c in value)


def _optional(value: str | None, field: str) -> str | None:
    if value is None or not _strip(value):
        return None
    if len(value.encode()) > MAX_ID_LEN:
        raise _Reject("invalid_value", f"`{field}` is longer than {MAX_ID_LEN} bytes")
    if _has_control(value):
        raise _Reject("invalid_value", f"`{field}` contains a control character")
    return value


class _Reject(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_event(
    payload: bytes | None,
    *,
    rates: dict[str, float],
    base_currency: str = "EUR",
    max_event_bytes: int = 1_048_576,
    max_amount: float = 1e9,
) -> Normalized | Rejection:
    """Validate and normalise one payload (reference implementation, one event at a time).

    Args:
        payload: The raw message value (``None`` is an empty message).
        rates: Multiplier from each accepted currency to the base currency.
        base_currency: Currency amounts are converted into.
        max_event_bytes: Largest accepted payload.
        max_amount: Largest accepted amount in the event's currency.

    Returns:
        The normalised event, or a :class:`Rejection` with a reason code and a message.
    """
    try:
        return _decode(payload or b"", rates, base_currency, max_event_bytes, max_amount)
    except _Reject as r:
        return Rejection(r.reason, r.message)


def _decode(
    payload: bytes, rates: dict[str, float], base: str, max_bytes: int, max_amount: float
) -> Normalized:
    if not payload.strip(b" \t\n\r\x0c"):  # Rust's ASCII whitespace (no \\x0b)
        raise _Reject("empty_message", "empty message")
    if len(payload) > max_bytes:
        raise _Reject("too_large", f"message of {len(payload)} bytes exceeds {max_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject("invalid_utf8", f"message is not valid UTF-8: {e}") from None
    try:
        generic = msgspec.json.decode(payload)
    except msgspec.DecodeError as e:
        raise _Reject("invalid_json", str(e)) from None
    if not isinstance(generic, dict):
        raise _Reject("not_an_object", "event is not a JSON object")
    for name in Transaction.__struct_fields__:
        if name in generic and generic[name] is None:
            del generic[name]  # null counts as absent
    try:
        tx = msgspec.convert(generic, _Loose, strict=True)
    except msgspec.ValidationError as e:
        raise _Reject("wrong_type", str(e)) from None
    if isinstance(tx.label, int) and not isinstance(tx.label, bool) and tx.label not in (0, 1):
        raise _Reject("invalid_value", f"label must be 0 or 1, got {tx.label}")
    return _validate(tx, rates, base, max_amount)


class _Loose(msgspec.Struct, kw_only=True):
    """:class:`Transaction` with every field optional: types first, presence second."""

    transaction_id: str | None = None
    timestamp: int | float | str | None = None
    card_id: str | None = None
    amount: float | None = None
    currency: str | None = None
    merchant_id: str | None = None
    user_id: str | None = None
    merchant_category: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    channel: str | None = None
    device_id: str | None = None
    label: int | bool | None = None


def _validate(tx: _Loose, rates: dict[str, float], base: str, max_amount: float) -> Normalized:
    transaction_id = _required(tx.transaction_id, "transaction_id")
    ts = tx.timestamp
    if ts is None:
        raise _Reject("missing_field", "missing required field `timestamp`")
    if isinstance(ts, str):
        try:
            ts_ms = _parse_iso(ts)
        except ValueError as e:
            raise _Reject("invalid_timestamp", str(e)) from None
    else:
        if not math.isfinite(ts) or float(ts) != math.floor(ts):
            raise _Reject("invalid_timestamp", f"timestamp {ts} is not whole epoch milliseconds")
        ts_ms = int(ts)
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise _Reject("invalid_timestamp", f"timestamp {ts_ms} ms is outside 2000..2100")
    card_id = _required(tx.card_id, "card_id")
    if looks_like_pan(card_id):
        raise _Reject("pan_card_id", "card_id looks like a primary account number")
    merchant_id = _required(tx.merchant_id, "merchant_id")
    if tx.amount is None:
        raise _Reject("missing_field", "missing required field `amount`")
    amount = float(tx.amount)
    if not (math.isfinite(amount) and amount > 0) or amount > max_amount:
        raise _Reject("invalid_amount", f"amount {amount} is not a positive finite number")
    if tx.currency is None:
        raise _Reject("missing_field", "missing required field `currency`")
    currency = _strip(tx.currency).upper()
    table = {k.upper(): v for k, v in rates.items()} | {base.upper(): 1.0}
    if currency not in table:
        raise _Reject("unknown_currency", f"currency {currency!r} is not in the rates table")
    country = _strip(tx.country or "")
    if country and (len(country) != 2 or not country.isascii() or not country.isalpha()):
        raise _Reject("invalid_value", f"country {country!r} is not an ISO 3166-1 alpha-2 code")
    lat, lon = tx.lat, tx.lon
    if (lat is None) != (lon is None):
        raise _Reject("invalid_value", "lat and lon must be given together")
    if lat is not None and lon is not None:
        if not (math.isfinite(lat) and -90 <= lat <= 90):
            raise _Reject("invalid_value", f"lat {lat} is outside [-90, 90]")
        if not (math.isfinite(lon) and -180 <= lon <= 180):
            raise _Reject("invalid_value", f"lon {lon} is outside [-180, 180]")
    user_id = _optional(tx.user_id, "user_id")
    category = _optional(tx.merchant_category, "merchant_category")
    channel = _optional(tx.channel, "channel")
    device_id = _optional(tx.device_id, "device_id")
    return Normalized(
        transaction_id=transaction_id,
        ts_ms=ts_ms,
        card_id=card_id,
        amount=amount,
        amount_base=amount * table[currency],
        currency=currency,
        merchant_id=merchant_id,
        user_id=user_id,
        merchant_category=_strip(category) if category else None,
        country=country.upper() or None,
        lat=lat,
        lon=lon,
        channel=_strip(channel).lower() if channel else None,
        device_id=device_id,
        label=-1 if tx.label is None else int(tx.label),
    )
