"""What every trainer returns: ONNX bytes, registry metadata, the native model, parity rows.

``TrainedModel.register`` re-runs the ONNX parity check against the native model on the
held-out rows right before writing, so the registry never receives a graph whose scores
differ from the model it claims to be (for example bytes altered after training, or a
graph exported from another model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from txfast.registry import ModelMetadata, ModelVersion, Registry
from txfast.training.onnx_export import check_parity

__all__ = [
    "MAX_PARITY_ROWS",
    "drift_reference",
    "PARITY_ATOL",
    "TrainedModel",
    "metadata_fields",
    "validate_matrix",
]

PARITY_ATOL = 1e-5
"""Largest absolute difference allowed between ONNX and native raw scores."""

MAX_PARITY_ROWS = 20_000
"""Rows kept for the parity check (a random sample when there are more)."""


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A trained model ready for the registry.

    Attributes:
        onnx_bytes: Serialized ONNX graph (input ``"features"`` float32 ``[N, F]``, output
            ``"score"`` float32 ``[N]``, the raw score; higher means more suspicious).
        metadata: JSON-ready ``ModelMetadata`` fields (without ``name``/``version``, which
            the registry assigns).
        model: The fitted native model (``sklearn.ensemble.IsolationForest`` or
            ``xgboost.XGBClassifier``).
        parity_rows: Held-out float32 rows on which ``register`` checks ONNX parity again;
            ``None`` skips that check.
        explainer: The trees for explanations (``txfast.explain.TreeTables`` bytes),
            stored as the ``explainer.npz`` artifact; ``None`` stores no explainer.
    """

    onnx_bytes: bytes
    metadata: dict[str, Any]
    model: Any
    parity_rows: np.ndarray | None = None
    explainer: bytes | None = None

    @property
    def kind(self) -> str:
        """The model family (``metadata["kind"]``)."""
        return str(self.metadata["kind"])

    def check_parity(self, atol: float = PARITY_ATOL) -> float:
        """Compare the ONNX graph with the native model on the held-out rows.

        Returns:
            The largest absolute difference (0.0 when there are no parity rows).

        Raises:
            ParityError: If it exceeds ``atol``.
        """
        if self.parity_rows is None or len(self.parity_rows) == 0:
            return 0.0
        return check_parity(self.model, self.onnx_bytes, self.parity_rows, atol=atol)

    def register(
        self,
        registry: Registry | str | os.PathLike[str],
        name: str = "default",
        *,
        promote: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Check ONNX parity once more, then store this model in a registry.

        Args:
            registry: A ``Registry`` or its root directory.
            name: Model name.
            promote: Also make it the champion.
            metadata: Metadata to store instead of ``self.metadata`` (e.g. with the
                training source added).

        Returns:
            The new version.

        Raises:
            ParityError: If the ONNX scores differ from the native model's by more than
                1e-5 on the held-out rows; nothing is written.
            RegistryError: If the registry refuses the model or its metadata.
        """
        self.check_parity()
        if not isinstance(registry, Registry):
            registry = Registry(registry)
        fields = dict(self.metadata if metadata is None else metadata)
        artifacts = {} if self.explainer is None else {"explainer.npz": self.explainer}
        return registry.register(
            name, self.onnx_bytes, fields, promote=promote, artifacts=artifacts
        )


def validate_matrix(X: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """Check a feature matrix against its names and return it as C-contiguous float32.

    Raises:
        ValueError: If ``X`` is not a numeric 2-D array of at least 2 rows with one column
            per (unique) name.
    """
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
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"X must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def drift_reference(
    x: np.ndarray,
    feature_names: Sequence[str],
    calibrated: np.ndarray,
    rows: np.ndarray | None = None,
    max_rows: int = 200_000,
) -> dict[str, dict[str, list[float]]]:
    """The training distribution stored for drift monitoring (``ModelMetadata.reference``).

    Args:
        x: Training feature rows.
        feature_names: Their names.
        calibrated: Calibrated scores of the rows.
        rows: Boolean mask of the rows that represent live traffic (e.g. the period a
            booster was calibrated on); all rows by default.
        max_rows: A seeded random sample of at most this many rows is used.
    """
    from txfast.metrics import reference_from_training

    idx = np.flatnonzero(rows) if rows is not None else np.arange(len(x))
    if len(idx) > max_rows:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_rows, replace=False))
    return reference_from_training(x[idx], feature_names, calibrated[idx])


def metadata_fields(metadata: ModelMetadata) -> dict[str, Any]:
    """JSON-ready metadata without the fields the registry assigns."""
    fields = msgspec.to_builtins(metadata)
    for assigned_by_registry in ("name", "version", "created_at", "model_sha256", "artifacts"):
        del fields[assigned_by_registry]
    return fields
