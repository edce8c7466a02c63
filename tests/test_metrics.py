"""Prometheus metrics of the scorer: scraped during a run, they move as they should."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from txfast.config import load_settings
from txfast.metrics import METRIC_NAMES, ArrayHistogram, DriftMonitor, reference_from_training
from txfast.pipeline import Pipeline
from txfast.rules import LEVELS
from txfast.sources import SourceBatch


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_array_histogram_buckets_like_prometheus() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    values = np.array([0.0, 0.1, 0.1000001, 0.5, 1.0, 7.0, np.nan])
    mine = ArrayHistogram("a", "doc", (0.1, 0.5, 1.0))
    mine.observe_many(values)
    reg = CollectorRegistry()
    theirs = Histogram("a", "doc", buckets=(0.1, 0.5, 1.0), registry=reg)
    for v in values[~np.isnan(values)]:
        theirs.observe(v)
    got = {s.labels.get("le"): s.value for s in mine.family().samples if s.name.endswith("_bucket")}
    want = {
        s.labels.get("le"): s.value
        for f in text_string_to_metric_families(generate_latest(reg).decode())
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert got == want == {"0.1": 2, "0.5": 4, "1.0": 5, "+Inf": 6}


def test_psi_is_small_in_distribution_and_large_after_a_shift() -> None:
    rng = np.random.default_rng(0)
    train = rng.lognormal(3, 1, size=(50_000, 2)).astype(np.float32)
    ref = reference_from_training(train, ["amount", "other"], rng.random(50_000))
    monitor = DriftMonitor(ref, ["amount", "other"])
    same = rng.lognormal(3, 1, size=(20_000, 2))
    monitor.observe(same, rng.random(20_000))
    psi = monitor.psi()
    assert set(psi) == {"amount", "other", "score"}
    assert max(psi.values()) < 0.02
    shifted = same.copy()
    shifted[:, 0] *= 4  # amounts four times higher
    for _ in range(20):  # the window forgets the old traffic
        monitor.observe(shifted, rng.random(20_000))
    psi = monitor.psi()
    assert psi["amount"] > 0.25 and psi["other"] < 0.02


def test_psi_bins_like_searchsorted_per_column() -> None:
    """Columns with different edge counts, values on the edges and NaN (not counted)."""
    ref = {
        "a": {"edges": [0.0, 1.0, 2.0], "fractions": [0.1, 0.2, 0.3, 0.4]},
        "b": {"edges": [-1.0, 0.0, 1.0, 5.0, 9.0], "fractions": [0.2, 0.1, 0.1, 0.2, 0.2, 0.2]},
        "score": {"edges": [0.5], "fractions": [0.5, 0.5]},
    }
    monitor = DriftMonitor(ref, ["b", "a"], window=10**9)
    rng = np.random.default_rng(3)
    x = rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 5.0, 9.0, 12.0, np.nan], size=(500, 2))
    scores = rng.choice([0.1, 0.5, 0.9, np.nan], size=500)
    monitor.observe(x.astype(np.float32), scores)

    def psi(values: np.ndarray, name: str) -> float:
        edges, fractions = np.array(ref[name]["edges"]), np.array(ref[name]["fractions"])
        values = values[~np.isnan(values)]
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(fractions))
        actual = np.maximum(counts / counts.sum(), 1e-4)
        return float(((actual - fractions) * np.log(actual / fractions)).sum())

    got = monitor.psi()
    assert got["b"] == pytest.approx(psi(x[:, 0], "b"), abs=1e-12)
    assert got["a"] == pytest.approx(psi(x[:, 1], "a"), abs=1e-12)
    assert got["score"] == pytest.approx(psi(scores, "score"), abs=1e-12)


@pytest.fixture(scope="module")
def drift_registry(history: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion trained now, so that its metadata has the drift reference."""
    from txfast.history import replay_features
    from txfast.training.isolation_forest import train_isolation_forest

    root = tmp_path_factory.mktemp("metrics-registry")
    fs = replay_features(load_settings(env={}), history)
    train_isolation_forest(
        fs.X, fs.feature_names, fs.feature_version, n_estimators=30, seed=1
    ).register(root, promote=True)
    return root


