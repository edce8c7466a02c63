"""Risk bands and business rules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from txfast.config import RiskSettings, Rule, load_settings
from txfast.exceptions import ConfigError
from txfast.rules import ACTIONS, LEVELS, RuleEngine

NAMES = ["amount_base", "card_kmh_from_prev"]


def apply(engine: RuleEngine, score, amount, kmh=None, channel=None, category=None):
    n = len(score)
    feats = np.zeros((n, 2), dtype=np.float32)
    feats[:, 0] = amount
    if kmh is not None:
        feats[:, 1] = kmh
    return engine.apply(
        np.asarray(score, dtype=np.float32),
        0.99,
        np.asarray(amount, dtype=np.float64),
        feats,
        channel=np.asarray(channel if channel is not None else [1] * n, dtype=np.uint8),
        category=pa.array(category if category is not None else [None] * n, pa.large_string()),
        country=pa.array([None] * n, pa.large_string()),
    )


def test_bands_map_scores_to_levels_and_default_actions() -> None:
    eng = RuleEngine(RiskSettings(medium=0.5, high=0.9, critical=0.99), [], NAMES)
    d = apply(eng, [0.1, 0.5, 0.89, 0.9, 0.995], [1.0] * 5)
    assert [LEVELS[i] for i in d.level] == ["LOW", "MEDIUM", "MEDIUM", "HIGH", "CRITICAL"]
    assert [ACTIONS[i] for i in d.action] == ["approve", "approve", "approve", "alert", "alert"]
    assert d.is_anomaly.tolist() == [False, False, False, False, True]


def test_default_rules() -> None:
    s = load_settings(env={})
    eng = RuleEngine(s.risk, s.rules, NAMES)
    d = apply(
        eng,
        score=[0.9991, 0.10, 0.97, 0.10, 0.10],
        amount=[6000.0, 5.0, 80.0, 50.0, 50.0],
        kmh=[0, 0, 0, 5000, 5000],
        channel=[1, 2, 2, 1, 2],
        category=["5411", "5411", "6051", None, None],
    )
    names = d.rules_lists().to_pylist()
    assert names[0] == ["critical_high_value"] and LEVELS[d.level[0]] == "CRITICAL"
    assert ACTIONS[d.action[0]] == "block"
    assert names[1] == ["auto_approve_small"] and ACTIONS[d.action[1]] == "approve"
    assert names[2] == ["review_risky_category"] and ACTIONS[d.action[2]] == "review"
    assert names[3] == ["review_impossible_travel"] and ACTIONS[d.action[3]] == "review"
    assert names[4] == [], "ecom is not card-present: no impossible travel"
    assert d.is_alert.tolist() == [True, False, True, True, False]


def test_later_rules_override_earlier_ones() -> None:
    rules = [
        Rule(name="a", amount_gte=10, action="review"),
        Rule(name="b", amount_gte=100, action="approve", risk="LOW"),
    ]
    eng = RuleEngine(RiskSettings(), rules, NAMES)
    d = apply(eng, [0.999, 0.999], [50.0, 500.0])
    assert [ACTIONS[i] for i in d.action] == ["review", "approve"]
    assert d.rules_lists().to_pylist() == [["a"], ["a", "b"]]
    assert d.rules_lists(np.array([1])).to_pylist() == [["a", "b"]]


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (Rule(name="x", risk="SEVERE"), "unknown risk level"),
        (Rule(name="x", action="escalate"), "unknown action"),
        (Rule(name="x", action="review", features_gte={"nope": 1.0}), "unknown feature"),
        (Rule(name="x", action="review", channel_in=["web"]), "unknown channel"),
        (Rule(name="x"), "neither"),
    ],
)
def test_invalid_rules_are_refused(rule: Rule, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RuleEngine(RiskSettings(), [rule], NAMES)


def test_rules_from_toml(tmp_path) -> None:
    p = tmp_path / "txfast.toml"
    p.write_text(
        """
store = "duckdb::memory:"
[risk]
medium = 0.5
high = 0.8
critical = 0.95
[[rules]]
name = "big"
amount_gte = 1000.0
action = "review"
"""
    )
    s = load_settings(p, env={})
    assert s.risk.high == 0.8 and [r.name for r in s.rules] == ["big"]
    d = apply(RuleEngine(s.risk, s.rules, NAMES), [0.1, 0.1], [10.0, 2000.0])
    assert [ACTIONS[i] for i in d.action] == ["approve", "review"]


def test_settings_errors_name_the_problem(tmp_path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[risk]\nmedium = 0.9\nhigh = 0.5\n")
    with pytest.raises(ConfigError, match="bands"):
        load_settings(p, env={})
    p.write_text("[pipeline]\nbatch_sise = 10\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_settings(p, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})


def test_environment_whitelist() -> None:
    s = load_settings(env={"TXFAST_STORE": "duckdb:/tmp/x.duckdb", "TXFAST_BATCH_SIZE": "100"})
    assert s.store == "duckdb:/tmp/x.duckdb" and s.pipeline.batch_size == 100
    with pytest.raises(ConfigError, match="integer"):
        load_settings(env={"TXFAST_BATCH_SIZE": "many"})
