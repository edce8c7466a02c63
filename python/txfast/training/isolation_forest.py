"""Train an Isolation Forest, export it to ONNX, check parity and calibrate it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from txfast.registry import Calibration, ModelMetadata, TrainingData
from txfast.scoring import Calibrator, fit_calibration
from txfast.training.base import (
    MAX_PARITY_ROWS,
    PARITY_ATOL,
    TrainedModel,
    drift_reference,
    metadata_fields,
    validate_matrix,
)
from txfast.training.metrics import average_precision, roc_auc
from txfast.training.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    isolation_forest_to_onnx,
)
from txfast.training.thresholds import choose_threshold

__all__ = ["KIND", "TrainedModel", "train_isolation_forest"]

KIND = "isolation_forest"
"""``ModelMetadata.kind`` of the models trained here."""


def train_isolation_forest(
    X: np.ndarray,
    feature_names: list[str],
    feature_version: str,
    *,
    n_estimators: int = 100,
    max_samples: int = 256,
    target_alert_rate: float | None = None,
    alerts_per_day: float | None = None,
    target_precision: float | None = None,
    labels: np.ndarray | None = None,
    ts_ms: np.ndarray | None = None,
    seed: int = 0,
    time_range_ms: tuple[int, int] | None = None,
    holdout_fraction: float = 0.1,
    n_quantiles: int = 1001,
    n_jobs: int | None = None,
) -> TrainedModel:
    """Fit an Isolation Forest on feature rows and package it for the registry.

    When there are at least ``10 * max_samples`` rows, a random ``holdout_fraction`` of
    them (at most 20 000) is kept out of fitting and used to check ONNX parity and the
    alert rate; otherwise parity is checked on the training rows. The calibration is the
    empirical distribution of the ONNX raw scores of *all* rows.

    The threshold comes from one target (``txfast.training.thresholds``); without any it is
    ``1 - 0.01``, so about 1 % of training traffic scores at or above it. The forest never
    sees the labels, so when ``labels`` are given they measure it on the training rows
    themselves (``train_*`` metrics) and can set the threshold by ``target_precision``.

    Args:
        X: float32 ``(n, F)`` feature rows (other numeric types are converted; NaN allowed).
        feature_names: The ``F`` column names, in order.
        feature_version: Feature-set version the rows were computed with.
        n_estimators: Number of trees.
        max_samples: Rows drawn to grow each tree (capped at the number of fitting rows).
        target_alert_rate: Share of training traffic to flag.
        alerts_per_day: Alerts per day at the training period's volume (needs ``ts_ms``).
        target_precision: Precision to reach on the labelled rows (needs ``labels``).
        labels: Optional 1/0 labels (-1 unknown), used for metrics and the threshold only.
        ts_ms: Optional event times (epoch ms) of the rows.
        seed: Seed for the hold-out split and the forest.
        time_range_ms: Event-time range ``(start, end)`` of the rows, epoch milliseconds
            (default: from ``ts_ms``).
        holdout_fraction: Share of rows held out when there are enough.
        n_quantiles: Calibration quantiles to store.
        n_jobs: Parallel jobs for fitting (scikit-learn semantics).

    Returns:
        The ONNX bytes, the metadata dict, the fitted scikit-learn model and the held-out
        rows.

    Raises:
        ValueError: On invalid arguments.
        ParityError: If the ONNX graph differs from ``-score_samples`` by more than 1e-5.
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import IsolationForest

    x = validate_matrix(X, feature_names)
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if target_alert_rate is not None and not 0.0 < target_alert_rate < 1.0:
        raise ValueError(f"target_alert_rate must be in (0, 1), got {target_alert_rate}")
    if target_alert_rate is None and alerts_per_day is None and target_precision is None:
        target_alert_rate = 0.01
    n_rows = x.shape[0]
    ts = None if ts_ms is None else np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    if ts is not None and ts.shape != (n_rows,):
        raise ValueError(f"ts_ms must have shape ({n_rows},), got {ts.shape}")
    if time_range_ms is None and ts is not None:
        time_range_ms = (int(ts.min()), int(ts.max()))
    if time_range_ms is not None and time_range_ms[0] > time_range_ms[1]:
        raise ValueError(f"time_range_ms start is after end: {time_range_ms}")
    y = None
    if labels is not None:
        y = np.asarray(labels).astype(np.int64).reshape(-1)
        if y.shape != (n_rows,) or not np.isin(y, (-1, 0, 1)).all():
            raise ValueError(f"labels must be {n_rows} values of 0, 1 or -1 (unknown)")
    rng = np.random.default_rng(seed)

    n_holdout = 0
    if n_rows >= 10 * max_samples:
        n_holdout = min(int(n_rows * holdout_fraction), MAX_PARITY_ROWS)
    if n_holdout:
        perm = rng.permutation(n_rows)
        holdout_idx = np.sort(perm[:n_holdout])
        fit_mask = np.ones(n_rows, dtype=bool)
        fit_mask[holdout_idx] = False
        x_fit, x_holdout = x[fit_mask], x[holdout_idx]
    else:
        x_fit, x_holdout = x, x[:0]

    effective_max_samples = min(max_samples, x_fit.shape[0])
    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=effective_max_samples,
        contamination="auto",
        random_state=seed,
        n_jobs=n_jobs,
    )
    started = time.perf_counter()
    forest.fit(x_fit)
    fit_seconds = time.perf_counter() - started

    onnx_bytes = isolation_forest_to_onnx(forest, x.shape[1])
    if n_holdout:
        parity_rows = x_holdout
    elif x_fit.shape[0] > MAX_PARITY_ROWS:
        parity_rows = x_fit[rng.choice(x_fit.shape[0], MAX_PARITY_ROWS, replace=False)]
    else:
        parity_rows = x_fit
    parity = check_parity(forest, onnx_bytes, parity_rows, atol=PARITY_ATOL)

    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    raw = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1)
    quantiles = fit_calibration(raw, n_quantiles)
    calibrated = Calibrator(quantiles)(raw)

    known = None if y is None else y >= 0
    choice = choose_threshold(
        target_alert_rate=target_alert_rate,
        alerts_per_day=alerts_per_day,
        target_precision=target_precision,
        train_rows=n_rows,
        train_ts_ms=ts,
        reference_score=None if y is None else calibrated[known],
        reference_label=None if y is None else y[known],
        reference_ts_ms=None if y is None or ts is None else ts[known],
        reference="training",
    )
    flagged = calibrated >= np.float32(choice.threshold)

    metrics: dict[str, float] = {
        "parity_max_abs_diff": parity,
        "parity_rows": float(parity_rows.shape[0]),
        "fit_rows": float(x_fit.shape[0]),
        "holdout_rows": float(n_holdout),
        "fit_seconds": fit_seconds,
        "train_alert_rate": float(flagged.mean()),
        "raw_score_p50": float(np.quantile(raw, 0.5)),
        "raw_score_p99": float(np.quantile(raw, 0.99)),
    }
    if n_holdout:
        metrics["holdout_alert_rate"] = float(flagged[holdout_idx].mean())
    if y is not None and known is not None:
        yk = y[known]
        if 0 < int(yk.sum()) < yk.size:
            metrics["train_auc_roc"] = roc_auc(yk, raw[known])
            metrics["train_average_precision"] = average_precision(yk, raw[known])

    metadata = ModelMetadata(
        kind=KIND,
        feature_names=list(feature_names),
        feature_version=feature_version,
        calibration=Calibration(quantiles=quantiles),
        threshold=choice.threshold,
        training=TrainingData(
            rows=n_rows,
            start_ms=None if time_range_ms is None else int(time_range_ms[0]),
            end_ms=None if time_range_ms is None else int(time_range_ms[1]),
            labelled=None if known is None else int(known.sum()),
            positives=None if y is None else int((y == 1).sum()),
        ),
        metrics=metrics,
        params={
            "n_estimators": n_estimators,
            "max_samples": effective_max_samples,
            "seed": seed,
            "target_alert_rate": target_alert_rate,
            "holdout_fraction": holdout_fraction,
            "n_quantiles": n_quantiles,
            "raw_score": "2^(-E[h]/c(max_samples))",
            "sklearn_version": sklearn_version,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        risk_bands=choice.bands,
        threshold_calibration=choice.calibration,
        reference=drift_reference(x, feature_names, calibrated),
    )
    from txfast.explain import tables_from_isolation_forest

    return TrainedModel(
        onnx_bytes=onnx_bytes,
        metadata=metadata_fields(metadata),
        model=forest,
        parity_rows=parity_rows,
        explainer=tables_from_isolation_forest(forest, x.shape[1]).to_bytes(),
    )
