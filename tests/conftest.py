"""Shared fixtures: a small simulated history and a registry with a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["kafka_fixtures", "pg_fixtures"]


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten days of simulated history for 300 cards, as Parquet."""
    from txfast.simulate import simulate, write_table

    path = tmp_path_factory.mktemp("history") / "history.parquet"
    write_table(simulate(300, 10, seed=7, start="2026-01-01"), path)
    return path


@pytest.fixture(scope="session")
def stream_events(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Two later days for the same cards, as JSON payloads (the "live" stream)."""
    from txfast.simulate import iter_json_batches, simulate

    table = simulate(300, 2, seed=8, start="2026-01-11")
    return [p for batch in iter_json_batches(table, 4096) for p in batch]


@pytest.fixture(scope="session")
def registry(history: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion is an Isolation Forest trained on ``history``."""
    from txfast.config import load_settings
    from txfast.history import replay_features
    from txfast.registry import Registry
    from txfast.training.isolation_forest import train_isolation_forest

    root = tmp_path_factory.mktemp("registry")
    fs = replay_features(load_settings(env={}), history)
    trained = train_isolation_forest(
        fs.X, fs.feature_names, fs.feature_version, n_estimators=50, seed=1
    )
    trained.register(Registry(root), promote=True)  # with its explainer
    return root
