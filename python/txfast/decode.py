"""Batch decoding of raw events into columns (native, GIL released).

:class:`Decoder` validates and normalises a batch of JSON payloads in Rust and returns a
:class:`DecodedBatch`: numpy columns for the feature engine, Arrow string columns for the
store, and the rejected payloads with their reason codes and original bytes. The rules are
those of :mod:`txfast.contract` (the reference, one event at a time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from txfast import _core
from txfast.contract import looks_like_pan

__all__ = ["DecodedBatch", "Decoder", "Rejected", "decode"]

STRING_COLUMNS = (
    "transaction_id",
    "card_id",
    "user_id",
    "merchant_id",
    "merchant_category",
    "country_code",
    "currency",
    "channel_name",
    "device_id",
)
NUMERIC_COLUMNS = (
    "index",
    "ts_ms",
    "amount",
    "amount_base",
    "lat",
    "lon",
    "channel",
    "label",
    "card",
    "merchant",
    "user",
    "category",
    "country",
)

TABLE_STRING_COLUMNS = (
    "transaction_id",
    "timestamp_text",
    "card_id",
    "user_id",
    "currency",
    "merchant_id",
    "merchant_category",
    "country",
    "channel",
    "device_id",
    "unreadable",
)
"""String columns of a history table (see :meth:`Decoder.decode_table`)."""
TABLE_NUMBER_COLUMNS = ("timestamp_ms", "amount", "lat", "lon")
"""Float64 columns of a history table; ``label`` is the one int64 column."""

_NO_BYTES = np.zeros(0, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload that failed validation.

    Attributes:
        index: Position of the payload in its source (line number for files, offset for
            Kafka); relative to the decoded batch until the pipeline makes it absolute.
        reason: Stable reason code (see :data:`txfast.contract.REJECT_REASONS`).
        message: Human-readable explanation.
        payload: The original bytes (card numbers masked, see :func:`mask_pan`).
        source: Where it came from when a batch mixes sources (``kafka:TOPIC/PARTITION``);
            empty means the batch's source.
    """

    index: int
    reason: str
    message: str
    payload: bytes
    source: str = ""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Accepted events as columns plus the rejected payloads.

    Attributes:
        columns: numpy arrays (``ts_ms``, ``amount_base``, hashed ids …; see
            ``docs/features.md``) and Arrow string arrays (``transaction_id``, ``card_id`` …).
        rejected: One entry per rejected payload, in input order.
        size: Number of payloads in the batch.
    """

    columns: dict[str, Any]
    rejected: list[Rejected] = field(default_factory=list)
    size: int = 0

    def __len__(self) -> int:
        return len(self.columns["index"])

    def take(self, rows: np.ndarray) -> DecodedBatch:
        """The accepted rows at positions ``rows`` (rejects are not carried over)."""
        idx = pa.array(rows, type=pa.int64())
        cols = {
            k: (v.take(idx) if isinstance(v, pa.Array) else v[rows])
            for k, v in self.columns.items()
        }
        return DecodedBatch(cols, [], len(rows))

    def feature_inputs(self) -> dict[str, np.ndarray]:
        """The keyword arguments of :meth:`txfast.features.FeatureEngine.process`."""
        c = self.columns
        return {
            "ts_ms": c["ts_ms"],
            "card": c["card"],
            "amount": c["amount_base"],
            "merchant": c["merchant"],
            "user": c["user"],
            "category": c["category"],
            "country": c["country"],
            "lat": c["lat"],
            "lon": c["lon"],
            "channel": c["channel"],
        }


def _string_array(spec: tuple[np.ndarray, np.ndarray, np.ndarray]) -> pa.Array:
    offsets, data, valid = spec
    n = len(valid)
    nulls = int(n - np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap, nulls
    )


def _validity(arr: pa.Array) -> tuple[np.ndarray, int]:
    bitmap = arr.buffers()[0]
    if arr.null_count == 0 or bitmap is None:
        return _NO_BYTES, 0
    return np.frombuffer(bitmap, dtype=np.uint8), arr.offset


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(offsets, data, bitmap, bitmap offset)`` of a string column, without copying data."""
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    n = len(arr)
    bufs = arr.buffers()
    if bufs[1] is None:  # an empty or all-null column without buffers
        offsets = np.zeros(n + 1, dtype=np.int64)
    else:
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else _NO_BYTES
    return (offsets, data, *_validity(arr))


