"""Batch-first sources: history files (JSON lines, CSV, Parquet) and the simulator.

A source yields :class:`SourceBatch` objects in order; each knows how to decode itself and
where its events came from (``source`` name and the position of its first event), which is
the idempotency key of dead letters and the resume point of a file replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa

from txfast import _core
from txfast.contract import CONTRACT_FIELDS
from txfast.decode import DecodedBatch, Decoder
from txfast.exceptions import ConfigError

__all__ = [
    "CONTRACT_FIELDS",
    "ColumnMapping",
    "FileSource",
    "SimulatedSource",
    "SourceBatch",
    "open_source",
]

_TOKENIZABLE = {"card_id", "user_id", "merchant_id", "device_id"}


_FIELD_TYPES = {"amount": "DOUBLE", "lat": "DOUBLE", "lon": "DOUBLE", "label": "BIGINT"}
"""DuckDB types of the non-string contract fields in a history table."""

_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
_ALWAYS_READABLE = {
    "DOUBLE": (*_INTEGERS, "UBIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL"),
    "BIGINT": (*_INTEGERS, "BOOLEAN"),
}
"""Column types whose every value casts to the field's type (no unreadable check needed)."""


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """A batch of raw events: a list of payloads, a JSON-lines buffer or typed columns.

    Attributes:
        position: Position (line / row / offset) of the first event in its source.
        payloads: One message per event, or ``None``.
        lines: A JSON-lines buffer, or ``None``.
        table: Rows of a history table, one typed column per contract field (see
            :meth:`txfast.decode.Decoder.decode_table`), or ``None``.
    """

    position: int
    payloads: Sequence[bytes | None] | None = None
    lines: bytes | None = None
    table: pa.RecordBatch | None = None

    def decode(self, decoder: Decoder, *, ids_only: bool = False) -> DecodedBatch:
        """Decode with ``decoder`` (native, GIL released).

        ``ids_only`` lets a table batch keep ``transaction_id`` as its only string column
        (see :meth:`txfast.decode.Decoder.decode_table`); other batches keep them all.
        """
        if self.payloads is not None:
            return decoder.decode(self.payloads)
        if self.lines is not None:
            return decoder.decode_lines(self.lines)
        assert self.table is not None
        return decoder.decode_table(self.table, ids_only=ids_only)


class ColumnMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the columns of a history file map onto the event contract.

    TOML form::

        [columns]                 # contract field = column in the file
        timestamp = "TX_DATETIME"
        card_id = "CUSTOMER_ID"
        merchant_id = "TERMINAL_ID"
        amount = "TX_AMOUNT"
        label = "TX_FRAUD"
        transaction_id = "TRANSACTION_ID"

        [defaults]                # constant values for fields the file lacks
        currency = "EUR"

        [options]
        timestamp_unit = "ms"     # for numeric timestamps: "ms" or "s"
        tokenize = "card_id"      # comma-separated id fields replaced by a SHA-256 token

    Fields neither mapped nor defaulted are read from a column of the same name when there is
    one. Without a ``transaction_id`` column, ids are ``<file stem>-<row number>``; without a
    currency the amounts are in the base currency. Naive timestamps (no offset) are taken as
    UTC. ``tokenize`` is for files whose card ids are card numbers (PANs), which the decoder
    rejects: each value becomes ``tok_`` + the first 24 hex digits of its SHA-256, the same
    token for the same number, so windows still follow the card.
    """

    columns: dict[str, str] = msgspec.field(default_factory=dict)
    defaults: dict[str, str | float | int] = msgspec.field(default_factory=dict)
    options: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ColumnMapping:
        """Read a mapping file (TOML)."""
        try:
            m = msgspec.toml.decode(Path(path).read_bytes(), type=cls)
        except FileNotFoundError:
            raise ConfigError(f"column mapping {path} does not exist") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ConfigError(f"column mapping {path} is invalid: {e}") from e
        for name in (*m.columns, *m.defaults):
            if name not in CONTRACT_FIELDS:
                raise ConfigError(
                    f"column mapping {path}: {name!r} is not a contract field {CONTRACT_FIELDS}"
                )
        if m.options.get("timestamp_unit", "ms") not in ("ms", "s"):
            raise ConfigError(f"column mapping {path}: timestamp_unit must be ms or s")
        unknown = sorted(set(m.options) - {"timestamp_unit", "tokenize"})
        if unknown:
            raise ConfigError(
                f"column mapping {path}: unknown option {unknown[0]!r} "
                "(known: timestamp_unit, tokenize)"
            )
        bad = sorted(set(m.tokenized) - _TOKENIZABLE)
        if bad:
            raise ConfigError(
                f"column mapping {path}: cannot tokenize {bad[0]!r} "
                f"(id fields: {', '.join(sorted(_TOKENIZABLE))})"
            )
        return m

    @property
    def tokenized(self) -> list[str]:
        """The fields the ``tokenize`` option names."""
        return [f.strip() for f in self.options.get("tokenize", "").split(",") if f.strip()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str | float | int) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


class FileSource:
    """Replays a history file in batches.

    JSON-lines files without a mapping are decoded from their original bytes. CSV, Parquet
    and mapped JSON files are read by DuckDB into one typed column per contract field (see
    :meth:`table_sql`); the native decoder validates each row by the same rules as a JSON
    event, without rendering it as JSON, and a rejected row's payload is the row as a JSON
    contract document.

    Args:
        path: ``.jsonl``/``.json``/``.ndjson``, ``.csv``/``.csv.gz`` or ``.parquet``.
        batch_size: Events per batch.
        mapping: Column mapping for files with other column names.
        base_currency: Currency of amounts in files (CSV, Parquet, mapped JSON) without a
            currency column or default.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 8192,
        mapping: ColumnMapping | None = None,
        base_currency: str = "EUR",
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"data file {self.path} does not exist")
        self.batch_size = batch_size
        self.mapping = mapping
        self.base_currency = base_currency
        name = self.path.name.lower()
        if name.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
            self.format = "json"
        elif name.endswith((".csv", ".csv.gz", ".tsv")):
            self.format = "csv"
        elif name.endswith(".parquet"):
            self.format = "parquet"
        else:
            raise ConfigError(
                f"cannot tell the format of {self.path}: use .jsonl, .csv or .parquet"
            )
        self.name = f"file:{self.path}"

    def row_count(self) -> int | None:
        """Rows in the file when it says so without being read (Parquet), else None."""
        if self.format != "parquet":
            return None
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(self.path).metadata.num_rows)

    def __iter__(self) -> Iterator[SourceBatch]:
        if self.format == "json" and self.mapping is None and not self.path.name.endswith(".gz"):
            yield from self._json_lines()
        else:
            yield from self._duckdb_rows()

    def _json_lines(self) -> Iterator[SourceBatch]:
        block_bytes = 64 << 20
        position = 0
        rest = b""
        with self.path.open("rb") as f:
            while True:
                chunk = f.read(block_bytes)
                buf = rest + chunk
                if not chunk:
                    if buf:
                        yield from self._split(buf, position)
                    return
                cut = buf.rfind(b"\n")
                if cut < 0:
                    rest = buf
                    continue
                block, rest = buf[: cut + 1], buf[cut + 1 :]
                for b in self._split(block, position):
                    position = b.position + _count_lines(b.lines or b"")
                    yield b

    def _split(self, block: bytes, position: int) -> Iterator[SourceBatch]:
        starts, _ = _core.line_spans(block)
        n = len(starts)
        for i in range(0, n, self.batch_size):
            a = int(starts[i])
            b = int(starts[i + self.batch_size]) if i + self.batch_size < n else len(block)
            yield SourceBatch(position + i, lines=block[a:b])

    def _reader_sql(self, con: Any) -> tuple[str, dict[str, str], dict[str, str]]:
        """The file's DuckDB reader, the column types DuckDB detects, and its time formats.

        The time formats are those detected for ``TIMESTAMP`` and ``DATE`` columns of a CSV
        (absent for ISO 8601 and for other formats). A CSV or mapped JSON-lines file is read
        as text (every column ``VARCHAR``): DuckDB types such a column from a sample of its
        first rows (20,480), and a later value that did not fit (``abc`` in an amount column
        at row 50,000) failed the whole read. :meth:`table_sql` converts the values row by
        row instead, a bad one rejecting its row only; the detected types still decide how a
        timestamp or a boolean label is read.
        """
        p = _literal(str(self.path))
        if self.format == "parquet":
            reader = f"read_parquet({p})"
            return reader, _column_types(con, reader), {}
        if self.format == "csv":
            rows = con.execute(
                f"SELECT Columns, TimestampFormat, DateFormat FROM sniff_csv({p}, header = true)"
            ).fetchall()
            columns, timestamp_format, date_format = rows[0]
            detected = {c["name"]: str(c["type"]).upper() for c in columns}
            formats = {"TIMESTAMP": timestamp_format, "DATE": date_format}
            reader = f"read_csv({p}, header = true, all_varchar = true)"
            return reader, detected, {k: v for k, v in formats.items() if v}
        detected = _column_types(con, f"read_json_auto({p}, format = 'newline_delimited')")
        as_text = ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in detected)
        reader = f"read_json({p}, format = 'newline_delimited', columns = {{{as_text}}})"
        return reader, detected, {}

    def table_sql(self, con: Any) -> str:
        """The DuckDB query reading the file as the columns of a history table.

        Strings are ``VARCHAR``; ``amount``, ``lat``, ``lon`` ``DOUBLE``; ``label`` ``BIGINT``
        (a value that does not cast is named in ``unreadable``, which rejects its row);
        the timestamp is ``timestamp_ms`` (epoch ms as ``DOUBLE``: from a timestamp or date
        column, a number, or text DuckDB can read as a timestamp) and, for text columns,
        ``timestamp_text`` (the original text, which the decoder parses or quotes when it
        rejects the row).
        """
        reader, sniffed, formats = self._reader_sql(con)
        # The types read: a Parquet file's own; a CSV or mapped JSON-lines file is all text
        # (describing that reader again would sniff the file a second time).
        types = sniffed if self.format == "parquet" else dict.fromkeys(sniffed, "VARCHAR")
        mapping = self.mapping or ColumnMapping()
        unit = mapping.options.get("timestamp_unit", "ms")
        cols: dict[str, str] = {}
        unreadable: list[str] = []
        for fld in CONTRACT_FIELDS:
            col = mapping.columns.get(fld, fld if fld in types else None)
            if col is not None and col not in types:
                raise ConfigError(
                    f"{self.path}: mapped column {col!r} for {fld!r} is missing; "
                    f"columns are {sorted(types)}"
                )
            kind = _FIELD_TYPES.get(fld, "VARCHAR")
            default = mapping.defaults.get(fld)
            if fld == "currency" and default is None and col is None:
                default = self.base_currency  # no currency column: amounts in the base one
            if col is None:
                if fld == "timestamp":
                    number = isinstance(default, (int, float))
                    ms = _literal(default) if number else "NULL"  # type: ignore[arg-type]
                    text = "NULL" if default is None or number else _literal(str(default))
                    cols["timestamp_ms"] = f"CAST({ms} AS DOUBLE)"
                    cols["timestamp_text"] = f"CAST({text} AS VARCHAR)"
                elif fld == "transaction_id" and default is None:
                    stem = _literal(self.path.name.split(".")[0] + "-")
                    cols[fld] = f"{stem} || CAST(row_number() OVER () - 1 AS VARCHAR)"
                else:
                    value = "NULL" if default is None else _literal(default)
                    cols[fld] = f"TRY_CAST({value} AS {kind})"
                continue
            c, t = _quote(col), types[col]
            if fld == "timestamp":
                # Text that does not convert goes to the decoder as timestamp_text, which
                # parses it or rejects the row quoting it.
                text = c if t == "VARCHAR" else "CAST(NULL AS VARCHAR)"
                s_type = sniffed.get(col, t)
                time_format = formats.get("DATE" if s_type == "DATE" else "TIMESTAMP")
                if t.startswith(("TIMESTAMP", "DATE")):
                    cols["timestamp_ms"] = f"CAST(epoch_ms(CAST({c} AS TIMESTAMP)) AS DOUBLE)"
                elif t == "VARCHAR" and s_type.startswith(("TIMESTAMP", "DATE")) and time_format:
                    parsed = f"try_strptime({c}, {_literal(time_format)})"
                    cols["timestamp_ms"] = f"CAST(epoch_ms({parsed}) AS DOUBLE)"
                elif t == "VARCHAR" and not s_type.startswith(_ALWAYS_READABLE["DOUBLE"]):
                    cols["timestamp_ms"] = f"CAST(epoch_ms(TRY_CAST({c} AS TIMESTAMPTZ)) AS DOUBLE)"
                else:
                    value = f"TRY_CAST({c} AS DOUBLE)"
                    # Seconds to whole milliseconds (a fraction of a second is kept).
                    cols["timestamp_ms"] = f"round({value} * 1000)" if unit == "s" else value
                cols["timestamp_text"] = text
                continue
            if kind == "VARCHAR":
                expr = f"CAST({c} AS VARCHAR)"
                if fld in mapping.tokenized:
                    expr = f"'tok_' || substr(sha256({expr}), 1, 24)"
            else:
                expr = f"TRY_CAST({c} AS {kind})"
                if kind == "BIGINT" and t == "VARCHAR" and sniffed.get(col) == "BOOLEAN":
                    expr = f"TRY_CAST(TRY_CAST({c} AS BOOLEAN) AS BIGINT)"  # true / false
                if not t.startswith(_ALWAYS_READABLE[kind]):
                    shown = f"{_literal(fld + ': ')} || left(CAST({c} AS VARCHAR), 40)"
                    unreadable.append(
                        f"CASE WHEN {c} IS NOT NULL AND {expr} IS NULL THEN {shown} END"
                    )
            if default is not None:
                expr = f"COALESCE({expr}, TRY_CAST({_literal(default)} AS {kind}))"
            cols[fld] = expr
        cols["unreadable"] = (
            f"concat_ws('; ', {', '.join(unreadable)})" if unreadable else "CAST(NULL AS VARCHAR)"
        )
        select = ", ".join(f"{expr} AS {_quote(name)}" for name, expr in cols.items())
        return f"SELECT {select} FROM {reader}"

    def _duckdb_rows(self) -> Iterator[SourceBatch]:
        import duckdb

        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            rel = con.sql(self.table_sql(con))
            # duckdb 2 streams relations with to_arrow_reader; 1.x calls it record_batch.
            to_reader: Any = getattr(rel, "to_arrow_reader", None) or rel.record_batch
            reader = to_reader(self.batch_size)
            position = 0
            for rb in reader:
                yield SourceBatch(position, table=rb)
                position += rb.num_rows
        finally:
            con.close()


