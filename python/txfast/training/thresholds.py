"""Choose a model's alert threshold and risk bands from an analyst budget or a precision.

Calibrated scores are percentiles of the training traffic (``txfast.scoring.Calibrator``):
a score of 0.99 is "above 99 % of training transactions". So:

* **a target alert rate** ``r`` (a share of transactions, or ``alerts_per_day`` divided by
  the transactions per day of the training period) gives the threshold ``1 - r``;
* **a target precision** ``p`` gives the lowest threshold at which the labelled reference
  rows (a validation period the model was not fitted on) reach precision ``p``: the most
  fraud caught at that precision.

The risk bands follow the threshold: HIGH starts at the threshold (HIGH alerts by
default), MEDIUM at five times its alert rate and CRITICAL at a tenth of it. With the
default 1 % that is 0.95 / 0.99 / 0.999, the configuration's historical defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from txfast.registry import RiskBands, ThresholdCalibration

__all__ = ["DAY_MS", "ThresholdChoice", "bands_for_threshold", "choose_threshold"]

DAY_MS = 86_400_000
MEDIUM_RATE_FACTOR = 5.0
"""MEDIUM starts where five times the threshold's alert rate would be flagged."""
CRITICAL_RATE_FACTOR = 0.1
"""CRITICAL starts where a tenth of the threshold's alert rate would be flagged."""


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """A threshold, its risk bands and how they were chosen.

    Attributes:
        threshold: Calibrated score at or above which a transaction is anomalous.
        bands: The matching risk bands.
        calibration: Method, target and the expected alert rate / precision.
    """

    threshold: float
    bands: RiskBands
    calibration: ThresholdCalibration