def _number_buffers(arr: pa.Array, dtype: pa.DataType) -> tuple[np.ndarray, np.ndarray, int]:
    """``(values, bitmap, bitmap offset)`` of a numeric column (cast to ``dtype`` if needed)."""
    if arr.type != dtype:
        arr = arr.cast(dtype)
    n = len(arr)
    bufs = arr.buffers()
    np_type = dtype.to_pandas_dtype()
    if bufs[1] is None:
        values = np.zeros(n, dtype=np_type)
    else:
        values = np.frombuffer(bufs[1], dtype=np_type)[arr.offset : arr.offset + n]
    return (values, *_validity(arr))


def _row_documents(table: pa.RecordBatch, rows: list[int]) -> dict[int, bytes]:
    """Rows of a history table as contract JSON documents (rejected rows' payloads).

    The rows are taken in one Arrow call, not value by value: a file whose every row is
    rejected (a wrong mapping, say) stays quick to report.
    """
    out: dict[int, bytes] = {}
    taken = table.take(pa.array(rows, pa.int64())).to_pylist() if rows else []
    for i, row in zip(rows, taken, strict=True):
        ms, text = row.pop("timestamp_ms", None), row.pop("timestamp_text", None)
        row.pop("unreadable", None)  # said in the message; not a contract field
        doc: dict[str, Any] = {}
        for name in ("transaction_id", "timestamp", *(k for k in row if k != "transaction_id")):
            if name == "timestamp":
                value: Any = text if ms is None else (int(ms) if float(ms).is_integer() else ms)
            else:
                value = row.get(name)
            if value is not None:
                doc[name] = value
        out[i] = json.dumps(doc, default=str, allow_nan=True).encode()
    return out


_PAN_RUN = re.compile(rb"\d(?:[ -]?\d){12,18}")


def mask_pan(payload: bytes) -> bytes:
    """Mask digit runs that form a card number (keep the first 6 and last 4 digits).

    Rejected events keep their original bytes, except that a primary account number is never
    stored: PCI DSS keeps raw card numbers out of systems like this one.
    """

    def repl(m: re.Match[bytes]) -> bytes:
        text = m.group(0)
        if not looks_like_pan(text.decode("ascii")):
            return text
        digits = [i for i, b in enumerate(text) if 48 <= b <= 57]
        keep = set(digits[:6] + digits[-4:])
        return bytes(b if (i in keep or not 48 <= b <= 57) else 42 for i, b in enumerate(text))

    return _PAN_RUN.sub(repl, payload)


