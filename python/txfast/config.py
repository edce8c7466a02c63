"""Settings: one frozen object, loaded from TOML plus a documented whitelist of variables.

Precedence (highest first): explicit overrides passed by the CLI, ``TXFAST_*`` environment
variables (see :data:`ENV_VARS`), the TOML file, the defaults below. Nothing is read at import
time; the settings object is passed into every constructor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from txfast.exceptions import ConfigError

__all__ = [
    "DEFAULT_BANDS",
    "DEFAULT_RATES",
    "ENV_VARS",
    "DecoderSettings",
    "FeatureSettings",
    "KafkaSettings",
    "PipelineSettings",
    "RetentionSettings",
    "RetrainSettings",
    "RiskSettings",
    "Rule",
    "Settings",
    "load_settings",
    "parse_duration_ms",
]

DEFAULT_RATES: dict[str, float] = {
    "EUR": 1.0,
    "USD": 0.92,
    "GBP": 1.17,
    "CHF": 1.05,
    "SEK": 0.088,
    "NOK": 0.086,
    "DKK": 0.134,
    "PLN": 0.23,
    "CZK": 0.04,
    "JPY": 0.0061,
    "CAD": 0.68,
    "AUD": 0.61,
}
"""Illustrative rates to EUR; production deployments configure their own table."""

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str | int) -> int:
    """Parse ``"30d"``, ``"1h"``, ``"500ms"`` (or an int of milliseconds) into milliseconds."""
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"duration must be positive, got {value}")
        return value
    m = _DURATION.match(value)
    if m is None:
        raise ConfigError(f"invalid duration {value!r}; use e.g. 500ms, 30s, 1m, 1h or 7d")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


class DecoderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Validation and normalisation of incoming events."""

    base_currency: str = "EUR"
    rates: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_RATES))
    max_event_bytes: int = 1_048_576
    max_amount: float = 1e9


class FeatureSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Windows of the native feature engine (see docs/features.md).

    ``labels = true`` adds the label features (``merchant_fraud_labels_<W>``,
    ``merchant_fraud_rate_<W>`` for each ``merchant_label_windows``, ``card_fraud_labels_<W>``
    for each ``card_label_windows``); off by default. Offline replays (``txfast train``,
    ``evaluate``, ``features``) then take a history's labels as known ``label_delay`` after
    their transaction.
    """

    card_windows: list[str] = msgspec.field(
        default_factory=lambda: ["1m", "1h", "24h", "7d", "30d"]
    )
    merchant_windows: list[str] = msgspec.field(default_factory=lambda: ["24h", "7d"])
    user_windows: list[str] = msgspec.field(default_factory=lambda: ["24h"])
    allowed_lateness: str = "1h"
    idle_ttl: str | None = None
    shards: int = 64
    threads: int | None = None
    labels: bool = False
    merchant_label_windows: list[str] = msgspec.field(default_factory=lambda: ["7d", "30d"])
    card_label_windows: list[str] = msgspec.field(default_factory=lambda: ["30d"])
    label_delay: str = "7d"
    label_poll: str = "5s"  # online: how often new labels are read from the store


class PipelineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Micro-batching and what is stored."""

    batch_size: int = 8192
    linger_ms: int = 50
    history_batch_size: int = 131072  # rows per batch when a history file is replayed
    history: str = "all"  # all | alerts | none
    store_features: str = "alerts"  # alerts | none
    store_retry_max_s: float = 5.0  # longest pause between store retries during an outage
    # DuckDB store: small batches are staged durably and written in full with the others of
    # the last this many ms (DuckDBStore defer_ms; alerts visible that much later). 0: off.
    store_defer_ms: int = 100
    # With `txfast run --api`: the scorer's threads run this much nicer (lower CPU priority)
    # than the API's, so that an analyst's request does not queue behind a batch. 0: equal.
    api_nice: int = 10
    log_every: str = "10s"  # how often the batch summary is logged (txfast.logs)


class ExplainSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[explain]``: feature contributions stored with every alert (``txfast.explain``)."""

    enabled: bool = True
    top_k: int = 5  # contributions kept per alert, largest by absolute value first
    method: str | None = None  # treeshap | path; None: the model's default


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[metrics]``: the scorer's Prometheus metrics (``txfast.metrics``)."""

    enabled: bool = True
    drift_stride: int = 16  # feature drift samples every n-th row of a batch
    quality_window_days: float = 30.0  # precision/recall/false positives over this window


class RetentionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Retention of the store, applied by ``txfast db prune``.

    Transactions, alerts and dead letters older than ``days`` are deleted (labelled ones are
    kept), after being archived to Parquet under ``archive_dir`` when it is set; ``days =
    None`` keeps everything.
    """

    days: int | None = None
    archive_dir: str | None = None


class RetrainSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Feedback retraining and its promotion gate (``txfast retrain``).

    The latest ``test_days`` days of the history are the test period, the ``delay_days``
    before them are skipped (their labels are not known yet), the candidate trains on the
    rest. It is promoted only if its average precision on the test period is at least the
    champion's plus ``min_gain`` (negative: tolerate that much loss).
    """

    test_days: int = 7
    delay_days: int = 7
    min_gain: float = 0.0


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Kafka source and sinks (``txfast run --source kafka``)."""

    bootstrap: str = "127.0.0.1:9092"
    group: str = "txfast"
    topics: list[str] = msgspec.field(default_factory=lambda: ["transactions_raw"])
    alerts_topic: str = "transactions_anomalies"
    dlq_topic: str = "transactions_dlq"
    features_topic: str | None = None
    instance: str = "0"  # stable per process: the transactional id is GROUP-INSTANCE
    checkpoint_dir: str = "var/checkpoints"
    checkpoint_interval_s: float = 30.0
    transaction_timeout_ms: int = 30_000
    max_in_flight: int = 2  # decided batches waiting for the sinks (memory bound, back-pressure)
    consumer: dict[str, str] = msgspec.field(default_factory=dict)  # extra librdkafka settings
    producer: dict[str, str] = msgspec.field(default_factory=dict)


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One business rule: every condition given must hold; then the rule's effects apply.

    Conditions: ``anomalous`` (score ≥ threshold), ``score_gte``/``score_lt``,
    ``amount_gte``/``amount_lt`` (base currency), ``risk_in`` (levels before rules),
    ``channel_in``, ``category_in``, ``country_in``, ``features_gte``/``features_lt`` (feature
    name → value). Effects: ``risk`` (sets the level) and/or ``action``.
    """

    name: str
    anomalous: bool | None = None
    score_gte: float | None = None
    score_lt: float | None = None
    amount_gte: float | None = None
    amount_lt: float | None = None
    risk_in: list[str] | None = None
    channel_in: list[str] | None = None
    category_in: list[str] | None = None
    country_in: list[str] | None = None
    features_gte: dict[str, float] | None = None
    features_lt: dict[str, float] | None = None
    risk: str | None = None
    action: str | None = None


def _default_rules() -> list[Rule]:
    return [
        Rule(
            name="critical_high_value",
            anomalous=True,
            amount_gte=5000.0,
            risk="CRITICAL",
            action="block",
        ),
        Rule(name="auto_approve_small", amount_lt=10.0, risk_in=["LOW"], action="approve"),
        Rule(
            name="review_risky_category",
            risk_in=["MEDIUM", "HIGH"],
            category_in=["4829", "6051", "5815", "5816", "5817", "5818", "5944", "5732"],
            action="review",
        ),
        Rule(
            name="review_impossible_travel",
            features_gte={"card_kmh_from_prev": 1000.0},
            channel_in=["pos", "atm"],
            action="review",
        ),
    ]


DEFAULT_BANDS: tuple[float, float, float] = (0.95, 0.99, 0.999)
"""MEDIUM, HIGH and CRITICAL bands when neither the settings nor the model set them."""


class RiskSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Score bands (calibrated score ≥ band → level) and default action per level.

    Bands left unset (``None``) come from the model (its calibrated ``risk_bands``) when
    no band is set here; once any band is set here, the settings' bands apply as a set,
    with :data:`DEFAULT_BANDS` for the ones left out.
    """

    medium: float | None = None
    high: float | None = None
    critical: float | None = None
    threshold: float | None = None  # None: the model's threshold
    actions: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "LOW": "approve",
            "MEDIUM": "approve",
            "HIGH": "alert",
            "CRITICAL": "alert",
        }
    )

    def bands(
        self, model_bands: tuple[float, float, float] | None = None
    ) -> tuple[float, float, float]:
        """The MEDIUM, HIGH and CRITICAL bands in force.

        Args:
            model_bands: The serving model's calibrated bands, if it has any.

        Returns:
            The configured bands if any is set (defaults filling the gaps), else the
            model's, else :data:`DEFAULT_BANDS`.
        """
        configured = (self.medium, self.high, self.critical)
        if any(b is not None for b in configured):
            return tuple(  # type: ignore[return-value]
                d if b is None else float(b) for b, d in zip(configured, DEFAULT_BANDS, strict=True)
            )
        if model_bands is not None:
            return (float(model_bands[0]), float(model_bands[1]), float(model_bands[2]))
        return DEFAULT_BANDS


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All txfast settings. Build with :func:`load_settings`."""

    store: str = "duckdb:var/txfast.duckdb"
    registry: str = "var/registry"
    model_name: str = "default"
    store_migrate: bool = True  # apply pending store migrations on open (else: txfast db upgrade)
    decoder: DecoderSettings = msgspec.field(default_factory=DecoderSettings)
    features: FeatureSettings = msgspec.field(default_factory=FeatureSettings)
    pipeline: PipelineSettings = msgspec.field(default_factory=PipelineSettings)
    risk: RiskSettings = msgspec.field(default_factory=RiskSettings)
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    explain: ExplainSettings = msgspec.field(default_factory=ExplainSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)
    rules: list[Rule] = msgspec.field(default_factory=_default_rules)

    def replace(self, **changes: Any) -> Settings:
        """A copy with top-level fields replaced."""
        return msgspec.structs.replace(self, **changes)


