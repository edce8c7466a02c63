"""Feedback retraining with a champion/challenger gate (``txfast retrain``).

The store keeps what was scored, not every raw field, and features must be recomputed by
the native engine exactly as online, so the history comes from a file (as for ``txfast
train``); the analysts' labels come from the store:

1. **Labels.** The store's latest label of each transaction (:meth:`Store.labels`)
   overrides the file's label of the same ``transaction_id``. A transaction labelled
   nowhere is taken as legitimate (0): analysts label what they review and the frauds
   reported to them, so an unlabelled transaction is one nobody found fraudulent. With no
   label in the file nor in the store there is nothing to learn from and nothing to
   compare on: :func:`retrain` refuses.
2. **Periods.** The test period is the latest ``test_days`` UTC days of the history; the
   ``delay_days`` before it are skipped (in production their labels would not be known
   yet); the candidate trains on every earlier day, and only on those, so its test average
   precision is out of time, like the champion's (the same layout as one fold of
   :mod:`txfast.evaluate`).
3. **Candidate.** Trained exactly as ``txfast train`` (and ``txfast evaluate``) train it,
   then both it and the registry's champion score the test period through the serving
   :class:`~txfast.scoring.Scorer`, ranked on the raw score.
4. **Gate.** The candidate is registered (never silently dropped) and promoted only if
   ``candidate AP >= champion AP + min_gain``, or if there is no champion. A champion
   trained on other features than the engine computes cannot score the test period: it is
   reported with a ``null`` AP and the candidate is not promoted (``force`` overrides
   either refusal).
5. **Record.** The store records the candidate's metadata (``model_versions``) and one
   ``model.retrain`` audit entry with the decision and its figures.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast.config import Settings
from txfast.evaluate import _fold_metrics, _scorer, _train, make_folds
from txfast.exceptions import ModelMismatchError
from txfast.registry import Registry
from txfast.scoring import Scorer
from txfast.sources import ColumnMapping
from txfast.store.base import Store
from txfast.training.dataset import LabelledHistory, load_history
from txfast.training.thresholds import DAY_MS

__all__ = [
    "DECISIONS",
    "LabelCounts",
    "RetrainReport",
    "merge_labels",
    "retrain",
    "retrain_history",
]

log = logging.getLogger(__name__)

DECISIONS = ("promoted", "kept champion", "champion incompatible", "forced")
"""Gate outcomes: promoted (gate passed or no champion), kept champion (gate failed),
champion incompatible (it cannot score these features; not promoted), forced (promoted
with ``force`` although the gate failed or could not be evaluated)."""

AUDIT_ACTION = "model.retrain"
"""Action of the audit entry :func:`retrain` writes."""

_REPORTED_METRICS = (
    "auc_roc",
    "average_precision",
    "precision_at_k",
    "card_precision_at_k",
    "precision",
    "recall",
    "f1",
    "alert_rate",
    "alerts",
    "alerts_per_day",
    "fraud_amount_caught_share",
)


class LabelCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Where the labels of a retraining came from, in rows of the history.

    Attributes:
        rows: Accepted transactions of the history.
        from_store: Rows labelled by the store (its latest label per transaction).
        from_file: Rows labelled by the file only.
        store_overrides: Rows whose file label the store contradicts (counted in
            ``from_store``).
        unlabelled: Rows labelled nowhere, taken as legitimate.
        store_labels: Labels the store holds (one per transaction).
        store_unmatched: Store labels of transactions that are not in the history.
        frauds: Rows labelled fraud after merging.
    """

    rows: int
    from_store: int
    from_file: int
    store_overrides: int
    unlabelled: int
    store_labels: int
    store_unmatched: int
    frauds: int


