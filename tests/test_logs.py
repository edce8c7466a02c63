"""Structured logs: JSON lines, the periodic batch summary and the error events."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from txfast.config import load_settings
from txfast.exceptions import StoreError
from txfast.logs import BatchLog, JsonFormatter
from txfast.pipeline import Pipeline
from txfast.rules import LEVELS
from txfast.sources import SourceBatch


def test_json_lines_carry_the_extra_fields_and_the_exception() -> None:
    fmt = JsonFormatter()
    record = logging.makeLogRecord(
        {
            "name": "txfast.test",
            "levelname": "ERROR",
            "levelno": logging.ERROR,
            "msg": "store write failed (attempt %d)",
            "args": (3,),
            "event": "store_write_failed",
            "attempt": 3,
            "created": 1_796_000_000.25,
        }
    )
    doc = json.loads(fmt.format(record))
    assert doc["msg"] == "store write failed (attempt 3)"
    assert doc["event"] == "store_write_failed" and doc["attempt"] == 3
    assert doc["level"] == "ERROR" and doc["logger"] == "txfast.test"
    assert doc["ts"].endswith(".250Z")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(fmt.format(record))["exc"]


def test_batch_summary_adds_up_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("txfast.test.batchlog")
    summaries = BatchLog(log, every_s=3600, level_names=LEVELS)
    with caplog.at_level(logging.DEBUG, logger="txfast.test.batchlog"):
        summaries.add(
            events=10,
            scored=9,
            alert_levels=np.array([2, 3, 3]),
            rejected_reasons=["bad_json"],
            stages={"decode": 0.001, "store": 0.004},
            model_version="v1",
        )
        summaries.add(
            events=5,
            scored=3,
            alert_levels=np.array([], dtype=np.int64),
            rejected_reasons=["bad_json", "missing_field"],
            stages={"decode": 0.002, "store": 0.010},
            model_version="v2",
        )
        assert [r.event for r in caplog.records] == ["batch", "batch"]  # no summary yet
        summaries.flush()
        summaries.flush()  # nothing new: no second summary
    done = [r for r in caplog.records if r.event == "batch_summary"]
    assert len(done) == 1
    s = done[0].__dict__
    assert (s["batches"], s["events"], s["scored"], s["alerts"]) == (2, 15, 12, 3)
    assert s["alerts_by_level"] == {LEVELS[2]: 1, LEVELS[3]: 2}
    assert s["rejected_by_reason"] == {"bad_json": 2, "missing_field": 1}
    assert s["stage_s"] == {"decode": pytest.approx(0.003), "store": pytest.approx(0.014)}
    assert s["slowest_batch_ms"] == pytest.approx(12.0)
    assert s["model_version"] == "v2"


def test_a_json_run_logs_summaries_that_add_up_to_the_run(
    history: Path, registry: Path, tmp_path: Path
) -> None:
    """`txfast --log-format json run`: every stderr line is JSON; summaries add up."""
    config = tmp_path / "txfast.toml"
    config.write_text('[pipeline]\nbatch_size = 2000\nlog_every = "1ms"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "txfast.cli",
            "--log-format",
            "json",
            "run",
            "--source",
            f"file:{history}",
            "--store",
            f"duckdb:{tmp_path / 'r.duckdb'}",
            "--registry",
            str(registry),
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TXFAST_")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    summaries = [d for d in lines if d.get("event") == "batch_summary"]
    assert len(summaries) >= 2, proc.stderr[-2000:]
    assert sum(d["events"] for d in summaries) == run["events"]
    assert sum(d["alerts"] for d in summaries) == run["alerts"]
    assert sum(d["rejected"] for d in summaries) == run["rejected"]
    assert all(d["logger"] == "txfast.pipeline" and d["level"] == "INFO" for d in summaries)
    assert {"decode", "features", "score", "store"} <= set(summaries[0]["stage_s"])


class _FailingStore:
    """A real DuckDB store whose first writes fail, as during a database outage."""

    def __init__(self, store, failures: int) -> None:  # noqa: ANN001 - any Store
        self._store = store
        self.failures = failures

    def write_batch(self, batch, **kw) -> None:  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            raise StoreError("connection refused")
        self._store.write_batch(batch, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204 - the rest of the Store
        return getattr(self._store, name)


def test_a_store_outage_logs_each_failure_and_the_recovery(
    registry: Path, stream_events: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        env={}, overrides={"store": "duckdb::memory:", "registry": str(registry)}
    )
    pipe = Pipeline.from_settings(settings)
    pipe.store = _FailingStore(pipe.store, failures=2)  # type: ignore[assignment]
    pipe.settings = settings.replace(pipeline=settings.pipeline.__class__(store_retry_max_s=0.01))
    with caplog.at_level(logging.WARNING, logger="txfast"):
        pipe.process(SourceBatch(0, payloads=stream_events[:500]), "test")
    events = [(r.levelname, getattr(r, "event", None)) for r in caplog.records]
    assert events == [
        ("ERROR", "store_write_failed"),
        ("ERROR", "store_write_failed"),
        ("WARNING", "store_recovered"),
    ]
    failed = [r for r in caplog.records if r.event == "store_write_failed"]
    assert [r.attempt for r in failed] == [1, 2]
    assert failed[0].error == "connection refused"
    assert pipe.summary.events == 500 and pipe.summary.store_retries == 2
    pipe.store.close()