ENV_VARS: dict[str, str] = {
    "TXFAST_CONFIG": "path of the TOML settings file",
    "TXFAST_STORE": "store URL (`duckdb:PATH`)",
    "TXFAST_REGISTRY": "model registry directory",
    "TXFAST_MODEL_NAME": "model name in the registry",
    "TXFAST_BATCH_SIZE": "micro-batch size",
    "TXFAST_KAFKA_BOOTSTRAP": "Kafka bootstrap servers (`HOST:PORT[,HOST:PORT]`)",
}
"""The environment variables txfast reads, and nothing else."""


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from TOML, the ``TXFAST_*`` whitelist and explicit overrides.

    Args:
        path: TOML file; defaults to ``$TXFAST_CONFIG`` when set, else built-in defaults.
        env: Environment to read (``os.environ`` when omitted).
        overrides: Top-level fields to set last (``None`` values are ignored).

    Raises:
        ConfigError: On unreadable files, unknown keys or values of the wrong type.
    """
    env = os.environ if env is None else env
    path = path or env.get("TXFAST_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = msgspec.toml.decode(Path(path).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"settings file {path} does not exist") from None
        except msgspec.DecodeError as e:
            raise ConfigError(f"settings file {path} is not valid TOML: {e}") from e
    for var, key in (
        ("TXFAST_STORE", "store"),
        ("TXFAST_REGISTRY", "registry"),
        ("TXFAST_MODEL_NAME", "model_name"),
    ):
        if env.get(var):
            data[key] = env[var]
    if env.get("TXFAST_BATCH_SIZE"):
        try:
            batch = int(env["TXFAST_BATCH_SIZE"])
        except ValueError:
            raise ConfigError("TXFAST_BATCH_SIZE must be an integer") from None
        data.setdefault("pipeline", {})["batch_size"] = batch
    if env.get("TXFAST_KAFKA_BOOTSTRAP"):
        data.setdefault("kafka", {})["bootstrap"] = env["TXFAST_KAFKA_BOOTSTRAP"]
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}: {e}") from e
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.pipeline.batch_size <= 0:
        raise ConfigError("pipeline.batch_size must be positive")
    if not 0 <= s.pipeline.api_nice <= 19:
        raise ConfigError("pipeline.api_nice must be between 0 and 19")
    if s.pipeline.history_batch_size <= 0:
        raise ConfigError("pipeline.history_batch_size must be positive")
    if s.pipeline.history not in ("all", "alerts", "none"):
        raise ConfigError("pipeline.history must be one of all, alerts, none")
    if s.pipeline.store_features not in ("alerts", "none"):
        raise ConfigError("pipeline.store_features must be alerts or none")
    if s.metrics.drift_stride < 1 or s.metrics.quality_window_days <= 0:
        raise ConfigError("metrics.drift_stride must be >= 1 and quality_window_days > 0")
    if s.explain.top_k < 1:
        raise ConfigError("explain.top_k must be at least 1")
    if s.explain.method not in (None, "treeshap", "path"):
        raise ConfigError("explain.method must be treeshap or path (or unset: the model's)")
    medium, high, critical = s.risk.bands()
    if not 0.0 <= medium <= high <= critical <= 1.0:
        raise ConfigError("risk bands must satisfy 0 <= medium <= high <= critical <= 1")
    for w in (*s.features.card_windows, *s.features.merchant_windows, *s.features.user_windows):
        parse_duration_ms(w)
    parse_duration_ms(s.features.allowed_lateness)
    for w in (*s.features.merchant_label_windows, *s.features.card_label_windows):
        parse_duration_ms(w)
    parse_duration_ms(s.features.label_poll)
    parse_duration_ms(s.pipeline.log_every)
    if parse_duration_ms(s.features.label_delay) <= 0:
        raise ConfigError("features.label_delay must be positive (a label is known after its t)")
    if s.retention.days is not None and s.retention.days <= 0:
        raise ConfigError("retention.days must be positive")
    if s.retrain.test_days < 1:
        raise ConfigError("retrain.test_days must be at least 1")
    if s.retrain.delay_days < 0:
        raise ConfigError("retrain.delay_days must not be negative")
    if not -1.0 <= s.retrain.min_gain <= 1.0:
        raise ConfigError("retrain.min_gain must be between -1 and 1 (a difference of AP)")
