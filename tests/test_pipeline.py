"""End to end on embedded defaults: file → decode → features → ONNX → rules → DuckDB."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from txfast.cli import main
from txfast.config import load_settings
from txfast.pipeline import Pipeline
from txfast.sources import FileSource

MALFORMED = {
    "invalid_json": lambda e: b'{"transaction_id": "broken", "amount": ',
    "wrong_type": lambda e: json.dumps({**e, "amount": "12.30"}).encode(),
    "missing_field": lambda e: json.dumps({k: v for k, v in e.items() if k != "card_id"}).encode(),
    "invalid_amount": lambda e: json.dumps({**e, "amount": -5.0}).encode(),
    "unknown_currency": lambda e: json.dumps({**e, "currency": "ZZZ"}).encode(),
    "pan_card_id": lambda e: json.dumps({**e, "card_id": "4539 1488 0343 6467"}).encode(),
    "invalid_utf8": lambda e: b'{"transaction_id": "\xff\xfe"}',
}


@pytest.fixture(scope="module")
def dirty_file(stream_events: list[bytes], tmp_path_factory: pytest.TempPathFactory):
    """The stream with 1 % of lines replaced by malformed events of every kind."""
    rng = random.Random(3)
    lines = list(stream_events)
    bad_positions = sorted(rng.sample(range(len(lines)), k=len(lines) // 100))
    expected_reason = {}
    kinds = sorted(MALFORMED)
    for k, pos in enumerate(bad_positions):
        kind = kinds[k % len(kinds)]
        lines[pos] = MALFORMED[kind](json.loads(lines[pos]))
        expected_reason[pos] = kind
    path = tmp_path_factory.mktemp("stream") / "stream.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    good_ids = {
        json.loads(line)["transaction_id"]
        for i, line in enumerate(lines)
        if i not in expected_reason
    }
    return path, expected_reason, good_ids


def run_file(path: Path, store: str, registry: Path, batch_size: int = 1000):
    settings = load_settings(env={}, overrides={"store": store, "registry": str(registry)})
    settings = settings.replace(pipeline=settings.pipeline.__class__(batch_size=batch_size))
    pipe = Pipeline.from_settings(settings)
    src = FileSource(path, batch_size=batch_size)
    try:
        summary = pipe.run(src, source=src.name)
        rows = {
            "tx": pipe.store.query("SELECT transaction_id FROM transactions"),
            "alerts": pipe.store.query("SELECT transaction_id, risk_level, rules FROM alerts"),
            "dlq": pipe.store.query("SELECT position, reason, payload FROM dead_letters"),
        }
    finally:
        pipe.store.close()
    return summary, rows


def test_malformed_lines_go_to_dead_letters_and_the_rest_is_scored(dirty_file, registry, tmp_path):
    path, expected_reason, good_ids = dirty_file
    summary, rows = run_file(path, f"duckdb:{tmp_path / 'a.duckdb'}", registry)
    assert summary.events == len(good_ids) + len(expected_reason)
    assert summary.scored == len(good_ids)
    assert {r[0] for r in rows["tx"]} == good_ids, "every good line scored and stored"
    got = {pos: reason for pos, reason, _ in rows["dlq"]}
    assert got == expected_reason, "every bad line in the dead-letter table with its reason"
    for _pos, reason, payload in rows["dlq"]:
        assert payload, "original bytes kept"
        if reason == "pan_card_id":
            assert b"4539 1488 0343 6467" not in payload
    assert summary.alerts == len(rows["alerts"]) > 0
    levels = {r[1] for r in rows["alerts"]}
    assert levels <= {"LOW", "MEDIUM", "HIGH", "CRITICAL"}


def test_running_the_same_input_twice_leaves_one_alert_per_transaction(
    dirty_file, registry, tmp_path
):
    path, expected_reason, good_ids = dirty_file
    store = f"duckdb:{tmp_path / 'b.duckdb'}"
    first, rows1 = run_file(path, store, registry, batch_size=700)
    second, rows2 = run_file(path, store, registry, batch_size=1300)
    assert second.alerts == first.alerts, "same input, same decisions"
    ids = [r[0] for r in rows2["alerts"]]
    assert len(ids) == len(set(ids)) == first.alerts
    assert sorted(rows2["alerts"]) == sorted(rows1["alerts"])
    assert len(rows2["tx"]) == len(good_ids)
    assert len(rows2["dlq"]) == len(expected_reason)


def test_cli_end_to_end(history: Path, dirty_file, tmp_path: Path) -> None:
    path, expected_reason, good_ids = dirty_file
    reg = tmp_path / "registry"
    runner = CliRunner()
    r = runner.invoke(
        main,
        ["train", "--data", str(history), "--registry", str(reg), "--trees", "20"],
    )
    assert r.exit_code == 0, r.output
    assert "champion" in r.output
    store = f"duckdb:{tmp_path / 'c.duckdb'}"
    r = runner.invoke(
        main,
        ["run", "--source", f"file:{path}", "--store", store, "--registry", str(reg), "--json"],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["scored"] == len(good_ids)
    assert summary["rejected"] == len(expected_reason)
    assert sum(summary["rejected_by_reason"].values()) == len(expected_reason)
    r = runner.invoke(main, ["alerts", "--store", store, "--limit", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(r.output.strip().splitlines()) == min(3, summary["alerts"])
    r = runner.invoke(main, ["models", "list", "--registry", str(reg)])
    assert r.exit_code == 0 and "* default/v1" in r.output


def test_features_command_writes_every_feature(history: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from txfast.features import DEFAULT_FEATURE_NAMES

    out = tmp_path / "features.parquet"
    r = CliRunner().invoke(main, ["features", "--data", str(history), "--out", str(out)])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.column_names[:1] == ["transaction_id"]
    assert set(DEFAULT_FEATURE_NAMES) <= set(t.column_names)
    assert t.num_rows == pq.read_metadata(history).num_rows


def test_missing_model_is_a_clear_error(tmp_path: Path, dirty_file) -> None:
    path, _, _ = dirty_file
    r = CliRunner().invoke(
        main, ["run", "--source", f"file:{path}", "--registry", str(tmp_path / "empty")]
    )
    assert r.exit_code != 0
    assert "Error" in r.output


@pytest.mark.parametrize("cmd", ["simulate", "features", "train", "run", "alerts", "models"])
def test_every_command_has_help_with_examples(cmd: str) -> None:
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0
    assert "Usage" in r.output
    if cmd != "models":
        assert "Example" in r.output


def test_warm_start_equals_one_continuous_replay(history: Path, stream_events, registry, tmp_path):
    from txfast.sources import SourceBatch

    settings = load_settings(
        env={}, overrides={"store": f"duckdb:{tmp_path / 'w.duckdb'}", "registry": str(registry)}
    )
    warm = Pipeline.from_settings(settings)
    assert warm.warm(FileSource(history)) > 0
    got = warm.process(SourceBatch(0, payloads=stream_events), "s").features
    warm.store.close()

    cold = Pipeline.from_settings(settings.replace(store=f"duckdb:{tmp_path / 'c.duckdb'}"))
    for batch in FileSource(history):
        decoded = batch.decode(cold.decoder)
        cold.engine.process(**decoded.feature_inputs())
    want = cold.process(SourceBatch(0, payloads=stream_events), "s").features
    cold.store.close()
    import numpy as np

    np.testing.assert_array_equal(got, want)
    fresh = Pipeline.from_settings(settings.replace(store=f"duckdb:{tmp_path / 'f.duckdb'}"))
    unwarmed = fresh.process(SourceBatch(0, payloads=stream_events), "s").features
    fresh.store.close()
    new_merchant = fresh.feature_names.index("card_new_merchant_30d")
    assert unwarmed[:, new_merchant].sum() > got[:, new_merchant].sum(), "history matters"


def test_promoting_a_model_during_a_run_drops_and_doubles_nothing(
    history: Path, stream_events, registry: Path, tmp_path: Path
) -> None:
    """`txfast models promote` from another process mid-run: every event scored once,
    each batch wholly by one model, the switch between two batches."""
    import shutil
    import subprocess
    import sys

    from txfast.history import replay_features
    from txfast.registry import Registry
    from txfast.training.isolation_forest import train_isolation_forest

    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    fs = replay_features(load_settings(env={}), history)
    challenger = train_isolation_forest(
        fs.X, fs.feature_names, fs.feature_version, n_estimators=30, seed=99
    )
    assert challenger.register(root).version == "v2"
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(b"\n".join(stream_events) + b"\n")
    position = {json.loads(p)["transaction_id"]: i for i, p in enumerate(stream_events)}
    batch = 500

    def scores_by(version: str | None, name: str) -> tuple[dict, object]:
        settings = load_settings(
            env={}, overrides={"store": f"duckdb:{tmp_path / name}", "registry": str(root)}
        )
        pipe = Pipeline.from_settings(settings)
        promoted_after = None

        def batches():
            nonlocal promoted_after
            for i, b in enumerate(FileSource(stream, batch_size=batch)):
                if version is not None and i == 3:
                    cmd = [sys.executable, "-m", "txfast.cli", "models", "promote", version]
                    subprocess.run([*cmd, "--registry", str(root)], check=True)
                    promoted_after = i * batch
                yield b

        try:
            summary = pipe.run(batches(), source="stream")
            rows = pipe.store.query("SELECT transaction_id, score, model_version FROM transactions")
        finally:
            pipe.store.close()
        assert summary.scored == len(rows) == len(stream_events)
        return {r[0]: (r[1], r[2]) for r in rows}, promoted_after

    only_v1, _ = scores_by(None, "v1.duckdb")
    Registry(root).promote("default", "v2")
    only_v2, _ = scores_by(None, "v2.duckdb")
    Registry(root).promote("default", "v1")
    mixed, switch = scores_by("v2", "mixed.duckdb")
    differ = sum(only_v1[t][0] != only_v2[t][0] for t in position)
    assert differ > len(position) // 2, "the two models score differently"

    assert len(mixed) == len(position), "no event dropped, none stored twice"
    versions = [mixed[t][1] for t in sorted(mixed, key=position.__getitem__)]
    assert versions == ["v1"] * switch + ["v2"] * (len(versions) - switch)
    for tx, (score, version) in mixed.items():
        want = (only_v1 if version == "v1" else only_v2)[tx][0]
        assert score == pytest.approx(want, abs=1e-6), f"{tx} scored by {version} exactly once"
    assert Registry(root).champion_version("default") == "v2"


def test_a_shadow_challenger_is_stored_beside_the_champion_and_never_acts(
    history: Path, stream_events, registry: Path, tmp_path: Path
) -> None:
    import shutil

    from txfast.history import replay_features
    from txfast.registry import Registry
    from txfast.training.isolation_forest import train_isolation_forest

    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    fs = replay_features(load_settings(env={}), history)
    challenger = train_isolation_forest(
        fs.X, fs.feature_names, fs.feature_version, n_estimators=30, seed=5
    )
    assert challenger.register(root).version == "v2"
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(b"\n".join(stream_events) + b"\n")

    def run(name: str) -> dict:
        s = load_settings(
            env={}, overrides={"store": f"duckdb:{tmp_path / name}", "registry": str(root)}
        )
        pipe = Pipeline.from_settings(s)
        try:
            pipe.run(FileSource(stream, batch_size=1000), source="s")
            rows = pipe.store.query(
                "SELECT transaction_id, score, risk_level, action, model_version, shadow_score,"
                " shadow_model_version FROM transactions"
            )
            alerts = pipe.store.query("SELECT transaction_id, shadow_score FROM alerts")
        finally:
            pipe.store.close()
        return {"tx": {r[0]: r[1:] for r in rows}, "alerts": dict(alerts)}

    plain = run("plain.duckdb")
    Registry(root).set_challenger("default", "v2")
    shadowed = run("shadow.duckdb")
    Registry(root).promote("default", "v2")
    as_champion = run("v2.duckdb")

    assert plain["tx"].keys() == shadowed["tx"].keys() == as_champion["tx"].keys()
    for tx, (score, risk, action, version, shadow, shadow_version) in shadowed["tx"].items():
        assert (score, risk, action, version) == plain["tx"][tx][:4], "the shadow never acts"
        assert plain["tx"][tx][4] is None
        assert shadow_version == "v2"
        assert shadow == pytest.approx(as_champion["tx"][tx][0], abs=1e-6)
    assert shadowed["alerts"].keys() == plain["alerts"].keys()
    assert all(v is not None for v in shadowed["alerts"].values())


@pytest.mark.parametrize("defer_ms", [0, 100], ids=["written", "staged"])
def test_on_stored_hooks_run_after_each_durable_write(
    history: Path, registry: Path, defer_ms: int
) -> None:
    """An API served in the scorer's process is told of every store write, after it.

    Staged batches (DuckDB's ``defer_ms``) are told of again once the mover made them
    visible; the run's end moves what is left, so the last call sees every row.
    """
    settings = load_settings(
        env={},
        overrides={
            "store": "duckdb::memory:",
            "registry": str(registry),
            "pipeline": {"store_defer_ms": defer_ms},
        },
    )
    pipe = Pipeline.from_settings(settings)
    seen: list[int] = []
    pipe.on_stored.append(lambda: seen.append(pipe.store.count("transactions")))

    def broken() -> None:
        raise RuntimeError("a listener that fails")

    pipe.on_stored.append(broken)  # logged, never fails the batch
    summary = pipe.run(FileSource(str(history), batch_size=1000), source="history")
    if defer_ms:
        # The writes, then at least one move (the two threads' calls may interleave).
        assert len(seen) > summary.batches > 1
    else:
        assert len(seen) == summary.batches > 1
        assert seen == sorted(seen)  # each after its commit
    assert seen[-1] == summary.scored
    pipe.store.close()