def test_pipeline_metrics_follow_the_batches(
    stream_events: list[bytes], drift_registry: Path, tmp_path: Path
) -> None:
    from prometheus_client import generate_latest

    settings = load_settings(
        env={},
        overrides={"store": f"duckdb:{tmp_path / 'm.duckdb'}", "registry": str(drift_registry)},
    )
    pipe = Pipeline.from_settings(settings)
    assert pipe.metrics is not None
    bad = [b'{"broken', b'{"transaction_id": 1}']
    try:
        half = len(stream_events) // 2
        pipe.process(SourceBatch(0, payloads=stream_events[:half] + bad), "s")
        first = samples(generate_latest(pipe.metrics.registry).decode())
        pipe.process(SourceBatch(half + 2, payloads=stream_events[half:]), "s")
        second = samples(generate_latest(pipe.metrics.registry).decode())
        s = pipe.summary
        assert value(first, "txfast_events_total", outcome="scored") == half
        assert value(second, "txfast_events_total", outcome="scored") == s.scored
        assert value(second, "txfast_events_total", outcome="consumed") == s.events
        assert value(second, "txfast_events_total", outcome="rejected") == 2
        assert (
            sum(value(second, "txfast_rejected_total", reason=r) for r in s.rejected_by_reason) == 2
        )
        assert sum(value(second, "txfast_alerts_total", risk=lv) for lv in LEVELS) == s.alerts
        assert value(second, "txfast_batches_total") == 2
        assert value(second, "txfast_score_count") == s.scored
        assert value(second, "txfast_batch_size_count") == 2
        for stage in ("decode", "features", "score", "rules", "explain", "store"):
            assert value(second, "txfast_stage_seconds_count", stage=stage) == 2
            assert value(second, "txfast_stage_seconds_sum", stage=stage) > 0
        version = pipe.scorer.model_version
        assert value(second, "txfast_model_info", version=version, kind="isolation_forest") == 1
        psi = {k[1][0][1]: v for k, v in second.items() if k[0] == "txfast_drift_psi"}
        assert "score" in psi and "amount_base" in psi
        assert 0 <= psi["amount_base"] < 0.25, "the stream looks like the training history"

        # Feedback: two alerts labelled fraud, one legit -> precision 2/3.
        ids = [r[0] for r in pipe.store.query("SELECT transaction_id FROM alerts LIMIT 3")]
        for tx, label in zip(ids, ["fraud", "fraud", "legit"], strict=True):
            pipe.store.record_feedback(tx, label, analyst="ana")
        pipe.metrics.observe_quality(pipe.store, every_s=0)
        third = samples(generate_latest(pipe.metrics.registry).decode())
        assert value(third, "txfast_feedback_labels") == 3
        assert value(third, "txfast_feedback_precision") == pytest.approx(2 / 3)
        assert value(third, "txfast_feedback_false_positive_ratio") == pytest.approx(1 / 3)
        assert value(third, "txfast_feedback_recall") == 1.0
    finally:
        pipe.store.close()


def test_metrics_can_be_switched_off(registry: Path, tmp_path: Path) -> None:
    settings = load_settings(
        env={}, overrides={"store": "duckdb::memory:", "registry": str(registry)}
    )
    settings = settings.replace(metrics=settings.metrics.__class__(enabled=False))
    pipe = Pipeline.from_settings(settings)
    assert pipe.metrics is None
    pipe.store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scraping_the_endpoint_during_a_run(drift_registry: Path, tmp_path: Path) -> None:
    """`txfast run --metrics`: scrapes during a paced run see the counters move forward."""
    registry = tmp_path / "registry"
    shutil.copytree(drift_registry, registry)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "txfast.cli",
            "run",
            "--source",
            "simulate",
            "--cards",
            "300",
            "--days",
            "30",
            "--rate",
            "400",
            "--store",
            f"duckdb:{tmp_path / 'r.duckdb'}",
            "--registry",
            str(registry),
            "--metrics",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TXFAST_BATCH_SIZE": "500"},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes: list[dict] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    m = samples(r.read().decode())
            except OSError:
                time.sleep(0.2)
                continue
            scored = value(m, "txfast_events_total", outcome="scored")
            if scored > (
                value(scrapes[-1], "txfast_events_total", outcome="scored") if scrapes else 0
            ):
                scrapes.append(m)
            if len(scrapes) == 3:
                break
            time.sleep(0.3)
    finally:
        proc.terminate()  # a 30-day stream at 400/s: stopped once seen moving
        _, err = proc.communicate(timeout=60)
    assert len(scrapes) == 3, err
    a, b = scrapes[0], scrapes[-1]
    for name, labels in [
        ("txfast_events_total", {"outcome": "consumed"}),
        ("txfast_batches_total", {}),
        ("txfast_score_count", {}),
        ("txfast_stage_seconds_count", {"stage": "store"}),
    ]:
        assert value(b, name, **labels) > value(a, name, **labels), name
    assert value(b, "txfast_score_count") == value(b, "txfast_events_total", outcome="scored")
    names = {re.sub(r"_(bucket|count|sum|total|created)$", "", k[0]) for k in b}
    for family in (
        "txfast_score",
        "txfast_stage_seconds",
        "txfast_model_info",
        "txfast_drift_psi",
        "txfast_throughput_tx_per_second",
    ):
        assert family in names, family
    exported = {re.sub(r"_total$", "", n) for n in METRIC_NAMES}
    assert {n for n in names if n.startswith("txfast_")} <= exported
