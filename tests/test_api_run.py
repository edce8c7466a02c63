"""`txfast run … --api`: the scorer serves the alerts API from its own store, in one process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _thread_nice(pid: int) -> dict[int, int]:
    """Each thread of a process and its nice value (Linux: /proc/PID/task/TID/stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        out[int(task.name)] = int(fields[16])  # field 19 of stat(5), the 17th after comm
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_yield_cpu_to_api_lowers_the_calling_thread_and_those_it_starts() -> None:
    from txfast.api import yield_cpu_to_api

    seen: dict[str, int | None] = {}

    def scorer() -> None:
        seen["returned"] = yield_cpu_to_api(4)
        worker = threading.Thread(target=lambda: seen.update(worker=os.nice(0)))
        worker.start()
        worker.join()
        seen["scorer"] = os.nice(0)
        seen["zero"] = yield_cpu_to_api(0)

    before = os.nice(0)
    t = threading.Thread(target=scorer)
    t.start()
    t.join()
    assert seen == {
        "returned": before + 4,
        "worker": before + 4,
        "scorer": before + 4,
        "zero": None,
    }
    assert os.nice(0) == before, "other threads keep their priority"


def test_api_nice_is_validated() -> None:
    from txfast.config import load_settings
    from txfast.exceptions import ConfigError

    assert load_settings(env={}).pipeline.api_nice == 10
    with pytest.raises(ConfigError, match="api_nice"):
        load_settings(env={}, overrides={"pipeline": {"api_nice": 20}})


@pytest.mark.parametrize(
    ("stop", "ignore_sigint"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["sigint", "sigint-started-in-background", "sigterm"],
)
def test_run_serves_the_api_while_scoring_and_after(
    registry: Path, tmp_path: Path, stop: signal.Signals, ignore_sigint: bool
) -> None:
    """``--keep-serving`` stops cleanly on SIGINT and SIGTERM, also when started with SIGINT
    ignored (as a non-interactive shell starts a background job)."""
    store = f"duckdb:{tmp_path / 'run.duckdb'}"
    txfast = [sys.executable, "-m", "txfast.cli"]
    created = subprocess.run(
        [
            *txfast,
            "keys",
            "create",
            "--role",
            "analyst",
            "--name",
            "ana",
            "--store",
            store,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(created.stdout)["token"]
    port = _free_port()
    proc = subprocess.Popen(
        [
            *txfast,
            "run",
            "--source",
            "simulate",
            "--cards",
            "300",
            "--days",
            "2",
            "--store",
            store,
            "--registry",
            str(registry),
            "--api",
            f"127.0.0.1:{port}",
            "--keep-serving",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if ignore_sigint
        else None,
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "until interrupted" in line or not line:
                break
        assert any("until interrupted" in ln for ln in lines), "".join(lines)
        base = f"http://127.0.0.1:{port}"
        page = _get(f"{base}/alerts?limit=5", token)
        assert 0 < len(page["items"]) <= 5
        tx = page["items"][0]["transaction_id"]
        detail = _get(f"{base}/alerts/{tx}", token)
        assert detail["transaction_id"] == tx
        explanation = detail["explanation"]
        if isinstance(explanation, str):
            explanation = json.loads(explanation)
        assert explanation["top"], "alerts carry their explanation"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:  # no key needed
            metrics = r.read().decode()
        assert "txfast_api_requests_total" in metrics, "the API's own metrics"
        scored = re.search(r'^txfast_events_total\{outcome="scored"\} (\S+)$', metrics, re.M)
        assert scored and float(scored.group(1)) > 0, "and the scorer's, in the same process"
        stats = _get(f"{base}/stats?days=3650", token)
        assert stats["runtime"]["events"] > 0, "the scorer's own figures"
        if sys.platform.startswith("linux"):  # the scorer's thread yields the CPU to the API's
            nice = _thread_nice(proc.pid)
            assert nice[proc.pid] == 10, nice
            assert 0 in nice.values(), nice
        proc.send_signal(stop)
        try:
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # the CLI dumps every thread's stack
            time.sleep(2)
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"no exit 30 s after {stop!r}; stacks:\n{err[-20000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
