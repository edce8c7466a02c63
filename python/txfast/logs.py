"""Logging: text or JSON lines, and the scorer's periodic batch summaries.

Every txfast logger lives under ``txfast``. ``txfast --log-format json`` (or
``TXFAST_LOG_FORMAT=json``) writes one JSON object per line on stderr: ``ts`` (UTC,
ISO 8601), ``level``, ``logger``, ``msg`` and, for the structured events, ``event`` and
their fields, e.g. ::

    {"ts": "2026-11-29T08:00:10.002Z", "level": "INFO", "logger": "txfast.pipeline",
     "msg": "10.0 s: 41 batches, 335,872 events (33,587 tx/s), ...",
     "event": "batch_summary", "interval_s": 10.0, "batches": 41, "events": 335872, ...}

Structured events (``event``):

- ``batch_summary`` (INFO, every ``[pipeline] log_every``): what the durable batches of the
  interval held, counts by risk level and by rejection reason, seconds per stage, and the
  slowest batch;
- ``batch`` (DEBUG, every durable batch): its counts and stage seconds;
- error events such as ``store_write_failed``, ``store_recovered``,
  ``kafka_batch_failed``, ``consumer_error`` and ``labels_poll_failed`` with their
  context (attempt, delay, error).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = ["FORMATS", "BatchLog", "JsonFormatter", "configure"]

FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the record's ``extra`` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        ts = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Log txfast's records to stderr in ``fmt`` (``text`` or ``json``) at ``level``.

    A host that set up the root logger already (an application embedding txfast, pytest)
    keeps its own handlers; only the txfast level is set then.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
        root.addHandler(handler)
        root.setLevel(logging.WARNING)  # other libraries' warnings (psycopg's pool, …)
    logging.getLogger("txfast").setLevel(level.upper())


class BatchLog:
    """Aggregates durable batches and logs a ``batch_summary`` every ``every_s`` seconds.

    Args:
        logger: Where the records go.
        every_s: Seconds between summaries.
        level_names: Names of the risk levels, in index order.
    """

    def __init__(self, logger: logging.Logger, every_s: float, level_names: Sequence[str]) -> None:
        self.log = logger
        self.every_s = every_s
        self.level_names = list(level_names)
        self.model_version = ""
        self._start = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.batches = self.events = self.scored = 0
        self.alerts = np.zeros(len(self.level_names), dtype=np.int64)
        self.rejected: dict[str, int] = {}
        self.stages: dict[str, float] = {}
        self.slowest_s = 0.0

    def add(
        self,
        *,
        events: int,
        scored: int,
        alert_levels: np.ndarray,
        rejected_reasons: Sequence[str],
        stages: dict[str, float],
        model_version: str,
    ) -> None:
        """Count one durable batch; logs the summary when the interval is over."""
        levels = np.bincount(alert_levels, minlength=len(self.level_names))
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "batch: %d events, %d scored, %d alerts, %d rejected",
                events,
                scored,
                int(levels.sum()),
                len(rejected_reasons),
                extra={
                    "event": "batch",
                    "events": events,
                    "scored": scored,
                    "alerts": int(levels.sum()),
                    "rejected": len(rejected_reasons),
                    "stage_s": {k: round(v, 6) for k, v in stages.items()},
                    "model_version": model_version,
                },
            )
        self.batches += 1
        self.events += events
        self.scored += scored
        self.alerts += levels
        for reason in rejected_reasons:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        for stage, seconds in stages.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        self.slowest_s = max(self.slowest_s, sum(stages.values()))
        self.model_version = model_version
        if time.monotonic() - self._start >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Log the summary of the batches counted since the last one (if any)."""
        now = time.monotonic()
        interval, self._start = now - self._start, now
        if not self.batches:
            return
        by_level = {n: int(c) for n, c in zip(self.level_names, self.alerts, strict=True) if c}
        alerts = int(self.alerts.sum())
        rate = self.events / interval if interval > 0 else 0.0
        rejected = sum(self.rejected.values())
        text = (
            f"{interval:.1f} s: {self.batches} batches, {self.events:,} events "
            f"({rate:,.0f} tx/s), {alerts:,} alerts"
            + (f" {by_level}" if by_level else "")
            + f", {rejected:,} rejected"
            + (f" {self.rejected}" if self.rejected else "")
            + f", slowest batch {self.slowest_s * 1000:.1f} ms"
        )
        self.log.info(
            "%s",
            text,
            extra={
                "event": "batch_summary",
                "interval_s": round(interval, 3),
                "batches": self.batches,
                "events": self.events,
                "scored": self.scored,
                "tx_per_s": round(rate, 1),
                "alerts": alerts,
                "alerts_by_level": by_level,
                "rejected": rejected,
                "rejected_by_reason": dict(self.rejected),
                "stage_s": {k: round(v, 4) for k, v in self.stages.items()},
                "slowest_batch_ms": round(self.slowest_s * 1000, 2),
                "model_version": self.model_version,
            },
        )
        self._reset()
