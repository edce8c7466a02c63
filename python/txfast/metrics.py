"""Prometheus metrics of a scorer: throughput, stages, latency, state, model, quality, drift.

Everything is updated once per batch, never per event: counters and per-stage histograms
through ``prometheus_client``, and the per-event distributions (end-to-end latency, scores)
and the drift counts through numpy arrays that a custom collector turns into Prometheus
histograms and gauges at scrape time. Feature drift is measured on a strided sample of each
batch's rows (every ``drift_stride``-th), which is plenty for a distribution and keeps the
cost flat.

Metric names (all prefixed ``txfast_``; the Grafana dashboard in ``deploy/`` uses these):

==========================================  =================================================
``events_total{outcome}``                   consumed, scored, rejected, replayed
``rejected_total{reason}``                  dead letters by reason code
``alerts_total{risk}``                      alerts by risk level
``batches_total``                           batches decided
``batch_size``                              histogram of events per batch
``stage_seconds{stage}``                    histogram of seconds per batch and stage
``end_to_end_latency_seconds``              histogram: event received (Kafka timestamp) →
                                            its results durable, per event
``consumer_lag{topic,partition}``           messages behind the partition's end
``throughput_tx_per_second``                events per second over the last interval
``state_entities{kind}``                    cards, merchants, users held in state
``state_bytes``                             heap bytes of the feature state
``model_info{version,kind}``                1 for the champion serving now
``score``                                   histogram of calibrated scores, per event
``feedback_precision``                      labelled alerts that were fraud (rolling window)
``feedback_recall``                         fraud labels that were alerted (rolling window)
``feedback_false_positive_ratio``           labelled alerts that were legitimate
``feedback_labels``                         labels in the rolling window
``drift_psi{feature}``                      population stability index vs the training
                                            reference (``feature="score"`` for the score)
==========================================  =================================================

PSI reads: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from txfast.registry import ModelMetadata
    from txfast.store import Store

__all__ = ["METRIC_NAMES", "ArrayHistogram", "DriftMonitor", "ScorerMetrics"]

log = logging.getLogger(__name__)

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
BATCH_BUCKETS = (1, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)

METRIC_NAMES = (
    "txfast_events_total",
    "txfast_rejected_total",
    "txfast_alerts_total",
    "txfast_batches_total",
    "txfast_batch_size",
    "txfast_stage_seconds",
    "txfast_end_to_end_latency_seconds",
    "txfast_consumer_lag",
    "txfast_throughput_tx_per_second",
    "txfast_state_entities",
    "txfast_state_bytes",
    "txfast_model_info",
    "txfast_score",
    "txfast_feedback_precision",
    "txfast_feedback_recall",
    "txfast_feedback_false_positive_ratio",
    "txfast_feedback_labels",
    "txfast_drift_psi",
)
"""Every metric family a scorer exports (without the ``_bucket``/``_count`` suffixes)."""


class ArrayHistogram:
    """A histogram fed whole numpy arrays at once (``observe_many``), thread-safe.

    Args:
        name: Metric name.
        documentation: Help text.
        buckets: Upper bounds, increasing (``+Inf`` is added).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (NaN ignored)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if not len(v):
            return
        # Prometheus buckets are "value <= bound": the first bound not below the value.
        idx = np.searchsorted(self.bounds, v, side="left")
        add = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += add
            self._sum += float(v.sum())

    def family(self) -> HistogramMetricFamily:
        """The cumulative Prometheus histogram."""
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        cumulative = np.cumsum(counts)
        buckets = [(_fmt(b), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", int(cumulative[-1])))
        h = HistogramMetricFamily(self.name, self.documentation)
        h.add_metric([], buckets, total)
        return h


def _fmt(bound: float) -> str:
    return repr(float(bound))


class DriftMonitor:
    """Population stability index of features and score against a training reference.

    The reference (``ModelMetadata.reference``) holds, per feature, the inner bin edges of
    the training distribution's deciles and the training share of each bin. Live counts are
    kept over a sliding window of about ``window`` observations (older counts decay away
    batch by batch), so the index follows the recent traffic. All columns are binned at
    once: edges padded with +inf into one ``(columns, bins)`` matrix.

    Args:
        reference: ``{name: {"edges": [...], "fractions": [...]}}``.
        feature_names: The live feature columns, in order (``"score"`` is separate).
        window: About how many recent rows the live distribution covers.
    """

    def __init__(
        self,
        reference: dict[str, Any],
        feature_names: Sequence[str],
        *,
        window: int = 200_000,
    ) -> None:
        self.window = window
        self._lock = threading.Lock()
        index = {n: i for i, n in enumerate(feature_names)}
        cols: list[tuple[str, int, np.ndarray, np.ndarray]] = []
        for name, ref in reference.items():
            if name != "score" and name not in index:
                continue
            edges = np.asarray(ref["edges"], dtype=np.float64)
            expected = np.asarray(ref["fractions"], dtype=np.float64)
            if len(expected) != len(edges) + 1:
                continue
            cols.append((name, index.get(name, -1), edges, expected))
        self.names = [c[0] for c in cols]
        # Feature columns first, the score (if referenced) last.
        cols.sort(key=lambda c: c[1] < 0)
        self.names = [c[0] for c in cols]
        self._feature_cols = np.array([c[1] for c in cols if c[1] >= 0], dtype=np.int64)
        self._has_score = any(c[1] < 0 for c in cols)
        bins = max((len(c[3]) for c in cols), default=1)
        self._edges = np.full((len(cols), max(bins - 1, 1)), np.inf)
        self._expected = np.zeros((len(cols), bins))
        self._valid = np.zeros((len(cols), bins), dtype=bool)
        for k, (_, _, edges, expected) in enumerate(cols):
            self._edges[k, : len(edges)] = edges
            self._expected[k, : len(expected)] = expected
            self._valid[k, : len(expected)] = True
        self._bins = bins
        self._edges_by_rank = np.ascontiguousarray(self._edges.T)  # (bins - 1, columns)
        self._counts = np.zeros((len(cols), bins))
        self._column_base = (np.arange(len(cols)) * bins).astype(np.int32)

    def __len__(self) -> int:
        return len(self.names)

    def observe(self, features: np.ndarray, scores: np.ndarray) -> None:
        """Add a batch's (sampled) feature rows and scores."""
        n = len(scores)
        if not n or not self.names:
            return
        cols = len(self._feature_cols)
        values = np.empty((n, len(self.names)))  # (rows, columns), feature columns first
        values[:, :cols] = features[:, self._feature_cols]
        if self._has_score:
            values[:, cols] = scores
        # Bin = number of edges <= value (searchsorted "right"), every column at once: one
        # comparison per edge rank (edges are padded with +inf); NaN goes to a spare slot.
        idx = np.zeros(values.shape, dtype=np.int32)
        for edge in self._edges_by_rank:
            idx += values >= edge
        idx += self._column_base
        idx[np.isnan(values)] = self._counts.size
        add = np.bincount(idx.ravel(), minlength=self._counts.size + 1)[:-1]
        add = add.reshape(self._counts.shape)
        keep = 1.0 - min(1.0, n / self.window)  # decay so that ~window rows stay weighted
        with self._lock:
            self._counts *= keep
            self._counts += add

    def psi(self) -> dict[str, float]:
        """The index per feature (and ``score``) over the live window."""
        with self._lock:
            counts = self._counts.copy()
        totals = counts.sum(axis=1, keepdims=True)
        eps = 1e-4
        actual = np.maximum(counts / np.where(totals > 0, totals, 1.0), eps)
        ref = np.maximum(self._expected, eps)
        terms = np.where(self._valid, (actual - ref) * np.log(actual / ref), 0.0)
        psi = terms.sum(axis=1)
        return {name: float(psi[k]) for k, name in enumerate(self.names) if totals[k, 0] > 0}


def reference_from_training(
    x: np.ndarray, feature_names: Sequence[str], scores: np.ndarray, bins: int = 10
) -> dict[str, dict[str, list[float]]]:
    """The drift reference of a training set: decile edges and shares per feature and score.

    Edges are the distinct inner quantiles (a feature with few distinct values gets fewer
    bins); shares count NaN-free rows. Stored in ``ModelMetadata.reference``.
    """
    out: dict[str, dict[str, list[float]]] = {}
    columns: Iterable[tuple[str, np.ndarray]] = [
        *((n, x[:, j]) for j, n in enumerate(feature_names)),
        ("score", scores),
    ]
    probs = np.linspace(0, 1, bins + 1)[1:-1]
    for name, col in columns:
        v = np.asarray(col, dtype=np.float64)
        v = v[~np.isnan(v)]
        if not len(v):
            continue
        edges = np.unique(np.quantile(v, probs))
        counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
        out[name] = {
            "edges": [float(e) for e in edges],
            "fractions": [float(c) / len(v) for c in counts],
        }
    return out


class _Collector(Collector):
    def __init__(self, metrics: ScorerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        m = self.metrics
        yield m.latency.family()
        yield m.scores.family()
        psi = GaugeMetricFamily(
            "txfast_drift_psi",
            "Population stability index against the training reference (score: the score).",
            labels=["feature"],
        )
        drift = m.drift
        if drift is not None:
            for name, value in sorted(drift.psi().items()):
                psi.add_metric([name], value)
        yield psi


class ScorerMetrics:
    """The metrics of one scorer process.

    Args:
        registry: Where to register (a fresh registry by default, so that several scorers
            in one process, as in tests, never share counters).
        drift_stride: Feature drift samples every n-th row of a batch.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, drift_stride: int = 16
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.drift_stride = max(1, drift_stride)
        self.events = Counter("txfast_events", "Events by outcome.", ["outcome"], registry=r)
        self.rejected = Counter(
            "txfast_rejected", "Dead letters by reason code.", ["reason"], registry=r
        )
        self.alerts = Counter("txfast_alerts", "Alerts by risk level.", ["risk"], registry=r)
        self.batches = Counter("txfast_batches", "Batches decided.", registry=r)
        self.batch_size = Histogram(
            "txfast_batch_size", "Events per batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "txfast_stage_seconds",
            "Seconds per batch spent in each stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "txfast_consumer_lag",
            "Messages between the consumer's position and the partition's end.",
            ["topic", "partition"],
            registry=r,
        )
        self.throughput = Gauge(
            "txfast_throughput_tx_per_second",
            "Events per second over the last measurement interval.",
            registry=r,
        )
        self.entities = Gauge(
            "txfast_state_entities", "Entities in the feature state.", ["kind"], registry=r
        )
        self.state_bytes = Gauge(
            "txfast_state_bytes", "Heap bytes of the feature state.", registry=r
        )
        self.model = Gauge(
            "txfast_model_info", "The serving model (value 1).", ["version", "kind"], registry=r
        )
        self.precision = Gauge(
            "txfast_feedback_precision",
            "Share of labelled alerts that were fraud, over the rolling window.",
            registry=r,
        )
        self.recall = Gauge(
            "txfast_feedback_recall",
            "Share of fraud labels whose transaction was alerted, over the rolling window.",
            registry=r,
        )
        self.false_positive = Gauge(
            "txfast_feedback_false_positive_ratio",
            "Share of labelled alerts that were legitimate, over the rolling window.",
            registry=r,
        )
        self.labels = Gauge("txfast_feedback_labels", "Labels in the rolling window.", registry=r)
        self.latency = ArrayHistogram(
            "txfast_end_to_end_latency_seconds",
            "Event received (Kafka timestamp) to its results durable, per event.",
            LATENCY_BUCKETS,
        )
        self.scores = ArrayHistogram(
            "txfast_score", "Calibrated anomaly scores, per event.", SCORE_BUCKETS
        )
        self.drift: DriftMonitor | None = None
        self._drift_version: str | None = None
        self._model_labels: tuple[str, str] | None = None
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self._state_t = 0.0
        self._quality_t = 0.0
        r.register(_Collector(self))

    # -- per batch ------------------------------------------------------------------------

    def observe_model(self, metadata: ModelMetadata, feature_names: Sequence[str]) -> None:
        """Record the serving model; rebuild the drift monitor when it changed."""
        labels = (metadata.version, metadata.kind)
        if labels != self._model_labels:
            if self._model_labels is not None:
                self.model.remove(*self._model_labels)
            self.model.labels(*labels).set(1)
            self._model_labels = labels
        if metadata.version != self._drift_version:
            self._drift_version = metadata.version
            ref = metadata.reference or {}
            self.drift = DriftMonitor(ref, feature_names) if ref else None

    def observe_batch(
        self,
        *,
        events: int,
        scored: int,
        rejected_reasons: Sequence[str],
        alert_levels: np.ndarray | None,
        scores: np.ndarray,
        features: np.ndarray,
        stages: dict[str, float],
        level_names: Sequence[str],
    ) -> None:
        """Count one decided and stored batch.

        Args:
            events: Events in the batch (accepted and rejected).
            scored: Events scored.
            rejected_reasons: The reason code of each dead letter.
            alert_levels: Risk level index of each alert (into ``level_names``).
            scores: Calibrated scores of the scored events.
            features: Their feature rows (drift is measured on a strided sample).
            stages: Seconds spent per stage on this batch.
            level_names: Names of the risk levels.
        """
        self.batches.inc()
        self.batch_size.observe(events)
        self.events.labels("consumed").inc(events)
        self.events.labels("scored").inc(scored)
        if rejected_reasons:
            self.events.labels("rejected").inc(len(rejected_reasons))
            for reason, count in zip(
                *np.unique(np.asarray(rejected_reasons), return_counts=True), strict=True
            ):
                self.rejected.labels(str(reason)).inc(int(count))
        if alert_levels is not None and len(alert_levels):
            counts = np.bincount(alert_levels, minlength=len(level_names))
            for i, name in enumerate(level_names):
                if counts[i]:
                    self.alerts.labels(name).inc(int(counts[i]))
        for stage, seconds in stages.items():
            self.stage.labels(stage).observe(seconds)
        self.scores.observe_many(scores)
        drift = self.drift
        if drift is not None and len(scores):
            s = self.drift_stride
            drift.observe(features[::s], scores[::s])
        self._rate_n += events
        now = time.monotonic()
        if now - self._rate_t >= 5.0:
            self.throughput.set(self._rate_n / (now - self._rate_t))
            self._rate_t, self._rate_n = now, 0

    def observe_latency(self, seconds: np.ndarray) -> None:
        """Add end-to-end latencies (seconds), one per event."""
        self.latency.observe_many(seconds)

    def observe_lag(self, topic: str, partition: int, lag: int) -> None:
        """Record a partition's consumer lag."""
        self.lag.labels(topic, str(partition)).set(max(0, lag))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag of a partition this process no longer owns."""
        try:
            self.lag.remove(topic, str(partition))
        except KeyError:
            pass

    def observe_state(
        self, stats_of: Callable[[], Iterable[dict[str, int]]], *, every_s: float = 10.0
    ) -> None:
        """Record entity counts and state bytes (summed over engines), at most every ``every_s``.

        ``stats_of`` returns each engine's ``stats()``; it is only called when due.
        """
        now = time.monotonic()
        if now - self._state_t < every_s:
            return
        self._state_t = now
        total: dict[str, int] = {}
        for stats in stats_of():
            for k, v in stats.items():
                total[k] = total.get(k, 0) + int(v)
        for kind in ("cards", "merchants", "users"):
            self.entities.labels(kind).set(total.get(kind, 0))
        self.state_bytes.set(total.get("state_bytes", 0))

    def observe_quality(
        self, store: Store, *, window_days: float = 30.0, every_s: float = 60.0
    ) -> None:
        """Precision, recall and false-positive ratio of the labels in the rolling window.

        Reads the store at most every ``every_s`` seconds; an unreachable store leaves the
        previous values.
        """
        now = time.monotonic()
        if now - self._quality_t < every_s:
            return
        self._quality_t = now
        since = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=window_days)
        try:
            rows = store.query(
                "SELECT count(*), "
                "count(*) FILTER (WHERE a.transaction_id IS NOT NULL), "
                "count(*) FILTER (WHERE a.transaction_id IS NOT NULL AND l.label = 1), "
                "count(*) FILTER (WHERE l.label = 1) "
                "FROM (SELECT transaction_id, label, row_number() OVER (PARTITION BY "
                "transaction_id ORDER BY labelled_at DESC, id DESC) AS rn FROM ("
                "SELECT id, transaction_id, labelled_at, "
                "CASE WHEN label = 'fraud' THEN 1 ELSE 0 END AS label FROM labels "
                "WHERE labelled_at >= ?) s) l "
                "LEFT JOIN alerts a ON a.transaction_id = l.transaction_id WHERE l.rn = 1",
                [since],
            )
        except Exception as e:  # noqa: BLE001 - metrics never stop the scorer
            log.debug("feedback quality not refreshed: %s", e)
            return
        total, alerted, alerted_fraud, fraud = (int(v or 0) for v in rows[0])
        self.labels.set(total)
        if alerted:
            self.precision.set(alerted_fraud / alerted)
            self.false_positive.set((alerted - alerted_fraud) / alerted)
        if fraud:
            self.recall.set(alerted_fraud / fraud)
