"""Train supervised gradient-boosted trees (XGBoost) on labelled feature rows.

Protocol, so that the registry's figures are out-of-time:

1. Rows are ordered by event time. The last ``validation_fraction`` of the labelled rows
   (by time) is the **validation period**; the model is fitted on the rows before it.
2. XGBoost (``binary:logistic``, histogram trees) is fitted with ``scale_pos_weight``
   against the class imbalance and stops early when the validation average precision has
   not improved for ``early_stopping_rounds`` rounds; only the best rounds are kept.
3. The booster is exported to ONNX (its margin, see ``gbt_export``); parity with XGBoost
   is checked on the validation rows (held out from fitting) and again on registration.
4. The calibration is the empirical distribution of the ONNX raw scores of the validation
   period's traffic (all training rows when there is no validation period), so a
   calibrated score is a traffic percentile, as for the Isolation Forest. The fitted rows
   are left out: the trees score the fraud they were fitted on higher than fraud they
   have not seen, and their percentiles would set a threshold that later traffic rarely
   reaches.
5. The threshold and risk bands come from one target (``txfast.training.thresholds``):
   an alert rate, alerts per day or a precision on the validation period.

Rows with an unknown label (``-1``) are not fitted on but count as traffic for the
calibration and the alert rate. The threshold's alert-rate target is a share of the
calibration traffic; ``train_alert_rate`` in the metrics is the share of all training rows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

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
from txfast.training.gbt_export import xgboost_to_onnx
from txfast.training.metrics import average_precision, roc_auc
from txfast.training.onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity
from txfast.training.thresholds import choose_threshold

__all__ = ["KIND", "resolve_scale_pos_weight", "train_gbt"]

KIND = "gbt"
"""``ModelMetadata.kind`` of the models trained here (XGBoost gradient-boosted trees)."""


def resolve_scale_pos_weight(spec: float | str | None, negatives: int, positives: int) -> float:
    """Weight of the fraud class.

    Args:
        spec: A positive number; ``"sqrt"`` for ``sqrt(negatives / positives)`` (the
            default: it helps the rare class without flooding the top of the ranking with
            false alarms); ``"balanced"`` for ``negatives / positives``; ``None`` or
            ``"none"`` for 1.
        negatives: Legitimate training rows.
        positives: Fraudulent training rows.

    Returns:
        The weight (``>= 1`` for the named options).

    Raises:
        ValueError: On an unknown name or a non-positive number.
    """
    ratio = negatives / max(positives, 1)
    if spec is None or spec == "none":
        return 1.0
    if spec == "sqrt":
        return float(max(1.0, np.sqrt(ratio)))
    if spec == "balanced":
        return float(max(1.0, ratio))
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            raise ValueError(
                f"scale_pos_weight must be a number, 'sqrt', 'balanced' or 'none', got {spec!r}"
            ) from None
    if not spec > 0:
        raise ValueError(f"scale_pos_weight must be positive, got {spec}")
    return float(spec)


def _validation_period(ts: np.ndarray, labelled: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the rows in the validation period: the last ``fraction`` of the labelled rows.

    Whole milliseconds at the cut go to validation: no timestamp is on both sides of it.
    Unlabelled rows of the period are in the mask too (they count for the calibration).
    """
    if fraction <= 0.0:
        return np.zeros(ts.shape[0], dtype=bool)
    cut = np.quantile(ts[labelled], 1.0 - fraction, method="higher")
    return ts >= cut


