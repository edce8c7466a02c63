"""Why a transaction was flagged: signed feature contributions for alerts.

Trainers export their trees as :class:`TreeTables` (flat node arrays with the training
cover of every node), stored in the registry beside ``model.onnx`` as ``explainer.npz``.
The scorer turns them into a native :class:`txfast._core.TreeExplainer` and explains only
the rows that become alerts, in Rust, in parallel, with the GIL released.

Methods and units:

* Gradient-boosted trees: exact path-dependent **TreeSHAP** (the algorithm behind
  XGBoost's ``pred_contribs``), in log-odds: a contribution of +1.2 means the feature
  raised the fraud log-odds by 1.2 from the model's expected value.
* Isolation Forest: **path-length attribution** (Saabas): each split along the row's path in
  each tree moves the expected isolation depth; the move is credited to the split's
  feature. Units are isolation depth, signed so that a positive contribution means the
  feature isolated the transaction *faster* (more anomalous). Exact TreeSHAP costs
  trees × leaves × depth² per row, about 1 ms for a 100-tree forest of 256-sample trees,
  while path attribution costs trees × depth.

Both are additive: ``expected + sum(contributions) == output`` (margin, or minus the
mean isolation depth). The stored JSON keeps the ``top_k`` largest by absolute value.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from txfast._core import TreeExplainer

__all__ = [
    "EXPLAINER_FILE",
    "Explainer",
    "TreeTables",
    "tables_from_isolation_forest",
    "tables_from_xgboost",
]

EXPLAINER_FILE = "explainer.npz"
"""Registry artifact holding a model's :class:`TreeTables`."""

Method = Literal["treeshap", "path"]


