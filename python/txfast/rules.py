"""Risk levels and business rules, applied to whole batches with numpy.

A calibrated score in [0, 1] maps to a level through the bands of
:class:`txfast.config.RiskSettings` (or, when none is configured, the serving model's
calibrated bands; see :meth:`txfast.config.RiskSettings.bands`); each level has a default
action; then the configured
rules run in order, each on the rows where all its conditions hold, setting the level and/or
the action (a later rule overrides an earlier one). Every row records which rules fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast.config import RiskSettings, Rule
from txfast.contract import CHANNELS
from txfast.exceptions import ConfigError

__all__ = ["ACTIONS", "LEVELS", "Decisions", "RuleEngine"]

LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
ACTIONS = ("approve", "review", "alert", "block")


@dataclass(frozen=True, slots=True)
class Decisions:
    """Per-row outcome of scoring and rules.

    Attributes:
        is_anomaly: ``score >= threshold``.
        level: Index into :data:`LEVELS`.
        action: Index into :data:`ACTIONS`.
        fired: Bit ``k`` set when rule ``k`` fired.
        rule_names: Names of the rules, by bit.
    """

    is_anomaly: np.ndarray
    level: np.ndarray
    action: np.ndarray
    fired: np.ndarray
    rule_names: tuple[str, ...]

    @property
    def is_alert(self) -> np.ndarray:
        """Rows whose action is not ``approve``: they become alerts."""
        return self.action != 0

    def level_names(self) -> pa.Array:
        """Risk levels as an Arrow string array."""
        return pa.array(LEVELS).take(pa.array(self.level))

    def action_names(self) -> pa.Array:
        """Actions as an Arrow string array."""
        return pa.array(ACTIONS).take(pa.array(self.action))

    def rules_lists(self, rows: np.ndarray | None = None) -> pa.Array:
        """Fired rule names per row (``list<string>``), built once per distinct combination."""
        fired = self.fired if rows is None else self.fired[rows]
        uniq, inverse = np.unique(fired, return_inverse=True)
        lists = [
            [n for k, n in enumerate(self.rule_names) if int(u) >> k & 1] for u in uniq.tolist()
        ]
        return pa.array(lists, type=pa.list_(pa.string())).take(pa.array(inverse.ravel()))


class RuleEngine:
    """Compiled risk bands and rules.

    Args:
        risk: Bands, threshold override and default actions.
        rules: Business rules, applied in order.
        feature_names: Columns of the feature matrix (for ``features_gte``/``features_lt``).

    Raises:
        ConfigError: On unknown levels, actions or feature names, or more than 64 rules.
    """

    def __init__(
        self, risk: RiskSettings, rules: Sequence[Rule], feature_names: Sequence[str]
    ) -> None:
        if len(rules) > 64:
            raise ConfigError("at most 64 rules are supported")
        self.risk = risk
        self.rules = tuple(rules)
        self._feature_index = {n: i for i, n in enumerate(feature_names)}
        self._default_action = np.zeros(len(LEVELS), dtype=np.int8)
        for level, action in risk.actions.items():
            self._default_action[self._level(level, "risk.actions")] = self._action(
                action, "risk.actions"
            )
        seen: set[str] = set()
        for r in self.rules:
            if r.name in seen:
                raise ConfigError(f"duplicate rule name {r.name!r}")
            seen.add(r.name)
            if r.risk is None and r.action is None:
                raise ConfigError(f"rule {r.name!r} sets neither risk nor action")
            if r.risk is not None:
                self._level(r.risk, r.name)
            if r.action is not None:
                self._action(r.action, r.name)
            for lv in r.risk_in or ():
                self._level(lv, r.name)
            for ch in r.channel_in or ():
                if ch not in CHANNELS:
                    raise ConfigError(f"rule {r.name!r}: unknown channel {ch!r}")
            for f in (*(r.features_gte or {}), *(r.features_lt or {})):
                if f not in self._feature_index:
                    raise ConfigError(f"rule {r.name!r}: unknown feature {f!r}")

    @staticmethod
    def _level(name: str, where: str) -> int:
        try:
            return LEVELS.index(name.upper())
        except ValueError:
            raise ConfigError(f"{where}: unknown risk level {name!r}; use {LEVELS}") from None

    @staticmethod
    def _action(name: str, where: str) -> int:
        try:
            return ACTIONS.index(name.lower())
        except ValueError:
            raise ConfigError(f"{where}: unknown action {name!r}; use {ACTIONS}") from None

    def apply(
        self,
        score: np.ndarray,
        threshold: float,
        amount: np.ndarray,
        features: np.ndarray,
        *,
        channel: np.ndarray,
        category: pa.Array,
        country: pa.Array,
        bands: tuple[float, float, float] | None = None,
    ) -> Decisions:
        """Decide level, action and fired rules for a batch (vectorised).

        Args:
            score: Calibrated scores in [0, 1].
            threshold: The model's threshold unless ``risk.threshold`` overrides it.
            bands: The model's MEDIUM/HIGH/CRITICAL bands, used unless the settings set
                bands (``ScoredBatch.bands``).
            amount: Amounts in the base currency.
            features: The feature matrix (rows aligned with ``score``).
            channel: Channel codes (0 unknown, then :data:`txfast.contract.CHANNELS` from 1).
            category: Merchant categories (Arrow strings, nullable).
            country: Country codes (Arrow strings, nullable).
        """
        r = self.risk
        thr = r.threshold if r.threshold is not None else threshold
        anomalous = score >= thr
        medium, high, critical = r.bands(bands)
        level = (
            (score >= medium).astype(np.int8)
            + (score >= high).astype(np.int8)
            + (score >= critical).astype(np.int8)
        )
        base_level = level.copy()
        action = self._default_action[level]
        fired = np.zeros(len(score), dtype=np.uint64)
        for k, rule in enumerate(self.rules):
            mask = self._mask(
                rule, anomalous, score, amount, base_level, features, channel, category, country
            )
            if not mask.any():
                continue
            fired[mask] |= np.uint64(1 << k)
            if rule.risk is not None:
                level[mask] = LEVELS.index(rule.risk.upper())
            if rule.action is not None:
                action[mask] = ACTIONS.index(rule.action.lower())
        return Decisions(anomalous, level, action, fired, tuple(x.name for x in self.rules))

    def _mask(
        self,
        rule: Rule,
        anomalous: np.ndarray,
        score: np.ndarray,
        amount: np.ndarray,
        level: np.ndarray,
        features: np.ndarray,
        channel: np.ndarray,
        category: pa.Array,
        country: pa.Array,
    ) -> np.ndarray:
        m = np.ones(len(score), dtype=bool)
        if rule.anomalous is not None:
            m &= anomalous if rule.anomalous else ~anomalous
        if rule.score_gte is not None:
            m &= score >= rule.score_gte
        if rule.score_lt is not None:
            m &= score < rule.score_lt
        if rule.amount_gte is not None:
            m &= amount >= rule.amount_gte
        if rule.amount_lt is not None:
            m &= amount < rule.amount_lt
        if rule.risk_in is not None:
            m &= np.isin(level, [LEVELS.index(x.upper()) for x in rule.risk_in])
        if rule.channel_in is not None:
            m &= np.isin(channel, [CHANNELS.index(c) + 1 for c in rule.channel_in])
        if rule.category_in is not None:
            m &= _is_in(category, rule.category_in)
        if rule.country_in is not None:
            m &= _is_in(country, [c.upper() for c in rule.country_in])
        for name, v in (rule.features_gte or {}).items():
            m &= features[:, self._feature_index[name]] >= v
        for name, v in (rule.features_lt or {}).items():
            m &= features[:, self._feature_index[name]] < v
        return m


def _is_in(values: pa.Array, allowed: Sequence[str]) -> np.ndarray:
    hit = pc.is_in(values, value_set=pa.array(list(allowed), type=values.type))
    return np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