class Decoder:
    """Validates and normalises raw JSON events into columns.

    Args:
        rates: Multiplier from each accepted currency to ``base_currency``.
        base_currency: ISO 4217 code amounts are converted into.
        max_event_bytes: Larger payloads are rejected with ``too_large``.
        max_amount: Larger amounts (in the event's currency) are rejected.

    Raises:
        txfast.exceptions.ConfigError: When a code or rate is invalid.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        base_currency: str = "EUR",
        max_event_bytes: int = 1_048_576,
        max_amount: float = 1e9,
    ) -> None:
        self._decoder = _core.Decoder(
            base_currency=base_currency,
            rates=dict(rates or {}),
            max_event_bytes=max_event_bytes,
            max_amount=max_amount,
        )

    @property
    def base_currency(self) -> str:
        """The base currency."""
        return str(self._decoder.base_currency)

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch:
        """Decode one message per payload (``None`` is an empty message). GIL released."""
        raw = self._decoder.decode(payloads)
        return self._finish(raw, len(payloads), lambda i: payloads[i] or b"")

    def decode_lines(self, buffer: bytes) -> DecodedBatch:
        """Decode a JSON-lines buffer; ``index`` is the 0-based line number. GIL released."""
        raw = self._decoder.decode_lines(buffer)
        starts, ends = _core.line_spans(buffer) if raw["rejects"] else (None, None)
        n = len(raw["index"]) + len(raw["rejects"])

        def original(i: int) -> bytes:
            assert starts is not None and ends is not None
            return buffer[int(starts[i]) : int(ends[i])]

        return self._finish(raw, n, original)

    def decode_arrow(self, values: pa.Array) -> DecodedBatch:
        """Decode a (large) string or binary Arrow array of JSON documents. GIL released."""
        if values.null_count:
            values = values.fill_null("")
        arr = values.cast(pa.large_binary())
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] else np.empty(0, np.uint8)
        raw = self._decoder.decode_offsets(data, np.ascontiguousarray(offsets))

        def original(i: int) -> bytes:
            return bytes(data[offsets[i] : offsets[i + 1]])

        return self._finish(raw, len(arr), original)

    def decode_table(
        self, table: pa.RecordBatch | pa.Table, *, ids_only: bool = False
    ) -> DecodedBatch:
        """Decode rows of a history file given as typed columns, without any JSON. GIL released.

        ``table`` has the string columns :data:`TABLE_STRING_COLUMNS`, the float64 columns
        :data:`TABLE_NUMBER_COLUMNS` and an int64 ``label`` (nulls for absent values). The
        timestamp is ``timestamp_ms`` (epoch ms) or, where that is null, ``timestamp_text``
        (parsed like a JSON string). ``unreadable``, where not null or empty, names values
        found but not readable as their field's type: the row is rejected as ``wrong_type``.
        Every row is validated by the same rules as a JSON event; ``index`` is the row
        number. A rejected row's payload is the row rendered as a JSON contract document.

        With ``ids_only``, ``transaction_id`` is the only string column kept (the others are
        None): replaying history into features needs nothing else, and copying the strings
        is a good part of the work.
        """
        if isinstance(table, pa.Table):
            table = table.combine_chunks().to_batches()[0] if table.num_rows else None
            if table is None:
                return self.decode([])
        n = table.num_rows
        strings = {k: _string_buffers(table.column(k)) for k in TABLE_STRING_COLUMNS}
        numbers = {k: _number_buffers(table.column(k), pa.float64()) for k in TABLE_NUMBER_COLUMNS}
        label = _number_buffers(table.column("label"), pa.int64())
        raw = self._decoder.decode_table(n, strings, numbers, label, ids_only=ids_only)

        documents = _row_documents(table, [int(r[0]) for r in raw["rejects"]])
        return self._finish(raw, n, documents.__getitem__)

    def _finish(self, raw: dict[str, Any], size: int, original: Any) -> DecodedBatch:
        columns: dict[str, Any] = {k: raw[k] for k in NUMERIC_COLUMNS}
        for k in STRING_COLUMNS:
            columns[k] = None if raw[k] is None else _string_array(raw[k])
        rejected = [
            Rejected(
                int(i),
                reason,
                message,
                mask_pan(original(int(i))) if reason == "pan_card_id" else original(int(i)),
            )
            for i, reason, message in raw["rejects"]
        ]
        return DecodedBatch(columns, rejected, size)


def decode(
    payloads: Sequence[bytes | None],
    rates: Mapping[str, float] | None = None,
    *,
    base_currency: str = "EUR",
    max_event_bytes: int = 1_048_576,
    max_amount: float = 1e9,
) -> DecodedBatch:
    """One-shot form of :meth:`Decoder.decode` with the same options."""
    return Decoder(
        rates, base_currency=base_currency, max_event_bytes=max_event_bytes, max_amount=max_amount
    ).decode(payloads)