class RetrainReport(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of :func:`retrain`; :meth:`as_dict` is its JSON form (and audit details).

    Attributes:
        model_name: Model name in the registry.
        candidate_version: Version the candidate was registered as.
        candidate_kind: ``gbt`` or ``isolation_forest``.
        champion_version: The champion it was compared with (``None``: there was none).
        candidate_ap: Candidate's average precision on the test period.
        champion_ap: Champion's, ``None`` without a (compatible) champion.
        min_gain: Gate margin: promoted iff ``candidate_ap >= champion_ap + min_gain``.
        promoted: Whether the candidate is now the champion.
        decision: One of :data:`DECISIONS`.
        reason: The decision in words, with its figures.
        train_range: First and last training day (ISO dates, UTC).
        test_range: First and last test day.
        delay_days: Days skipped between them.
        test_days: Days of the test period.
        train_rows: Training transactions.
        train_frauds: Fraud labels among them.
        test_rows: Test transactions.
        test_frauds: Fraud labels among them.
        labels_from_store: Rows labelled by the store (see ``labels``).
        labels_from_file: Rows labelled by the file only.
        labels: Every label count (:class:`LabelCounts`).
        candidate_metrics: Candidate's test metrics (see :mod:`txfast.evaluate`).
        champion_metrics: Champion's, when it could be scored.
        champion_error: Why the champion could not be scored, if it could not.
        champion_trained_on_test: Whether the champion's training range reaches into the
            test period (its AP is then optimistic and the gate favours it).
        source: The history file.
        registry: The registry directory.
        store: The store URL.
    """

    model_name: str
    candidate_version: str
    candidate_kind: str
    champion_version: str | None
    candidate_ap: float
    champion_ap: float | None
    min_gain: float
    promoted: bool
    decision: str
    reason: str
    train_range: tuple[str, str]
    test_range: tuple[str, str]
    delay_days: int
    test_days: int
    train_rows: int
    train_frauds: int
    test_rows: int
    test_frauds: int
    labels_from_store: int
    labels_from_file: int
    labels: LabelCounts
    candidate_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    champion_error: str | None
    champion_trained_on_test: bool | None
    source: str
    registry: str
    store: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def merge_labels(
    transaction_id: pa.Array | pa.ChunkedArray, file_label: np.ndarray, store_labels: pa.Table
) -> tuple[np.ndarray, LabelCounts]:
    """Labels of a history with the store's labels overriding the file's.

    Args:
        transaction_id: Ids of the history's rows.
        file_label: The file's labels (1, 0, or -1 where it has none).
        store_labels: :meth:`Store.labels` (one latest label per transaction).

    Returns:
        The merged labels (1 fraud, 0 legitimate; rows labelled nowhere are 0) and the
        counts of where they came from.
    """
    ids = transaction_id
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    file_label = np.asarray(file_label).astype(np.int8)
    store_ids = store_labels["transaction_id"].cast(ids.type)
    position = pc.index_in(ids, value_set=store_ids)
    matched = position.is_valid().to_numpy(zero_copy_only=False)
    store_values = store_labels["label"].to_numpy().astype(np.int8)
    label = file_label.copy()
    if matched.any():
        picked = position.filter(position.is_valid()).to_numpy().astype(np.int64)
        label[matched] = store_values[picked]
    file_known = file_label >= 0
    unlabelled = ~matched & ~file_known
    label[unlabelled] = 0
    in_history = pc.is_in(store_ids, value_set=ids).to_numpy(zero_copy_only=False)
    counts = LabelCounts(
        rows=int(label.size),
        from_store=int(matched.sum()),
        from_file=int((file_known & ~matched).sum()),
        store_overrides=int((matched & file_known & (label != file_label)).sum()),
        unlabelled=int(unlabelled.sum()),
        store_labels=int(store_labels.num_rows),
        store_unmatched=int((~in_history).sum()),
        frauds=int((label == 1).sum()),
    )
    return label, counts


def _kind(kind: str, y_train: np.ndarray, auto_min_fraud: int) -> str:
    kind = {"isolation-forest": "iforest", "isolation_forest": "iforest"}.get(kind, kind)
    if kind == "auto":
        frauds = int((y_train == 1).sum())
        enough = frauds >= auto_min_fraud and bool((y_train == 0).any())
        return "gbt" if enough else "iforest"
    if kind not in ("gbt", "iforest"):
        raise ValueError(f"unknown model {kind!r}; use auto, gbt or isolation-forest")
    return kind


def _reported(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {name: metrics[name] for name in _REPORTED_METRICS if name in metrics}


def _decide(
    candidate_ap: float,
    champion_version: str | None,
    champion_ap: float | None,
    champion_error: str | None,
    min_gain: float,
    force: bool,
) -> tuple[str, str]:
    if champion_version is None:
        return "promoted", "no champion to beat"
    if champion_error is not None or champion_ap is None:
        why = f"champion {champion_version} cannot be scored on these features"
        if force:
            return "forced", f"{why}; promoted with force"
        return "champion incompatible", f"{why}; not promoted (force promotes anyway)"
    bar = champion_ap + min_gain
    figures = (
        f"candidate AP {candidate_ap:.4f} {'>=' if candidate_ap >= bar else '<'} "
        f"champion {champion_version} AP {champion_ap:.4f} + min gain {min_gain:g}"
    )
    if candidate_ap >= bar:
        return "promoted", figures
    if force:
        return "forced", f"{figures}; promoted with force"
    return "kept champion", figures


def retrain_history(
    history: LabelledHistory,
    store: Store,
    registry: Registry | str | os.PathLike[str],
    *,
    name: str = "default",
    kind: str = "auto",
    test_days: int = 7,
    delay_days: int = 7,
    min_gain: float = 0.0,
    force: bool = False,
    target_alert_rate: float | None = None,
    alerts_per_day: float | None = None,
    target_precision: float | None = None,
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
    k: int = 100,
    auto_min_fraud: int = 20,
    actor: str = "txfast retrain",
) -> RetrainReport:
    """Retrain on a loaded history with the store's labels, and gate the promotion.

    See the module docstring for the protocol; :func:`retrain` loads the history first.

    Args:
        history: The replayed history (:func:`txfast.training.dataset.load_history`).
        store: Where the analysts' labels are read, and the decision recorded.
        registry: The model registry (or its directory).
        name: Model name in the registry.
        kind: ``auto`` (gbt when the training period has legitimate and at least
            ``auto_min_fraud`` fraud labels, else ``iforest``), ``gbt`` or ``iforest``
            (``isolation-forest``).
        test_days: Days of the test period (the latest ones).
        delay_days: Days skipped before the test period.
        min_gain: Average precision the candidate must gain over the champion (negative:
            loss tolerated).
        force: Promote even if the gate fails or the champion cannot be scored.
        target_alert_rate: Threshold target: share of traffic to flag.
        alerts_per_day: Threshold target: alerts per day.
        target_precision: Threshold target: precision on the validation period.
        model_params: Extra trainer arguments per kind (``"gbt"``, ``"iforest"``).
        seed: Seed for the trainer.
        n_jobs: Trainer threads.
        k: Transactions / cards reviewed per day for the precision@k metrics.
        auto_min_fraud: Fraud labels ``auto`` needs to choose gbt.
        actor: Who the audit entry names.

    Returns:
        The report (also the audit entry's details).

    Raises:
        ValueError: If there is no label anywhere, the history is too short for the
            periods, the test period has no fraud label, or the trainer refuses the data.
        RegistryError: If the registry refuses the candidate or the champion is corrupted.
        ParityError: If the candidate's ONNX graph does not score like the native model.
    """
    if test_days < 1 or delay_days < 0:
        raise ValueError("test_days must be >= 1 and delay_days >= 0")
    fs = history.features
    if history.rows < 2:
        raise ValueError(f"{history.source} has fewer than 2 valid transactions")
    y, counts = merge_labels(fs.transaction_id, fs.label, store.labels())
    if counts.from_store == 0 and counts.from_file == 0:
        raise ValueError(
            f"no labels: {history.source} has no label column values (--mapping can name "
            f"it) and the store {store.url} has no label for any of its transactions "
            f"({counts.store_labels} label(s) in the store)"
        )
    first_day, last_day = int(history.day.min()), int(history.day.max())
    days = last_day - first_day + 1
    train_days = days - delay_days - test_days
    if train_days < 1:
        raise ValueError(
            f"the history spans {days} day(s); {test_days} test and {delay_days} delay "
            f"day(s) leave none to train on (shorten --test-days / --delay-days)"
        )
    (fold,), _ = make_folds(
        first_day, last_day, train_days=train_days, delay_days=delay_days, test_days=test_days
    )
    span = fold.describe(first_day)
    train_range = (span["train_dates"][0], span["train_dates"][1])
    test_range = (span["test_dates"][0], span["test_dates"][1])
    train_rows = np.flatnonzero((history.day >= fold.train_start) & (history.day < fold.train_end))
    test_rows = np.flatnonzero((history.day >= fold.test_start) & (history.day < fold.test_end))
    test_frauds = int((y[test_rows] == 1).sum())
    if test_frauds == 0 or test_frauds == test_rows.size:
        raise ValueError(
            f"the test period {test_range[0]}..{test_range[1]} has {test_frauds} fraud label(s) "
            f"in {test_rows.size} transaction(s): average precision is undefined there "
            "(lengthen --test-days)"
        )
    labelled = dataclasses.replace(history, features=dataclasses.replace(fs, label=y))
    chosen = _kind(kind, y[train_rows], auto_min_fraud)
    targets = {
        "target_alert_rate": target_alert_rate,
        "alerts_per_day": alerts_per_day,
        "target_precision": target_precision,
    }
    log.info(
        "training %s on %s..%s (%d rows, %d frauds); test %s..%s (%d rows, %d frauds)",
        chosen,
        *train_range,
        train_rows.size,
        int((y[train_rows] == 1).sum()),
        *test_range,
        test_rows.size,
        test_frauds,
    )
    trained = _train(
        chosen,
        labelled,
        train_rows,
        targets=targets,
        seed=seed,
        n_jobs=n_jobs,
        params=dict((model_params or {}).get(chosen, {})),
    )
    X_test = fs.X[test_rows]
    scored = _scorer(trained, labelled).score_batch(X_test)
    candidate_metrics, _ = _fold_metrics(
        labelled, test_rows, scored.raw, scored.is_anomaly, k=k, test_days=test_days
    )
    candidate_ap = candidate_metrics["average_precision"]
    if candidate_ap is None:  # pragma: no cover - both classes are in the test period
        raise ValueError("the candidate's average precision is undefined on the test period")

    reg = registry if isinstance(registry, Registry) else Registry(registry)
    champion = reg.champion(name) if name in reg.names() else None
    champion_ap: float | None = None
    champion_metrics: dict[str, Any] | None = None
    champion_error: str | None = None
    champion_on_test: bool | None = None
    if champion is not None:
        end_ms = champion.metadata.training.end_ms
        champion_on_test = None if end_ms is None else end_ms >= fold.test_start * DAY_MS
        try:
            champ = Scorer(
                reg.load(name, champion.version),
                feature_names=fs.feature_names,
                feature_version=fs.feature_version,
            )
        except ModelMismatchError as e:
            champion_error = str(e)
        else:
            s = champ.score_batch(X_test)
            metrics, _ = _fold_metrics(
                labelled, test_rows, s.raw, s.is_anomaly, k=k, test_days=test_days
            )
            champion_metrics = _reported(metrics)
            champion_ap = metrics["average_precision"]
    decision, reason = _decide(
        candidate_ap,
        None if champion is None else champion.version,
        champion_ap,
        champion_error,
        min_gain,
        force,
    )
    promote = decision in ("promoted", "forced")

    meta = dict(trained.metadata)
    meta["training"] = {
        **meta["training"],
        "source": f"{history.source} + labels of {store.url}",
        "rejected": len(fs.rejected),
    }
    meta["metrics"] = {
        **meta["metrics"],
        **{f"test_{m}": float(v) for m, v in _reported(candidate_metrics).items() if v is not None},
        "test_rows": float(test_rows.size),
        "test_positives": float(test_frauds),
    }
    meta["params"] = {
        **meta["params"],
        "retrain": {
            "train_range": list(train_range),
            "test_range": list(test_range),
            "delay_days": delay_days,
            "test_days": test_days,
            "labels": msgspec.to_builtins(counts),
            "champion_version": None if champion is None else champion.version,
            "champion_ap": champion_ap,
            "min_gain": min_gain,
        },
    }
    version = trained.register(reg, name, promote=False, metadata=meta)
    store.record_model_version(version.version, msgspec.to_builtins(version.metadata))
    if promote:
        reg.promote(name, version.version)
    report = RetrainReport(
        model_name=name,
        candidate_version=version.version,
        candidate_kind=trained.kind,
        champion_version=None if champion is None else champion.version,
        candidate_ap=float(candidate_ap),
        champion_ap=champion_ap,
        min_gain=min_gain,
        promoted=promote,
        decision=decision,
        reason=reason,
        train_range=train_range,
        test_range=test_range,
        delay_days=delay_days,
        test_days=test_days,
        train_rows=int(train_rows.size),
        train_frauds=int((y[train_rows] == 1).sum()),
        test_rows=int(test_rows.size),
        test_frauds=test_frauds,
        labels_from_store=counts.from_store,
        labels_from_file=counts.from_file,
        labels=counts,
        candidate_metrics=_reported(candidate_metrics),
        champion_metrics=champion_metrics,
        champion_error=champion_error,
        champion_trained_on_test=champion_on_test,
        source=history.source,
        registry=str(reg.root),
        store=store.url,
    )
    store.audit(actor, AUDIT_ACTION, version.version, report.as_dict())
    log.info("%s/%s: %s (%s)", name, version.version, decision, reason)
    return report


def retrain(
    settings: Settings,
    data: str | Path,
    store: Store,
    *,
    registry: Registry | str | os.PathLike[str] | None = None,
    mapping: ColumnMapping | None = None,
    test_days: int | None = None,
    delay_days: int | None = None,
    min_gain: float | None = None,
    **options: Any,
) -> RetrainReport:
    """Replay a history file and retrain on it with the store's labels (see the module).

    Args:
        settings: Decoder, feature (``label_delay`` too), registry, model name and
            ``[retrain]`` settings.
        data: History file (JSON lines, CSV or Parquet), as for ``txfast train``.
        store: Where the analysts' labels are read and the decision recorded.
        registry: The registry; default ``settings.registry``.
        mapping: Column mapping of the history file.
        test_days: Default ``settings.retrain.test_days``.
        delay_days: Default ``settings.retrain.delay_days``.
        min_gain: Default ``settings.retrain.min_gain``.
        **options: Further keyword arguments of :func:`retrain_history` (``kind``,
            ``force``, threshold targets, ``model_params``, ``seed`` …).

    Returns:
        The report.

    Raises:
        ValueError: See :func:`retrain_history`.
    """
    if settings.features.labels:
        log.warning(
            "label features are computed from the file's labels (known %s after each "
            "transaction); the store's labels change the training targets only",
            settings.features.label_delay,
        )
    history = load_history(settings, data, mapping)
    r = settings.retrain
    return retrain_history(
        history,
        store,
        settings.registry if registry is None else registry,
        name=settings.model_name,
        test_days=r.test_days if test_days is None else test_days,
        delay_days=r.delay_days if delay_days is None else delay_days,
        min_gain=r.min_gain if min_gain is None else min_gain,
        **options,
    )