@dataclass(frozen=True)
class TreeTables:
    """Trees as flat node arrays (every tree contiguous, root first, children after parents).

    Attributes:
        tree_offsets: int64 ``[T + 1]``, each tree's first node; the last is the node count.
        feature: int32 split feature per node (any value for leaves).
        threshold: float64 split threshold per node.
        left: int32 left child, tree-relative, ``-1`` for leaves.
        right: int32 right child, tree-relative, ``-1`` for leaves.
        default_left: bool, where a missing (NaN) value goes.
        value: float64 leaf output (internal nodes are recomputed from the covers).
        cover: float64 training mass reaching each node (rows, or hessian sum).
        n_features: Number of model inputs.
        strict_less: ``x < threshold`` goes left (XGBoost); else ``x <= threshold``.
        base: Output offset added to the bias (e.g. the base margin).
        scale: Multiplier of every output and contribution.
        method: Default explanation method for this model.
        units: What a contribution measures, stored with each explanation.
    """

    tree_offsets: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    default_left: np.ndarray
    value: np.ndarray
    cover: np.ndarray
    n_features: int
    strict_less: bool
    base: float
    scale: float
    method: Method
    units: str

    _ARRAYS = (
        ("tree_offsets", np.int64),
        ("feature", np.int32),
        ("threshold", np.float64),
        ("left", np.int32),
        ("right", np.int32),
        ("default_left", np.bool_),
        ("value", np.float64),
        ("cover", np.float64),
    )

    def to_bytes(self) -> bytes:
        """Serialise as an uncompressed ``.npz`` (arrays + a JSON header)."""
        header = {
            "format": 1,
            "n_features": self.n_features,
            "strict_less": self.strict_less,
            "base": self.base,
            "scale": self.scale,
            "method": self.method,
            "units": self.units,
        }
        buf = io.BytesIO()
        arrays = {name: np.asarray(getattr(self, name), dtype=t) for name, t in self._ARRAYS}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeTables:
        """Read what :meth:`to_bytes` wrote.

        Raises:
            ValueError: If the bytes are not such a file.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != 1:
                    raise ValueError(f"unknown explainer format {header.get('format')!r}")
                arrays = {name: np.ascontiguousarray(z[name], dtype=t) for name, t in cls._ARRAYS}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"invalid explainer file: {exc}") from exc
        return cls(
            **arrays,
            n_features=int(header["n_features"]),
            strict_less=bool(header["strict_less"]),
            base=float(header["base"]),
            scale=float(header["scale"]),
            method=header["method"],
            units=str(header["units"]),
        )

    def native(self) -> TreeExplainer:
        """The native explainer (validates the arrays).

        Raises:
            InputError: If the arrays do not describe valid trees.
        """
        arrays: list[Any] = [
            np.ascontiguousarray(getattr(self, name), dtype=t) for name, t in self._ARRAYS
        ]
        return TreeExplainer(
            *arrays,
            n_features=self.n_features,
            strict_less=self.strict_less,
            base=self.base,
            scale=self.scale,
        )


def _concat(trees: Sequence[dict[str, np.ndarray]], **attrs: Any) -> TreeTables:
    sizes = [len(t["left"]) for t in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def cat(key: str) -> np.ndarray:
        return np.concatenate([t[key] for t in trees])

    return TreeTables(
        tree_offsets=offsets,
        feature=cat("feature").astype(np.int32),
        threshold=cat("threshold").astype(np.float64),
        left=cat("left").astype(np.int32),
        right=cat("right").astype(np.int32),
        default_left=cat("default_left").astype(bool),
        value=cat("value").astype(np.float64),
        cover=cat("cover").astype(np.float64),
        **attrs,
    )


def tables_from_xgboost(model: Any, n_features: int) -> TreeTables:
    """Trees of a fitted XGBoost binary classifier, in margin (log-odds) units.

    Covers are the nodes' hessian sums, as XGBoost's own TreeSHAP uses.
    """
    from txfast.training.gbt_export import _booster_json, base_margin

    learner = _booster_json(model)["learner"]
    trees = []
    for tree in learner["gradient_booster"]["model"]["trees"]:
        left = np.asarray(tree["left_children"], dtype=np.int64)
        cond = np.asarray(tree["split_conditions"], dtype=np.float32)
        trees.append(
            {
                "feature": np.asarray(tree["split_indices"]),
                # float32 thresholds compared with float32 inputs, exactly as XGBoost does.
                "threshold": cond.astype(np.float64),
                "left": left,
                "right": np.asarray(tree["right_children"]),
                "default_left": np.asarray(tree["default_left"]).astype(bool),
                "value": np.where(left == -1, cond, 0.0),
                "cover": np.asarray(tree["sum_hessian"], dtype=np.float64),
            }
        )
    return _concat(
        trees,
        n_features=n_features,
        strict_less=True,
        base=base_margin(learner),
        scale=1.0,
        method="treeshap",
        units="log-odds",
    )


def tables_from_isolation_forest(model: Any, n_features: int) -> TreeTables:
    """Trees of a fitted ``IsolationForest`` as isolation depths.

    Each leaf holds ``depth + c(n_samples)``, as in the ONNX graph; the scale
    ``-1 / n_trees`` makes the output minus the mean isolation depth, so positive
    contributions mean "isolated faster".
    """
    from txfast.training.onnx_export import average_path_length

    subsample = int(model._max_features) != n_features
    trees = []
    for estimator, columns in zip(model.estimators_, model.estimators_features_, strict=True):
        t = estimator.tree_
        left = np.asarray(t.children_left, dtype=np.int64)
        right = np.asarray(t.children_right, dtype=np.int64)
        feature = np.asarray(t.feature, dtype=np.int64)
        if subsample:
            feature = np.where(left == -1, 0, np.asarray(columns, dtype=np.int64)[feature])
        depth = np.zeros(len(left), dtype=np.int64)
        for node in range(len(left)):  # children always follow their parent
            if left[node] != -1:
                depth[left[node]] = depth[right[node]] = depth[node] + 1
        missing = getattr(t, "missing_go_to_left", None)
        trees.append(
            {
                "feature": np.where(left == -1, 0, feature),
                "threshold": np.asarray(t.threshold, dtype=np.float64),
                "left": left,
                "right": right,
                "default_left": (
                    np.zeros(len(left), bool) if missing is None else np.asarray(missing, bool)
                ),
                "value": depth + average_path_length(np.asarray(t.n_node_samples)),
                "cover": np.asarray(t.n_node_samples, dtype=np.float64),
            }
        )
    return _concat(
        trees,
        n_features=n_features,
        strict_less=False,
        base=0.0,
        scale=-1.0 / len(trees),
        method="path",
        units="isolation depth",
    )


class Explainer:
    """Explains rows of one model: JSON documents with the top contributing features.

    Args:
        tables: The model's trees.
        feature_names: Input column names, in order.
        top_k: Contributions kept per explanation.
        method: Overrides the model's default method.
    """

    def __init__(
        self,
        tables: TreeTables,
        feature_names: Sequence[str],
        *,
        top_k: int = 5,
        method: Method | None = None,
    ) -> None:
        if len(feature_names) != tables.n_features:
            raise ValueError(
                f"{len(feature_names)} feature names for a model of {tables.n_features} inputs"
            )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.native = tables.native()
        self.feature_names = list(feature_names)
        self.top_k = top_k
        self.method: Method = method or tables.method
        self.units = tables.units

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """float64 ``(n, F + 1)`` contributions; the last column is the expected value."""
        return self.native.contributions(np.ascontiguousarray(x, dtype=np.float32), self.method)

    def explain(self, x: np.ndarray) -> list[str]:
        """One JSON explanation per row of ``x`` (float32 ``(n, F)``)."""
        return self.native.explain_json(
            np.ascontiguousarray(x, dtype=np.float32),
            self.method,
            self.feature_names,
            units=self.units,
            top_k=self.top_k,
        )
