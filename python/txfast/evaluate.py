"""Time-based evaluation of the models on a labelled history (``txfast evaluate``).

Protocol (one fold): train on ``train_days`` days, skip ``delay_days`` days (labels of the
last training days would not be known yet in production, and the gap keeps the test period
honest), test on the following ``test_days`` days. Further folds shift the whole window by
``step_days`` (default ``test_days``, reduced when the folds would not fit in the data).
Day 1 is the UTC day of the earliest transaction.

Each model is trained exactly as ``txfast train`` trains it (same trainers, same threshold
calibration, ONNX export and parity check) on the training days, then the test days are
scored through the serving :class:`txfast.scoring.Scorer`. Features are computed once for
the whole history by the native engine; a transaction's features only use earlier events,
so slicing them by day leaks nothing.

Metrics on the test days (see :mod:`txfast.training.metrics`): AUC-ROC, average precision,
precision@k and card precision@k per day (ranking on the raw score, which never saturates),
and, at the model's calibrated threshold, precision, recall, F1, alert rate, alerts per day
and the fraud amount caught. Rows without a label are left out of every metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from txfast.registry import LoadedModel, ModelMetadata, ModelVersion
from txfast.scoring import Scorer
from txfast.training.base import TrainedModel
from txfast.training.dataset import LabelledHistory, day_iso
from txfast.training.metrics import (
    average_precision,
    card_precision_at_k_per_day,
    precision_at_k_per_day,
    precision_recall_curve,
    roc_auc,
    threshold_metrics,
)

__all__ = [
    "MODELS",
    "Fold",
    "evaluate_history",
    "make_folds",
    "write_pr_curve_png",
]

MODELS = ("gbt", "iforest")
"""Model kinds ``evaluate_history`` can train: gradient-boosted trees, Isolation Forest."""

SUMMARY_METRICS = (
    "auc_roc",
    "average_precision",
    "precision_at_k",
    "card_precision_at_k",
    "precision",
    "recall",
    "f1",
    "alert_rate",
    "alerts_per_day",
    "fraud_amount_caught",
    "fraud_amount_caught_share",
)


@dataclass(frozen=True, slots=True)
class Fold:
    """One train / delay / test window, in UTC day numbers (end exclusive).

    Attributes:
        index: 1-based fold number.
        train_start: First training day.
        train_end: Day after the last training day.
        test_start: First test day (``train_end + delay``).
        test_end: Day after the last test day.
    """

    index: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int

    def describe(self, first_day: int) -> dict[str, Any]:
        """Days as 1-based numbers in the history and as ISO dates."""
        return {
            "fold": self.index,
            "train_days": [self.train_start - first_day + 1, self.train_end - first_day],
            "test_days": [self.test_start - first_day + 1, self.test_end - first_day],
            "train_dates": [day_iso(self.train_start), day_iso(self.train_end - 1)],
            "test_dates": [day_iso(self.test_start), day_iso(self.test_end - 1)],
        }


def make_folds(
    first_day: int,
    last_day: int,
    *,
    train_days: int,
    delay_days: int,
    test_days: int,
    folds: int = 1,
    step_days: int | None = None,
) -> tuple[list[Fold], int]:
    """Lay out the folds in the days ``first_day .. last_day`` (inclusive).

    Args:
        first_day: First day of the data.
        last_day: Last day of the data.
        train_days: Training days per fold.
        delay_days: Days skipped between training and test.
        test_days: Test days per fold.
        folds: Number of folds.
        step_days: Shift between folds; default ``test_days``, reduced to fit the data.

    Returns:
        The folds and the step used.

    Raises:
        ValueError: If the folds do not fit in the data (the message says what would).
    """
    if train_days < 1 or test_days < 1 or delay_days < 0 or folds < 1:
        raise ValueError("train and test days and folds must be >= 1, delay days >= 0")
    if step_days is not None and step_days < 1:
        raise ValueError(f"step_days must be >= 1, got {step_days}")
    span = train_days + delay_days + test_days
    available = last_day - first_day + 1
    room = available - span  # days the window can move
    if room < 0:
        raise ValueError(
            f"one fold needs {span} days ({train_days} train + {delay_days} delay + "
            f"{test_days} test); the data has {available}"
        )
    step = test_days if step_days is None else step_days
    if folds > 1 and step * (folds - 1) > room:
        if step_days is not None or room < folds - 1:
            most = room // step + 1
            raise ValueError(
                f"{folds} folds of {span} days with a step of {step} need "
                f"{span + step * (folds - 1)} days; the data has {available} "
                f"(at most {most} fold(s) with this step, or a step of "
                f"{room // (folds - 1)} day(s) or less)"
            )
        step = room // (folds - 1)
    out = []
    for i in range(folds):
        start = first_day + i * step
        test_start = start + train_days + delay_days
        out.append(Fold(i + 1, start, start + train_days, test_start, test_start + test_days))
    return out, step


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _scorer(trained: TrainedModel, history: LabelledHistory) -> Scorer:
    """The serving scorer over an in-memory model (exactly what ``txfast run`` uses)."""
    fields = dict(trained.metadata, name="evaluation", version="v1")
    metadata = msgspec.convert(fields, type=ModelMetadata)
    info = ModelVersion(name="evaluation", version="v1", path=Path("."), metadata=metadata)
    return Scorer(
        LoadedModel(info=info, onnx_bytes=trained.onnx_bytes),
        feature_names=history.features.feature_names,
        feature_version=history.features.feature_version,
    )


def _train(
    kind: str,
    history: LabelledHistory,
    rows: np.ndarray,
    *,
    targets: dict[str, Any],
    seed: int,
    n_jobs: int | None,
    params: dict[str, Any],
) -> TrainedModel:
    fs = history.features
    X, y, ts = fs.X[rows], fs.label[rows], fs.ts_ms[rows]
    if kind == "gbt":
        from txfast.training.gbt import train_gbt

        return train_gbt(
            X,
            y,
            fs.feature_names,
            fs.feature_version,
            ts_ms=ts,
            seed=seed,
            n_jobs=n_jobs,
            **targets,
            **params,
        )
    if kind == "iforest":
        from txfast.training.isolation_forest import train_isolation_forest

        return train_isolation_forest(
            X,
            fs.feature_names,
            fs.feature_version,
            labels=y,
            ts_ms=ts,
            seed=seed,
            n_jobs=n_jobs,
            **targets,
            **params,
        )
    raise ValueError(f"unknown model {kind!r}; use one of {MODELS}")


def _fold_metrics(
    history: LabelledHistory,
    rows: np.ndarray,
    raw: np.ndarray,
    flagged: np.ndarray,
    *,
    k: int,
    test_days: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    y = history.features.label[rows].astype(np.int64)
    day, card, amount = history.day[rows], history.card[rows], history.amount[rows]
    known = y >= 0
    y, day, card, amount = y[known], day[known], card[known], amount[known]
    raw, flagged = raw[known], flagged[known]
    p_at_k, _, _ = precision_at_k_per_day(day, y, raw, k)
    cp_at_k, days, cp_per_day = card_precision_at_k_per_day(day, card, y, raw, k)
    at = threshold_metrics(y, flagged, amount)
    metrics = {
        "auc_roc": _finite(roc_auc(y, raw)),
        "average_precision": _finite(average_precision(y, raw)),
        "precision_at_k": _finite(p_at_k),
        "card_precision_at_k": _finite(cp_at_k),
        "precision": _finite(at.precision),
        "recall": _finite(at.recall),
        "f1": _finite(at.f1),
        "alert_rate": _finite(at.alert_rate),
        "alerts": at.alerts,
        "alerts_per_day": at.alerts / test_days,
        "fraud_amount": round(at.fraud_amount, 2),
        "fraud_amount_caught": round(at.fraud_amount_caught, 2),
        "fraud_amount_caught_share": _finite(at.fraud_amount_caught_share),
        "card_precision_at_k_per_day": {
            day_iso(int(d)): round(float(v), 6) for d, v in zip(days, cp_per_day, strict=True)
        },
    }
    curve: dict[str, Any] = {}
    if y.sum():
        precision, recall, _ = precision_recall_curve(y, raw)
        curve = {"precision": precision, "recall": recall, "ap": metrics["average_precision"]}
    return metrics, curve


def _summary(fold_reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SUMMARY_METRICS:
        values = np.array(
            [f["metrics"][name] for f in fold_reports if f["metrics"][name] is not None],
            dtype=np.float64,
        )
        if values.size == 0:
            out[name] = None
            continue
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def evaluate_history(
    history: LabelledHistory,
    *,
    models: Sequence[str] = MODELS,
    train_days: int = 30,
    delay_days: int = 7,
    test_days: int = 7,
    folds: int = 1,
    step_days: int | None = None,
    k: int = 100,
    target_alert_rate: float | None = None,
    alerts_per_day: float | None = None,
    target_precision: float | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
    model_params: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Run the time-based protocol for each model and build the report.

    Args:
        history: A labelled history (``txfast.training.dataset.load_history``).
        models: Model kinds to evaluate (``"gbt"``, ``"iforest"``).
        train_days: Training days per fold.
        delay_days: Days skipped between training and test.
        test_days: Test days per fold.
        folds: Number of folds.
        step_days: Shift between folds (default ``test_days``, reduced to fit).
        k: Transactions / cards reviewed per day for precision@k and card precision@k.
        target_alert_rate: Threshold target: share of traffic to flag.
        alerts_per_day: Threshold target: alerts per day.
        target_precision: Threshold target: precision on the validation period.
        seed: Seed for the trainers.
        n_jobs: Threads for the trainers.
        model_params: Extra trainer arguments per model kind.
        progress: Called with a line of text after each fold and model.

    Returns:
        The JSON-ready report and, per model, each fold's precision-recall curve (for
        :func:`write_pr_curve_png`).

    Raises:
        ValueError: If the history has no labels, a model kind is unknown or the folds do
            not fit.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown}; use one or more of {MODELS}")
    if not history.has_labels:
        raise ValueError("evaluation needs labels with both fraud and legitimate rows")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    first_day, last_day = int(history.day.min()), int(history.day.max())
    fold_list, step = make_folds(
        first_day,
        last_day,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        folds=folds,
        step_days=step_days,
    )
    targets: dict[str, Any] = {
        "target_alert_rate": target_alert_rate,
        "alerts_per_day": alerts_per_day,
        "target_precision": target_precision,
    }
    if all(v is None for v in targets.values()):
        targets["target_alert_rate"] = 0.01
    given = {key: v for key, v in targets.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"give at most one threshold target, got {sorted(given)}")

    report_models: dict[str, Any] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    for kind in models:
        fold_reports = []
        curves[kind] = []
        for fold in fold_list:
            train_rows = np.flatnonzero(
                (history.day >= fold.train_start) & (history.day < fold.train_end)
            )
            test_rows = np.flatnonzero(
                (history.day >= fold.test_start) & (history.day < fold.test_end)
            )
            trained = _train(
                kind,
                history,
                train_rows,
                targets=targets,
                seed=seed,
                n_jobs=n_jobs,
                params=(model_params or {}).get(kind, {}),
            )
            scored = _scorer(trained, history).score_batch(history.features.X[test_rows])
            metrics, curve = _fold_metrics(
                history, test_rows, scored.raw, scored.is_anomaly, k=k, test_days=test_days
            )
            y_test = history.features.label[test_rows]
            meta = trained.metadata
            fold_reports.append(
                {
                    **fold.describe(first_day),
                    "train_rows": int(train_rows.size),
                    "train_frauds": int((history.features.label[train_rows] == 1).sum()),
                    "test_rows": int(test_rows.size),
                    "test_frauds": int((y_test == 1).sum()),
                    "threshold": meta["threshold"],
                    "risk_bands": meta.get("risk_bands"),
                    "threshold_calibration": meta.get("threshold_calibration"),
                    "model_metrics": meta["metrics"],
                    "metrics": metrics,
                }
            )
            if curve:
                curves[kind].append({"fold": fold.index, **curve})
            if progress is not None:
                m = metrics
                progress(
                    f"{kind} fold {fold.index}/{len(fold_list)}: AUC {_fmt(m['auc_roc'])}, "
                    f"AP {_fmt(m['average_precision'])}, "
                    f"card P@{k} {_fmt(m['card_precision_at_k'])}, "
                    f"precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])}"
                )
        report_models[kind] = {"summary": _summary(fold_reports), "folds": fold_reports}

    report = {
        "data": history.describe(),
        "protocol": {
            "train_days": train_days,
            "delay_days": delay_days,
            "test_days": test_days,
            "folds": folds,
            "step_days": step,
            "k": k,
            "threshold_target": given,
            "ranking_score": "raw model score",
            "seed": seed,
        },
        "feature_version": history.features.feature_version,
        "models": report_models,
    }
    return report, curves


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_pr_curve_png(
    curves: dict[str, list[dict[str, Any]]], path: str | Path, *, title: str = ""
) -> None:
    """Plot every model's precision-recall curve of every fold into a PNG.

    Args:
        curves: Per model, the folds' ``precision``/``recall`` arrays and ``ap``.
        path: PNG file to write (its directory is created).
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"gbt": "tab:blue", "iforest": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    try:
        for kind, folds in curves.items():
            for i, c in enumerate(folds):
                recall, precision = c["recall"], c["precision"]
                if recall.size > 4000:  # thin the curve; the plot does not need every step
                    keep = np.unique(np.linspace(0, recall.size - 1, 4000).astype(np.int64))
                    recall, precision = recall[keep], precision[keep]
                ap = c.get("ap")
                ax.step(
                    recall,
                    precision,
                    where="post",
                    color=colors.get(kind),
                    alpha=0.85 if i == 0 else 0.45,
                    label=f"{kind} fold {c['fold']} (AP {_fmt(ap)})",
                )
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title(title or "Precision-recall on the test days")
        ax.legend(loc="lower left", fontsize=8)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
