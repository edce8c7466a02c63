"""The scoring pipeline: decode → features → score → rules → store, one batch at a time.

Every stage takes and returns whole columns; the batch is the unit of durability (its store
write is one transaction). No stage loops over transactions in Python.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import pyarrow as pa

from txfast.config import Settings, parse_duration_ms
from txfast.decode import DecodedBatch, Decoder, Rejected
from txfast.exceptions import StoreError
from txfast.features import FeatureEngine, engine_from_settings
from txfast.labels import LabelBatch, poll_labels
from txfast.logs import BatchLog
from txfast.metrics import ScorerMetrics
from txfast.rules import LEVELS, Decisions, RuleEngine
from txfast.scoring import Scorer
from txfast.sources import SourceBatch
from txfast.store import ScoredBatch, Store, open_store

__all__ = ["BatchResult", "Pipeline", "RunSummary", "build_engine", "build_decoder"]

log = logging.getLogger("txfast.pipeline")


def build_engine(settings: Settings) -> FeatureEngine:
    """A feature engine with the configured windows (label windows when ``labels`` is on)."""
    return engine_from_settings(settings.features)


def build_decoder(settings: Settings) -> Decoder:
    """A decoder with the configured rates table and limits."""
    d = settings.decoder
    return Decoder(
        d.rates,
        base_currency=d.base_currency,
        max_event_bytes=d.max_event_bytes,
        max_amount=d.max_amount,
    )


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch produced (kept for callers that want the columns, e.g. tests)."""

    decoded: DecodedBatch
    features: np.ndarray
    scores: np.ndarray
    decisions: Decisions
    stored: ScoredBatch
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class RunSummary:
    """Counters of a run, printed by ``txfast run --json``."""

    events: int = 0
    scored: int = 0
    rejected: int = 0
    alerts: int = 0
    batches: int = 0
    store_retries: int = 0
    labels_fed: int = 0
    seconds: float = 0.0
    by_risk: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    model_version: str = ""
    store: str = ""

    @property
    def tx_per_s(self) -> float:
        """Events per second over the run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "events": self.events,
            "scored": self.scored,
            "rejected": self.rejected,
            "alerts": self.alerts,
            "batches": self.batches,
            "store_retries": self.store_retries,
            "labels_fed": self.labels_fed,
            "seconds": round(self.seconds, 3),
            "tx_per_s": round(self.tx_per_s, 1),
            "by_risk": self.by_risk,
            "rejected_by_reason": self.rejected_by_reason,
            "model_version": self.model_version,
            "store": self.store,
        }


class Pipeline:
    """Scores batches and writes them to the store.

    Args:
        settings: The settings (windows, rates, rules, what to store).
        store: Where results go.
        scorer: The champion model.
        engine: Feature state; a fresh one from ``settings`` when omitted.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        scorer: Scorer,
        engine: FeatureEngine | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.engine = engine or build_engine(settings)
        self.decoder = build_decoder(settings)
        self.feature_names = list(self.engine.feature_names)
        self.rules = RuleEngine(settings.risk, settings.rules, self.feature_names)
        self.summary = RunSummary(model_version=scorer.model_version, store=store.url)
        self.metrics: ScorerMetrics | None = None
        if settings.metrics.enabled:
            self.metrics = ScorerMetrics(drift_stride=settings.metrics.drift_stride)
            self.metrics.observe_model(scorer.metadata, self.feature_names)
        self.batch_log = BatchLog(
            log, parse_duration_ms(settings.pipeline.log_every) / 1000, LEVELS
        )
        # Called after every successful store write (any thread), e.g. by an API served in
        # this process, so that its live feed reads the new alerts at once; and when a store
        # that stages small batches has made staged ones visible (DuckDB's mover thread).
        self.on_stored: list[Callable[[], None]] = []
        store.add_visible_listener(self._notify_stored)
        self.label_cursor = 0  # the last store label event given to the engine
        self._label_poll_s = parse_duration_ms(settings.features.label_poll) / 1000
        self._next_label_poll = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        """Open the store and load the champion model named in ``settings``.

        A DuckDB store stages small batches for ``[pipeline] store_defer_ms`` (see
        :class:`~txfast.store.duckdb_store.DuckDBStore`'s ``defer_ms``).
        """
        engine = build_engine(settings)
        scorer = Scorer.from_registry(
            settings.registry,
            settings.model_name,
            feature_names=list(engine.feature_names),
            feature_version=engine.feature_version,
            explain=settings.explain.enabled,
            explain_top_k=settings.explain.top_k,
            explain_method=settings.explain.method,
        )
        options = (
            {"defer_ms": settings.pipeline.store_defer_ms}
            if settings.store.startswith("duckdb:")
            else {}
        )
        store = open_store(settings.store, migrate=settings.store_migrate, **options)
        return cls(settings, store=store, scorer=scorer, engine=engine)

    def process(self, batch: SourceBatch, source: str) -> BatchResult:
        """Decode, featurise, score, decide and store one batch (durable on return)."""
        # Between batches: follow the champion pointer, so each batch is scored by one model.
        if self.scorer.reload_if_changed():
            self.summary.model_version = self.scorer.model_version
            if self.metrics is not None:
                self.metrics.observe_model(self.scorer.metadata, self.feature_names)
        self.poll_labels()
        t0 = time.perf_counter()
        decoded = batch.decode(self.decoder)
        if batch.position:
            rejected = [
                Rejected(r.index + batch.position, r.reason, r.message, r.payload)
                for r in decoded.rejected
            ]
        else:
            rejected = decoded.rejected
        t1 = time.perf_counter()
        if len(decoded):
            features = self.engine.process(**decoded.feature_inputs())
        else:
            features = np.zeros((0, len(self.feature_names)), dtype=np.float32)
        stages = {"decode": t1 - t0, "features": time.perf_counter() - t1}
        result = self.decide(decoded, features, rejected, source, stages=stages)
        self.write(result)
        if self.metrics is not None:
            self.metrics.observe_state(lambda: [self.engine.stats()])
            self.metrics.observe_quality(
                self.store, window_days=self.settings.metrics.quality_window_days
            )
        return result

    def fetch_labels(self, after: int, *, force: bool = False) -> LabelBatch | None:
        """New label events in the store after event ``after``, at most every ``label_poll``.

        ``None`` when label features are off, it is not time to poll yet, or the store is
        unreachable (logged; the next poll tries again).
        """
        if not self.engine.labels_enabled:
            return None
        now = time.monotonic()
        if not force and now < self._next_label_poll:
            return None
        self._next_label_poll = now + self._label_poll_s
        try:
            return poll_labels(self.store, after)
        except StoreError as e:
            log.warning(
                "labels not polled (store unavailable), retrying later: %s",
                e,
                extra={"event": "labels_poll_failed", "error": str(e)},
            )
            return None

    def poll_labels(self, *, force: bool = False) -> int:
        """Feed the engine the labels recorded in the store since the last poll.

        Called before every batch; polls at most every ``[features] label_poll`` unless
        ``force``. Returns the number of labels fed (see :mod:`txfast.labels`).
        """
        fed = 0
        while (batch := self.fetch_labels(self.label_cursor, force=force)) is not None:
            if not len(batch):
                break
            fed += batch.feed(self.engine, self.label_cursor)
            self.label_cursor = batch.cursor
            force = True  # a full page: there may be more
        self.summary.labels_fed += fed
        return fed

    def finish(
        self,
        decoded: DecodedBatch,
        features: np.ndarray,
        rejected: list[Rejected],
        source: str,
    ) -> BatchResult:
        """Score, decide and store featurised rows (durable on return).

        Args:
            decoded: The accepted rows.
            features: Their feature matrix (same row order).
            rejected: Dead letters of the batch, positions already absolute.
            source: Source name, the dead letters' default key.
        """
        result = self.decide(decoded, features, rejected, source)
        self.write(result)
        return result

    def decide(
        self,
        decoded: DecodedBatch,
        features: np.ndarray,
        rejected: list[Rejected],
        source: str,
        *,
        stages: dict[str, float] | None = None,
    ) -> BatchResult:
        """Score and decide featurised rows and build the tables to store; nothing is written.

        The streaming scorer decides batch *n + 1* while batch *n* is being written; callers
        that do not overlap stages use :meth:`finish`. ``stages`` (seconds per stage so far)
        is completed with ``score``, ``rules`` and ``explain`` and kept in the result.
        """
        stages = {} if stages is None else stages
        t0 = time.perf_counter()
        c = decoded.columns
        scored = self.scorer.score_batch(features)
        scores = scored.score
        t1 = time.perf_counter()
        decisions = self.rules.apply(
            scores,
            scored.threshold,
            c["amount_base"],
            features,
            channel=c["channel"],
            category=c["merchant_category"],
            country=c["country_code"],
            bands=scored.bands,
        )
        alert_rows = np.flatnonzero(decisions.is_alert)
        t2 = time.perf_counter()
        explanations = None
        if scored.explainer is not None and len(alert_rows):
            # Alerts only: a few rows per batch, explained in Rust with the GIL released.
            explanations = pa.array(scored.explainer.explain(features[alert_rows]), pa.string())
        t3 = time.perf_counter()
        stages.update(score=t1 - t0, rules=t2 - t1, explain=t3 - t2)
        stored = self._tables(
            decoded,
            features,
            scores,
            decisions,
            rejected,
            source,
            scored.model_version,
            alert_rows,
            explanations,
            None if scored.shadow_score is None else (scored.shadow_score, scored.shadow_version),
        )
        return BatchResult(decoded, features, scores, decisions, stored, stages)

    def write(
        self,
        result: BatchResult,
        *,
        give_up: Callable[[int], bool] = lambda attempt: False,
        observe: bool = True,
    ) -> None:
        """Write a decided batch to the store (one transaction; durable on return).

        A failing store (say PostgreSQL restarting) is retried with exponential backoff, up to
        ``settings.pipeline.store_retry_max_s`` between attempts, for as long as it takes:
        the caller holds its input (and its offsets) meanwhile, which is the back-pressure.

        Args:
            result: The decided batch.
            give_up: Called with the number of failed attempts after each failure; when it
                returns True the last :class:`~txfast.exceptions.StoreError` is raised.
            observe: Count the batch in the metrics now (the Kafka scorer counts it once its
                transaction committed, with :meth:`observe`).
        """
        attempt = 0
        t0 = time.perf_counter()
        while True:
            try:
                self.store.write_batch(result.stored, history=self.settings.pipeline.history)
                break
            except StoreError as e:
                attempt += 1
                self.summary.store_retries += 1
                if give_up(attempt):
                    raise
                delay = min(self.settings.pipeline.store_retry_max_s, 0.1 * 2**attempt)
                log.error(
                    "store write failed (attempt %d); holding the batch, retrying in %.1f s: %s",
                    attempt,
                    delay,
                    e,
                    extra={
                        "event": "store_write_failed",
                        "attempt": attempt,
                        "retry_in_s": delay,
                        "error": str(e),
                    },
                )
                time.sleep(delay)
        if attempt:
            log.warning(
                "store is back after %d failed attempts",
                attempt,
                extra={"event": "store_recovered", "attempts": attempt},
            )
        result.stages["store"] = time.perf_counter() - t0
        self._notify_stored()
        self._count(result.decoded, result.decisions, result.stored.dead_letters)
        if observe:
            self.observe(result)

    def _notify_stored(self) -> None:
        for hook in self.on_stored:
            try:
                hook()
            except Exception:  # a listener's failure never fails the batch
                log.exception("an on_stored hook failed")

    def observe(self, result: BatchResult) -> None:
        """Count a durable batch in the metrics and the periodic batch summary log."""
        d = result.decisions
        levels = d.level[d.is_alert]
        reasons = [r.reason for r in result.stored.dead_letters]
        self.batch_log.add(
            events=result.decoded.size,
            scored=len(result.decoded),
            alert_levels=levels,
            rejected_reasons=reasons,
            stages=result.stages,
            model_version=self.summary.model_version,
        )
        if self.metrics is not None:
            self.metrics.observe_batch(
                events=result.decoded.size,
                scored=len(result.decoded),
                rejected_reasons=reasons,
                alert_levels=levels,
                scores=result.scores,
                features=result.features,
                stages=result.stages,
                level_names=LEVELS,
            )

    def _tables(
        self,
        decoded: DecodedBatch,
        features: np.ndarray,
        scores: np.ndarray,
        d: Decisions,
        rejected: list,
        source: str,
        model_version: str,
        rows: np.ndarray,
        explanations: pa.Array | None,
        shadow: tuple[np.ndarray, str | None] | None = None,
    ) -> ScoredBatch:
        c = decoded.columns
        n = len(decoded)
        now = pa.scalar(int(time.time() * 1000), type=pa.timestamp("ms"))
        label = c["label"]
        common = {
            "transaction_id": c["transaction_id"],
            "ts": pa.array(c["ts_ms"], type=pa.int64()).cast(pa.timestamp("ms")),
            "card_id": c["card_id"],
            "user_id": c["user_id"],
            "merchant_id": c["merchant_id"],
            "merchant_category": c["merchant_category"],
            "country": c["country_code"],
            "channel": c["channel_name"],
            "amount": pa.array(c["amount"]),
            "currency": c["currency"],
            "amount_base": pa.array(c["amount_base"]),
            "score": pa.array(scores, type=pa.float32()),
            "is_anomaly": pa.array(d.is_anomaly),
            "risk_level": d.level_names(),
            "action": d.action_names(),
            "model_version": pa.repeat(pa.scalar(model_version), n),
        }
        if shadow is not None:  # a challenger scored in shadow: stored, never acting
            common["shadow_score"] = pa.array(shadow[0], type=pa.float32())
            common["shadow_model_version"] = pa.repeat(pa.scalar(shadow[1], pa.string()), n)
        tx = pa.table(
            {
                **common,
                "label": pa.array(label, mask=label < 0, type=pa.int8()),
                "scored_at": pa.array(np.full(n, now.value, dtype=np.int64)).cast(
                    pa.timestamp("ms")
                ),
            }
        )
        alerts = pa.table({k: v.take(pa.array(rows)) for k, v in common.items()})
        k = len(rows)
        if self.settings.pipeline.store_features == "alerts":
            nf = features.shape[1]
            feats: pa.Array = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (k + 1) * nf, nf, dtype=np.int32)),
                pa.array(np.ascontiguousarray(features[rows]).ravel(), type=pa.float32()),
            )
        else:
            feats = pa.nulls(k, pa.list_(pa.float32()))
        alerts = (
            alerts.append_column("rules", d.rules_lists(rows))
            .append_column("feature_version", pa.repeat(pa.scalar(self.engine.feature_version), k))
            .append_column("features", feats)
            .append_column(
                "explanation",
                pa.nulls(k, pa.string()) if explanations is None else explanations,
            )
            .append_column(
                "created_at",
                pa.array(np.full(k, now.value, dtype=np.int64)).cast(pa.timestamp("ms")),
            )
        )
        return ScoredBatch(tx, alerts, rejected, source, feature_names=tuple(self.feature_names))

    def _count(self, decoded: DecodedBatch, d: Decisions, rejected: list) -> None:
        s = self.summary
        s.batches += 1
        s.events += decoded.size
        s.scored += len(decoded)
        s.rejected += len(rejected)
        s.alerts += int(np.count_nonzero(d.is_alert))
        counts = np.bincount(d.level, minlength=len(LEVELS))
        for i, lv in enumerate(LEVELS):
            s.by_risk[lv] += int(counts[i])
        for r in rejected:
            s.rejected_by_reason[r.reason] = s.rejected_by_reason.get(r.reason, 0) + 1

    def warm(self, batches: Iterable[SourceBatch]) -> int:
        """Replay history into the feature state only (nothing scored or stored).

        Use it to start a scorer with the cards' windows already filled, e.g. from the file the
        model was trained on. Returns the number of events replayed.
        """
        n = 0
        for batch in batches:
            decoded = batch.decode(self.decoder)
            if len(decoded):
                self.engine.process(**decoded.feature_inputs())
            n += len(decoded)
        return n

    def run(
        self,
        batches: Iterable[SourceBatch],
        *,
        source: str,
        progress: TextIO | None = None,
        max_events: int | None = None,
    ) -> RunSummary:
        """Process every batch of a source; print a live progress line to ``progress``."""
        t0 = time.perf_counter()
        last = 0.0
        for batch in batches:
            self.process(batch, source)
            now = time.perf_counter()
            self.summary.seconds = now - t0
            if progress is not None and now - last > 0.5:
                last = now
                _progress(progress, self.summary)
            if max_events is not None and self.summary.events >= max_events:
                break
        self.store.flush_deferred()  # the run's batches visible when it returns
        self.summary.seconds = time.perf_counter() - t0
        self.batch_log.flush()
        if progress is not None:
            _progress(progress, self.summary)
            progress.write("\n")
        return self.summary


def _progress(out: TextIO, s: RunSummary) -> None:
    line = (
        f"\r{s.events:>10,} events  {s.tx_per_s:>10,.0f} tx/s  {s.alerts:>8,} alerts  "
        f"{s.rejected:>6,} rejected  CRITICAL {s.by_risk['CRITICAL']:,}  HIGH {s.by_risk['HIGH']:,}"
    )
    out.write(line)
    out.flush()


def stderr_if_tty() -> TextIO | None:
    """``sys.stderr`` when it is a terminal, else ``None`` (no progress noise in logs)."""
    return sys.stderr if sys.stderr.isatty() else None
