"""``bench/compare.py --quick --json`` against the test broker: contract and correctness.

The quick comparison runs txfast and the plain-Python peer (Spark and Quix are reported as
skipped) on the session's Kafka broker; the test checks the JSON contract of issue 7 and
that every system really processed every input event and published what it reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def quick(kafka_broker, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compare") / "compare.json"
    env = {**os.environ, "TXFAST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compare.py"),
            "--quick",
            "--json",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    return result


def test_json_contract(quick: dict) -> None:
    assert {"txfast", "peers", "throughput_ratio_vs_best_peer", "p99_ratio_vs_best_peer"} <= set(
        quick
    )
    assert {"drain_tx_per_s", "p99_ms_at_10k"} <= set(quick["txfast"])
    assert set(quick["peers"]) == {"python", "spark", "quix"}
    for peer in quick["peers"].values():
        assert {"drain_tx_per_s", "p99_ms_at_10k", "error"} <= set(peer)
    for name in ("spark", "quix"):
        assert quick["peers"][name]["drain_tx_per_s"] is None
        assert quick["peers"][name]["error"] == "skipped in --quick"


def test_python_peer_processed_every_event(quick: dict) -> None:
    peer = quick["peers"]["python"]
    assert peer["error"] is None
    drain = peer["drain"]
    assert drain["processed"] == drain["events"] == quick["config"]["events_peers"]
    assert drain["output_records"] == drain["alerts"] > 0
    assert 100 < peer["drain_tx_per_s"] < 10_000_000
    assert set(peer["latency"]) == {"2000", "10000"}
    for lat in peer["latency"].values():
        assert lat["processed"] == lat["events"]
        assert lat["samples"] > 0
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"] < 120_000
    assert peer["p99_ms_at_10k"] == peer["latency"]["10000"]["p99_ms"]
    assert isinstance(peer["kept_up"], bool)


def test_txfast_and_ratios(quick: dict) -> None:
    tx = quick["txfast"]
    assert tx.get("error") is None
    assert tx["drain"]["processed"] == tx["drain"]["events"] == quick["config"]["events_txfast"]
    assert tx["drain"]["output_records"] == tx["drain"]["alerts"] > 0
    for lat in tx["latency"].values():
        assert lat["processed"] == lat["events"]
        assert lat["samples"] > 0
    assert tx["drain_tx_per_s"] > 0 and tx["p99_ms_at_10k"] > 0
    ratio = quick["throughput_ratio_vs_best_peer"]
    assert ratio == pytest.approx(
        tx["drain_tx_per_s"] / quick["peers"]["python"]["drain_tx_per_s"], rel=0.01
    )
    if quick["peers"]["python"]["kept_up"]:
        assert quick["p99_ratio_vs_best_peer"] == pytest.approx(
            tx["p99_ms_at_10k"] / quick["peers"]["python"]["p99_ms_at_10k"], rel=0.01
        )
    else:
        assert quick["p99_ratio_vs_best_peer"] is None


def test_same_features_and_model(quick: dict) -> None:
    parity = quick["feature_parity"]
    assert parity["events"] > 0
    assert parity["max_rel_feature_diff"] <= 1e-6
    assert parity["max_abs_score_diff"] <= 1e-4
