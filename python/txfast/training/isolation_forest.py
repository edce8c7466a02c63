"""Train an Isolation Forest, export it to ONNX, check parity and calibrate it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from txfast.registry import (
    Calibration,
    ModelMetadata,
    ModelVersion,
    Registry,
    TrainingData,
)
from txfast.scoring import Calibrator, fit_calibration
from txfast.training.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    isolation_forest_to_onnx,
)

__all__ = ["KIND", "TrainedModel", "train_isolation_forest"]

KIND = "isolation_forest"
"""``ModelMetadata.kind`` of the models trained here."""

_PARITY_ATOL = 1e-5
_MAX_HOLDOUT = 20_000


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """Result of ``train_isolation_forest``.

    Attributes:
        onnx_bytes: Serialized ONNX graph (input ``"features"`` float32 ``[N, F]``, output
            ``"score"`` float32 ``[N]``, the raw anomaly score).
        metadata: JSON-ready ``ModelMetadata`` fields (without ``name``/``version``, which
            the registry assigns).
        model: The fitted ``sklearn.ensemble.IsolationForest``.
    """

    onnx_bytes: bytes
    metadata: dict[str, Any]
    model: Any

    def register(
        self,
        registry: Registry | str | os.PathLike[str],
        name: str = "default",
        *,
        promote: bool = False,
    ) -> ModelVersion:
        """Store this model in a registry.

        Args:
            registry: A ``Registry`` or its root directory.
            name: Model name.
            promote: Also make it the champion.

        Returns:
            The new version.
        """
        if not isinstance(registry, Registry):
            registry = Registry(registry)
        return registry.register(name, self.onnx_bytes, self.metadata, promote=promote)


def _validate(X: np.ndarray, feature_names: Sequence[str], target_alert_rate: float) -> np.ndarray:
    x = np.asarray(X)
    if x.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training rows, got {x.shape[0]}")
    if x.shape[1] != len(feature_names):
        raise ValueError(
            f"X has {x.shape[1]} columns but {len(feature_names)} feature names were given"
        )
    if len(set(feature_names)) != len(feature_names):
        raise ValueError("feature names must be unique")
    if not 0.0 < target_alert_rate < 1.0:
        raise ValueError(f"target_alert_rate must be in (0, 1), got {target_alert_rate}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"X must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def train_isolation_forest(
    X: np.ndarray,
    feature_names: list[str],
    feature_version: str,
    *,
    n_estimators: int = 100,
    max_samples: int = 256,
    target_alert_rate: float = 0.01,
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
    empirical distribution of the ONNX raw scores of *all* rows, and the threshold is
    ``1 - target_alert_rate``, so about that share of training traffic scores at or above
    it.

    Args:
        X: float32 ``(n, F)`` feature rows (other numeric types are converted; NaN allowed).
        feature_names: The ``F`` column names, in order.
        feature_version: Feature-set version the rows were computed with.
        n_estimators: Number of trees.
        max_samples: Rows drawn to grow each tree (capped at the number of fitting rows).
        target_alert_rate: Share of training traffic to flag; sets the threshold.
        seed: Seed for the hold-out split and the forest.
        time_range_ms: Event-time range ``(start, end)`` of the rows, epoch milliseconds.
        holdout_fraction: Share of rows held out when there are enough.
        n_quantiles: Calibration quantiles to store.
        n_jobs: Parallel jobs for fitting (scikit-learn semantics).

    Returns:
        The ONNX bytes, the metadata dict and the fitted scikit-learn model.

    Raises:
        ValueError: On invalid arguments.
        ParityError: If the ONNX graph differs from ``-score_samples`` by more than 1e-5.
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import IsolationForest

    x = _validate(X, feature_names, target_alert_rate)
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if time_range_ms is not None and time_range_ms[0] > time_range_ms[1]:
        raise ValueError(f"time_range_ms start is after end: {time_range_ms}")
    n_rows = x.shape[0]
    rng = np.random.default_rng(seed)

    n_holdout = 0
    if n_rows >= 10 * max_samples:
        n_holdout = min(int(n_rows * holdout_fraction), _MAX_HOLDOUT)
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
    elif x_fit.shape[0] > _MAX_HOLDOUT:
        parity_rows = x_fit[rng.choice(x_fit.shape[0], _MAX_HOLDOUT, replace=False)]
    else:
        parity_rows = x_fit
    parity = check_parity(forest, onnx_bytes, parity_rows, atol=_PARITY_ATOL)

    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    raw = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1)
    quantiles = fit_calibration(raw, n_quantiles)
    threshold = 1.0 - target_alert_rate
    calibrated = Calibrator(quantiles)(raw)
    flagged = calibrated >= np.float32(threshold)

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

    metadata = ModelMetadata(
        kind=KIND,
        feature_names=list(feature_names),
        feature_version=feature_version,
        calibration=Calibration(quantiles=quantiles),
        threshold=threshold,
        training=TrainingData(
            rows=n_rows,
            start_ms=None if time_range_ms is None else int(time_range_ms[0]),
            end_ms=None if time_range_ms is None else int(time_range_ms[1]),
        ),
        metrics=metrics,
        params={
            "n_estimators": n_estimators,
            "max_samples": effective_max_samples,
            "seed": seed,
            "target_alert_rate": target_alert_rate,
            "holdout_fraction": holdout_fraction,
            "n_quantiles": n_quantiles,
            "sklearn_version": sklearn_version,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    fields = msgspec.to_builtins(metadata)
    for assigned_by_registry in ("name", "version", "created_at", "model_sha256"):
        del fields[assigned_by_registry]
    return TrainedModel(onnx_bytes=onnx_bytes, metadata=fields, model=forest)
