"""Model training and export (needs the ``train`` extra: scikit-learn).

Importing this package does not import scikit-learn; training functions do, when called.
"""

from txfast.training.isolation_forest import KIND, TrainedModel, train_isolation_forest
from txfast.training.onnx_export import ParityError, check_parity, isolation_forest_to_onnx

__all__ = [
    "KIND",
    "ParityError",
    "TrainedModel",
    "check_parity",
    "isolation_forest_to_onnx",
    "train_isolation_forest",
]