def bands_for_threshold(threshold: float) -> RiskBands:
    """Risk bands around a threshold on the percentile scale.

    Args:
        threshold: Calibrated threshold in [0, 1]; its alert rate is ``1 - threshold``.

    Returns:
        ``high = threshold``, ``medium = 1 - 5 (1 - threshold)`` (at least 0) and
        ``critical = 1 - (1 - threshold) / 10``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    rate = 1.0 - threshold
    return RiskBands(
        medium=round(max(0.0, 1.0 - MEDIUM_RATE_FACTOR * rate), 12),
        high=float(threshold),
        critical=round(min(1.0, 1.0 - CRITICAL_RATE_FACTOR * rate), 12),
    )


def _days(ts_ms: np.ndarray) -> float:
    """Length of the period the rows span, in days (at least one)."""
    if ts_ms.size == 0:
        return 1.0
    return max(1.0, float(np.ptp(ts_ms)) / DAY_MS)


def _precision_threshold(
    score: np.ndarray, label: np.ndarray, target: float
) -> tuple[float, float, float]:
    """Lowest score threshold whose precision on (score, label) is at least ``target``.

    Returns:
        ``(threshold, precision, recall)``.

    Raises:
        ValueError: If no threshold reaches the target (the message gives the best).
    """
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order]
    last = np.r_[s[1:] != s[:-1], True]  # last row of each group of equal scores
    tp = np.cumsum(y)[last]
    n = (np.arange(1, s.size + 1))[last]
    precision = tp / n
    ok = np.flatnonzero(precision >= target)
    if ok.size == 0:
        raise ValueError(
            f"no threshold reaches precision {target:g} on the {s.size:,} reference rows "
            f"(best {precision.max():.3f}); lower --target-precision"
        )
    i = int(ok[-1])
    positives = max(1, int(y.sum()))
    return float(s[last][i]), float(precision[i]), float(tp[i] / positives)


def choose_threshold(
    *,
    target_alert_rate: float | None = None,
    alerts_per_day: float | None = None,
    target_precision: float | None = None,
    train_rows: int,
    train_ts_ms: np.ndarray | None = None,
    reference_score: np.ndarray | None = None,
    reference_label: np.ndarray | None = None,
    reference_ts_ms: np.ndarray | None = None,
    reference: str = "validation",
) -> ThresholdChoice:
    """Choose the threshold and bands from one target.

    Give exactly one of ``target_alert_rate``, ``alerts_per_day`` and
    ``target_precision``.

    Args:
        target_alert_rate: Share of transactions to flag, in (0, 1).
        alerts_per_day: Alerts per day an analyst team can review; converted to a rate
            with the training period's transactions per day.
        target_precision: Precision to reach on the labelled reference rows, in (0, 1].
        train_rows: Number of training transactions (the calibration's traffic).
        train_ts_ms: Their event times (needed for ``alerts_per_day``).
        reference_score: Calibrated scores of labelled rows the model was not fitted on
            (needed for ``target_precision``; used to report the expected precision and
            recall otherwise).
        reference_label: Their 0/1 labels.
        reference_ts_ms: Their event times (to report the expected alerts per day).
        reference: Name of the reference rows for the metadata: ``"validation"`` or
            ``"training"``.

    Returns:
        The threshold, the bands and the calibration record for the registry.

    Raises:
        ValueError: On a missing, duplicated or out-of-range target, or an unreachable
            precision.
    """
    given = [
        name
        for name, v in (
            ("target_alert_rate", target_alert_rate),
            ("alerts_per_day", alerts_per_day),
            ("target_precision", target_precision),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of target_alert_rate, alerts_per_day, target_precision; "
            f"got {given or 'none'}"
        )
    if reference not in ("validation", "training"):
        raise ValueError(f"reference must be 'validation' or 'training', got {reference!r}")
    score = label = None
    if reference_score is not None and reference_label is not None:
        score = np.asarray(reference_score, dtype=np.float64)
        label = np.asarray(reference_label).astype(np.int64)
        if score.shape != label.shape:
            raise ValueError("reference scores and labels differ in length")
        if not np.isin(label, (0, 1)).all():
            raise ValueError("reference labels must be 0 or 1")

    expected_precision = expected_recall = None
    if target_precision is not None:
        if not 0.0 < target_precision <= 1.0:
            raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
        if score is None or label is None or score.size == 0 or label.sum() == 0:
            raise ValueError(
                "target_precision needs labelled reference rows with at least one fraud"
            )
        threshold, expected_precision, expected_recall = _precision_threshold(
            score, label, target_precision
        )
        method, target = "precision", target_precision
    else:
        if alerts_per_day is not None:
            if alerts_per_day <= 0:
                raise ValueError(f"alerts_per_day must be positive, got {alerts_per_day}")
            if train_ts_ms is None or train_rows <= 0:
                raise ValueError("alerts_per_day needs the training rows' event times")
            per_day = train_rows / _days(np.asarray(train_ts_ms))
            rate = alerts_per_day / per_day
            if not 0.0 < rate < 1.0:
                raise ValueError(
                    f"{alerts_per_day:g} alerts per day is not below the "
                    f"{per_day:,.0f} transactions per day of the training period"
                )
        else:
            assert target_alert_rate is not None
            rate = target_alert_rate
            if not 0.0 < rate < 1.0:
                raise ValueError(f"target_alert_rate must be in (0, 1), got {rate}")
        threshold = round(1.0 - rate, 12)
        method, target = "alert_rate", rate

    expected_rate = expected_per_day = None
    if score is not None and label is not None and score.size:
        flagged = score >= np.float32(threshold)
        expected_rate = float(flagged.mean())
        if reference_ts_ms is not None:
            expected_per_day = float(flagged.sum()) / _days(np.asarray(reference_ts_ms))
        if expected_precision is None and flagged.any():
            expected_precision = float(label[flagged].mean())
        if expected_recall is None and label.sum():
            expected_recall = float(label[flagged].sum() / label.sum())
    calibration = ThresholdCalibration(
        method=method,  # type: ignore[arg-type]
        target=float(target),
        alerts_per_day=None if alerts_per_day is None else float(alerts_per_day),
        reference=reference,  # type: ignore[arg-type]
        rows=0 if score is None else int(score.size),
        expected_alert_rate=expected_rate,
        expected_alerts_per_day=expected_per_day,
        expected_precision=expected_precision,
        expected_recall=expected_recall,
    )
    return ThresholdChoice(
        threshold=float(threshold), bands=bands_for_threshold(threshold), calibration=calibration
    )