def _column_types(con: Any, reader: str) -> dict[str, str]:
    """Column name -> DuckDB type (upper case) of a reader's rows."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    return {r[0]: str(r[1]).upper() for r in rows}


def _count_lines(block: bytes) -> int:
    n = block.count(b"\n")
    return n if block.endswith(b"\n") else n + 1


@dataclass
class SimulatedSource:
    """A live stream from the simulator: ``days`` of history for ``cards`` cards, in time order.

    Args:
        cards: Number of cards.
        days: Days simulated.
        seed: Random seed.
        rate: Events per second to pace at (0: as fast as possible).
        batch_size: Events per batch at most.
        start: First simulated day.
        linger_ms: When paced, a batch holds the events of this long at most (like a Kafka
            consumer's linger): ``rate × linger`` events, so a batch is released when its
            last event is due rather than a large batch early when its first one is.
    """

    cards: int = 2000
    days: int = 1
    seed: int = 0
    rate: float = 0.0
    batch_size: int = 8192
    start: str = "2026-01-01"
    fraud_rate: float = 0.005
    linger_ms: float = 50.0
    _table: pa.Table | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """Source name used as the dead-letter key."""
        return f"simulate:{self.seed}:{self.start}"

    def table(self) -> pa.Table:
        """The simulated transactions (computed once)."""
        if self._table is None:
            from txfast.simulate import simulate

            self._table = simulate(
                self.cards, self.days, self.seed, fraud_rate=self.fraud_rate, start=self.start
            )
        return self._table

    def __iter__(self) -> Iterator[SourceBatch]:
        from txfast.simulate import iter_json_batches

        if self.rate <= 0:
            position = 0
            for payloads in iter_json_batches(self.table(), self.batch_size):
                yield SourceBatch(position, payloads=payloads)
                position += len(payloads)
            return
        yield from self._paced(iter_json_batches(self.table(), self._chunk()))

    def _chunk(self) -> int:
        return max(1, min(self.batch_size, round(self.rate * self.linger_ms / 1000)))

    def _paced(self, chunks: Iterator[list[bytes]]) -> Iterator[SourceBatch]:
        """Every ``linger_ms`` (or at once when the consumer is late), the events due by now.

        Like a consumer of a live topic: a batch never holds an event before it is due, and
        a consumer slower than the stream gets bigger batches (up to ``batch_size``) rather
        than falling further behind.
        """
        linger = self.linger_ms / 1000
        pending: list[bytes] = []
        position = 0
        t0 = last = time.perf_counter()
        exhausted = False
        while True:
            delay = last + linger - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            last = time.perf_counter()
            due = min(int((last - t0) * self.rate) + 1 - position, self.batch_size)
            while len(pending) < due and not exhausted:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    pending.extend(chunk)
            n = min(due, len(pending))
            if n > 0:
                yield SourceBatch(position, payloads=pending[:n])
                del pending[:n]
                position += n
            elif exhausted:
                return


def open_source(
    spec: str, *, batch_size: int = 8192, **options: Any
) -> FileSource | SimulatedSource:
    """Build a source from ``simulate`` or ``file:PATH`` (a bare path works too)."""
    if spec == "simulate":
        return SimulatedSource(batch_size=batch_size, **options)
    path = spec[len("file:") :] if spec.startswith("file:") else spec
    return FileSource(
        path,
        batch_size=batch_size,
        mapping=options.get("mapping"),
        base_currency=options.get("base_currency", "EUR"),
    )
