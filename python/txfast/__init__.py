"""txfast: real-time transaction anomaly detection and alerting.

The public surface is deliberately small; everything else lives in its module
(:mod:`txfast.pipeline`, :mod:`txfast.store`, :mod:`txfast.registry`, …).
"""

from txfast._core import __version__
from txfast.config import Settings, load_settings
from txfast.decode import DecodedBatch, Decoder, decode
from txfast.features import FEATURE_VERSION, FeatureEngine

__all__ = [
    "FEATURE_VERSION",
    "DecodedBatch",
    "Decoder",
    "FeatureEngine",
    "Settings",
    "__version__",
    "decode",
    "load_settings",
]