def train_gbt(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: list[str],
    feature_version: str,
    *,
    ts_ms: np.ndarray | None = None,
    n_estimators: int = 100,
    max_depth: int = 5,
    learning_rate: float = 0.2,
    scale_pos_weight: float | str | None = "sqrt",
    min_child_weight: float = 1.0,
    subsample: float = 0.8,
    colsample_bytree: float = 0.8,
    validation_fraction: float = 0.2,
    early_stopping_rounds: int | None = 30,
    target_alert_rate: float | None = None,
    alerts_per_day: float | None = None,
    target_precision: float | None = None,
    seed: int = 0,
    n_quantiles: int = 1001,
    n_jobs: int | None = None,
) -> TrainedModel:
    """Fit XGBoost on labelled feature rows and package it for the registry.

    Give at most one threshold target; without any, ``target_alert_rate=0.01``.

    Args:
        X: ``(n, F)`` feature rows (float32; NaN allowed: XGBoost learns where it goes).
        y: ``(n,)`` labels: 1 fraud, 0 legitimate, -1 unknown (not fitted on).
        feature_names: The ``F`` column names, in order.
        feature_version: Feature-set version the rows were computed with.
        ts_ms: Event times (epoch ms) of the rows; sets the validation period and the
            training range. Without them, row order is taken as time order.
        n_estimators: Boosting rounds at most (early stopping may keep fewer).
        max_depth: Depth of each tree (scoring cost grows with trees × depth).
        learning_rate: Shrinkage of each round.
        scale_pos_weight: Weight of the fraud class (see ``resolve_scale_pos_weight``).
        min_child_weight: Minimum hessian in a leaf.
        subsample: Share of rows drawn for each tree.
        colsample_bytree: Share of features drawn for each tree.
        validation_fraction: Share of the labelled rows, the latest by time, held out for
            early stopping, the threshold and the ``validation_*`` metrics; 0 disables it.
        early_stopping_rounds: Patience on the validation average precision (``None``
            keeps every round).
        target_alert_rate: Share of training traffic to flag.
        alerts_per_day: Alerts per day to produce at the training period's volume.
        target_precision: Precision to reach on the validation period.
        seed: Seed for the row and feature sampling.
        n_quantiles: Calibration quantiles to store.
        n_jobs: XGBoost threads (``None``: XGBoost's default).

    Returns:
        The ONNX bytes, the metadata dict, the fitted ``xgboost.Booster`` (best rounds
        only) and the validation rows (parity sample).

    Raises:
        ValueError: On invalid arguments, labels without both classes in the fitting
            period, or an unreachable target precision.
        ParityError: If the ONNX graph differs from XGBoost's margin by more than 1e-5.
    """
    import xgboost as xgb

    x = validate_matrix(X, feature_names)
    n_rows = x.shape[0]
    label = np.asarray(y)
    if label.shape != (n_rows,):
        raise ValueError(f"y must have shape ({n_rows},), got {label.shape}")
    label = label.astype(np.int64)
    if not np.isin(label, (-1, 0, 1)).all():
        raise ValueError("labels must be 0, 1 or -1 (unknown)")
    ts = (
        np.arange(n_rows, dtype=np.int64)
        if ts_ms is None
        else np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    )
    if ts.shape != (n_rows,):
        raise ValueError(f"ts_ms must have shape ({n_rows},), got {ts.shape}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if n_estimators < 1 or max_depth < 1 or not 0.0 < learning_rate <= 1.0:
        raise ValueError("n_estimators and max_depth must be >= 1, learning_rate in (0, 1]")
    if target_precision is not None and validation_fraction == 0.0:
        raise ValueError("target_precision needs a validation period (validation_fraction > 0)")
    if target_alert_rate is None and alerts_per_day is None and target_precision is None:
        target_alert_rate = 0.01

    labelled = label >= 0
    if not labelled.any():
        raise ValueError("no labelled rows: gradient-boosted trees need labels (use iforest)")
    period = _validation_period(ts, labelled, validation_fraction)
    valid = labelled & period
    fit = labelled & ~period
    y_fit = label[fit]
    positives, negatives = int(y_fit.sum()), int((y_fit == 0).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"the fitting period needs both classes, got {positives} fraud and "
            f"{negatives} legitimate rows"
        )
    y_valid = label[valid]
    use_validation = bool(valid.any()) and 0 < int(y_valid.sum()) < int(valid.sum())
    spw = resolve_scale_pos_weight(scale_pos_weight, negatives, positives)

    model = xgb.XGBClassifier(
        objective="binary:logistic",
        tree_method="hist",
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
        min_child_weight=min_child_weight,
        subsample=subsample,
        colsample_bytree=colsample_bytree,
        scale_pos_weight=spw,
        eval_metric="aucpr",
        early_stopping_rounds=early_stopping_rounds if use_validation else None,
        random_state=seed,
        n_jobs=n_jobs,
    )
    started = time.perf_counter()
    model.fit(
        x[fit],
        y_fit,
        eval_set=[(x[valid], y_valid)] if use_validation else None,
        verbose=False,
    )
    fit_seconds = time.perf_counter() - started
    booster = model.get_booster()
    if use_validation and early_stopping_rounds is not None:
        best = int(model.best_iteration) + 1
        if best < booster.num_boosted_rounds():
            # Keep only the best rounds, so the native model, the ONNX graph and every
            # score computed later agree on the trees (and scoring pays for no more).
            booster = booster[:best]
    trees = booster.num_boosted_rounds()

    onnx_bytes = xgboost_to_onnx(booster, x.shape[1])
    rng = np.random.default_rng(seed)
    parity_pool = np.flatnonzero(valid) if valid.any() else np.arange(n_rows)
    if parity_pool.size > MAX_PARITY_ROWS:
        parity_pool = np.sort(rng.choice(parity_pool, MAX_PARITY_ROWS, replace=False))
    parity_rows = x[parity_pool]
    parity = check_parity(booster, onnx_bytes, parity_rows, atol=PARITY_ATOL)

    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    raw = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1)
    # Calibrate on traffic the trees were not fitted on: fitted rows (fraud above all)
    # score higher than unseen ones, so their percentiles would flag too little later.
    calibration_rows = period if use_validation else np.ones(n_rows, dtype=bool)
    quantiles = fit_calibration(raw[calibration_rows], n_quantiles)
    calibrated = Calibrator(quantiles)(raw)

    metrics: dict[str, float] = {
        "parity_max_abs_diff": parity,
        "parity_rows": float(parity_rows.shape[0]),
        "fit_rows": float(fit.sum()),
        "fit_positives": float(positives),
        "validation_rows": float(valid.sum()),
        "validation_positives": float(y_valid.sum()),
        "trees": float(trees),
        "scale_pos_weight": spw,
        "fit_seconds": fit_seconds,
    }
    if use_validation:
        metrics["validation_auc_roc"] = roc_auc(y_valid, raw[valid])
        metrics["validation_average_precision"] = average_precision(y_valid, raw[valid])

    choice = choose_threshold(
        target_alert_rate=target_alert_rate,
        alerts_per_day=alerts_per_day,
        target_precision=target_precision,
        train_rows=n_rows,
        train_ts_ms=ts,
        reference_score=calibrated[valid] if use_validation else None,
        reference_label=y_valid if use_validation else None,
        reference_ts_ms=ts[valid] if use_validation else None,
        reference="validation",
    )
    flagged = calibrated >= np.float32(choice.threshold)
    metrics["train_alert_rate"] = float(flagged.mean())
    metrics["calibration_rows"] = float(calibration_rows.sum())
    if use_validation:
        v_flag = flagged[valid]
        tp = int((v_flag & (y_valid == 1)).sum())
        metrics["validation_alert_rate"] = float(v_flag.mean())
        metrics["validation_precision"] = tp / max(1, int(v_flag.sum()))
        metrics["validation_recall"] = tp / max(1, int(y_valid.sum()))

    metadata = ModelMetadata(
        kind=KIND,
        feature_names=list(feature_names),
        feature_version=feature_version,
        calibration=Calibration(quantiles=quantiles),
        threshold=choice.threshold,
        training=TrainingData(
            rows=n_rows,
            start_ms=None if ts_ms is None else int(ts.min()),
            end_ms=None if ts_ms is None else int(ts.max()),
            labelled=int(labelled.sum()),
            positives=int((label == 1).sum()),
            validation_start_ms=(
                int(ts[valid].min()) if valid.any() and ts_ms is not None else None
            ),
        ),
        metrics=metrics,
        params=_params(
            model,
            trees=trees,
            validation_fraction=validation_fraction,
            early_stopping_rounds=early_stopping_rounds,
            scale_pos_weight=scale_pos_weight,
            seed=seed,
            n_quantiles=n_quantiles,
        ),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        risk_bands=choice.bands,
        threshold_calibration=choice.calibration,
        reference=drift_reference(x, feature_names, calibrated, calibration_rows),
    )
    from txfast.explain import tables_from_xgboost

    return TrainedModel(
        onnx_bytes=onnx_bytes,
        metadata=metadata_fields(metadata),
        model=booster,
        parity_rows=parity_rows,
        explainer=tables_from_xgboost(booster, x.shape[1]).to_bytes(),
    )


def _params(model: Any, **extra: Any) -> dict[str, Any]:
    import xgboost as xgb

    keys = (
        "n_estimators",
        "max_depth",
        "learning_rate",
        "min_child_weight",
        "subsample",
        "colsample_bytree",
        "tree_method",
        "objective",
    )
    params = model.get_params()
    out: dict[str, Any] = {k: params[k] for k in keys if params.get(k) is not None}
    out.update(
        {
            "scale_pos_weight_spec": extra.pop("scale_pos_weight"),
            "raw_score": "margin (log-odds)",
            "xgboost_version": xgb.__version__,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    out.update(extra)
    return out
