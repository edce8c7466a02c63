"""Model training, export, thresholds and metrics (needs the ``train`` extra).

Importing this package imports neither scikit-learn nor XGBoost; training functions do,
when called.
"""

from txfast.training.base import TrainedModel
from txfast.training.gbt import train_gbt
from txfast.training.isolation_forest import KIND, train_isolation_forest
from txfast.training.onnx_export import ParityError, check_parity, isolation_forest_to_onnx

__all__ = [
    "KIND",
    "ParityError",
    "TrainedModel",
    "check_parity",
    "isolation_forest_to_onnx",
    "train_gbt",
    "train_isolation_forest",
]
