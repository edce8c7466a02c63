"""ONNX export of a fitted scikit-learn ``IsolationForest`` as one tree-ensemble node.

The exported graph computes the raw anomaly score of the original Isolation Forest paper,
``s(x) = 2 ** (-E[h(x)] / c(max_samples))``, which equals ``-model.score_samples(x)``:

```
features  float32 [N, F]
  └─ ai.onnx.ml.TreeEnsembleRegressor (AVERAGE)   → mean path length E[h(x)]  [N, 1]
  └─ Mul(-ln 2 / c(max_samples))                                             [N, 1]
  └─ Exp                                                                      [N, 1]
  └─ Reshape([-1])                                → score  float32 [N]
```

Every leaf of every tree carries its own path length, ``depth(leaf) + c(n_samples(leaf))``,
so one tree walk per tree gives the whole score; no per-leaf sample-count lookups or
per-tree arithmetic are left in the graph. A split whose two children are leaves with the
same path length (e.g. two single-sample leaves) is replaced by one leaf, which leaves the
score unchanged and removes about a fifth of the nodes of a typical forest. Path lengths
are summed in float32 by onnxruntime; the difference to scikit-learn's float64 result is
around 1e-7.

Split semantics follow scikit-learn exactly:

* ``x <= threshold`` goes left (``BRANCH_LEQ``).
* scikit-learn stores thresholds as float64 and compares them with float32 inputs. ONNX
  tree thresholds are float32, so every threshold is rounded *down* to the largest float32
  not above it; for any float32 ``x``, ``x <= t`` and ``x <= floor32(t)`` then agree.
* NaN follows the node's ``missing_go_to_left`` flag (``nodes_missing_value_tracks_true``).
* When the forest was fitted with ``max_features < n_features``, each tree's feature
  indices are mapped back to input columns through ``estimators_features_``.

This module only reads attributes of the fitted model; it does not import scikit-learn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from txfast.exceptions import ParityError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ParityError",
    "average_path_length",
    "check_parity",
    "isolation_forest_to_onnx",
    "native_raw_score",
]

INPUT_NAME = "features"
"""Name of the graph input: float32 ``[N, F]``."""

OUTPUT_NAME = "score"
"""Name of the graph output: float32 ``[N]``, the raw anomaly score in (0, 1]."""

_OPSET = 17
_ML_OPSET = 3
_IR_VERSION = 9  # readable by onnxruntime >= 1.15


def average_path_length(n_samples: np.ndarray | int | float) -> np.ndarray:
    """Average path length ``c(n)`` of an unsuccessful search in a binary search tree.

    This is the correction Isolation Forest adds for a leaf that still holds ``n``
    training samples: ``c(n) = 2 (ln(n - 1) + γ) - 2 (n - 1) / n`` for ``n > 2``,
    ``c(2) = 1`` and ``c(n) = 0`` for ``n <= 1``.

    Args:
        n_samples: Sample counts (any shape).

    Returns:
        float64 array of the same shape as ``n_samples``.
    """
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[n == 2] = 1.0
    nb = n[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out


def _floor_to_float32(values: np.ndarray) -> np.ndarray:
    """Round float64 values down to the largest float32 not above each of them."""
    f32 = values.astype(np.float32)
    too_big = f32.astype(np.float64) > values
    f32[too_big] = np.nextafter(f32[too_big], np.float32(-np.inf))
    return f32


class _Tree:
    """One isolation tree as flat arrays in ONNX node order (pre-order, root = 0)."""

    __slots__ = ("feature", "is_leaf", "left", "missing_left", "right", "threshold", "value")

    def __init__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        missing_left: np.ndarray,
        value: np.ndarray,
    ) -> None:
        self.left = left
        self.right = right
        self.feature = feature
        self.threshold = threshold
        self.missing_left = missing_left
        self.value = value
        self.is_leaf = left == -1


def _preorder(left: np.ndarray, right: np.ndarray) -> list[int]:
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] != -1:
            stack.append(int(right[node]))
            stack.append(int(left[node]))
    return order


def _path_length_tree(tree: Any, columns: np.ndarray | None) -> _Tree:
    """Turn a fitted sklearn tree into a path-length tree with exact simplifications.

    Each leaf gets ``depth + c(n_samples)``. A split whose two children are leaves of the
    same (float32) value is replaced by that leaf: every input reaching it gets the same
    path length either way, so the score is unchanged while trees get smaller and
    shallower. This applies bottom-up (e.g. a leaf of 2 samples at depth ``d`` and a split
    of 2 samples into two single-sample leaves both give ``d + 1``).
    """
    left = np.asarray(tree.children_left, dtype=np.int64).copy()
    right = np.asarray(tree.children_right, dtype=np.int64).copy()
    feature = np.asarray(tree.feature, dtype=np.int64)
    if columns is not None:
        feature = np.where(left == -1, 0, np.asarray(columns, dtype=np.int64)[feature])
    missing = getattr(tree, "missing_go_to_left", None)
    missing_left = (
        np.zeros(left.shape[0], dtype=np.int64)
        if missing is None  # scikit-learn < 1.3 has no NaN support
        else np.asarray(missing, dtype=np.int64)
    )

    order = _preorder(left, right)
    depth = np.zeros(left.shape[0], dtype=np.int64)
    for node in order:
        if left[node] != -1:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    value = (depth + average_path_length(np.asarray(tree.n_node_samples))).astype(np.float32)

    for node in reversed(order):  # children before parents
        lo, hi = left[node], right[node]
        if lo != -1 and left[lo] == -1 and left[hi] == -1 and value[lo] == value[hi]:
            value[node] = value[lo]
            left[node] = right[node] = -1

    keep = _preorder(left, right)
    new_id = np.full(left.shape[0], -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep), dtype=np.int64)
    left, right = left[keep], right[keep]
    is_leaf = left == -1
    return _Tree(
        left=np.where(is_leaf, -1, new_id[left]),
        right=np.where(is_leaf, -1, new_id[right]),
        feature=np.where(is_leaf, 0, feature[keep]),
        threshold=np.where(
            is_leaf, np.float32(0), _floor_to_float32(np.asarray(tree.threshold)[keep])
        ),
        missing_left=np.where(is_leaf, 0, missing_left[keep]),
        value=value[keep],
    )


def _check_fitted_forest(model: Any, n_features: int) -> None:
    for attr in ("estimators_", "estimators_features_", "_max_samples", "_max_features"):
        if not hasattr(model, attr):
            raise ValueError(
                f"expected a fitted sklearn.ensemble.IsolationForest, got {type(model).__name__}"
                f" without attribute {attr!r}"
            )
    n_in = getattr(model, "n_features_in_", n_features)
    if n_in != n_features:
        raise ValueError(f"model was fitted on {n_in} features, n_features={n_features}")
    if not model.estimators_:
        raise ValueError("the forest has no trees")


def isolation_forest_to_onnx(model: Any, n_features: int) -> bytes:
    """Export a fitted ``IsolationForest`` to a compact ONNX graph.

    Args:
        model: A fitted ``sklearn.ensemble.IsolationForest``.
        n_features: Number of input columns ``F`` (must match the fitted model).

    Returns:
        Serialized ONNX model (``bytes``). Input ``"features"``: float32 ``[N, F]``;
        output ``"score"``: float32 ``[N]`` equal to ``-model.score_samples(X)`` (higher
        means more anomalous). The model passes ``onnx.checker.check_model``.

    Raises:
        ValueError: If ``model`` is not a fitted Isolation Forest or its feature count
            differs from ``n_features``.
    """
    _check_fitted_forest(model, n_features)
    subsample_features = int(model._max_features) != n_features

    tree_ids: list[np.ndarray] = []
    node_ids: list[np.ndarray] = []
    feature_ids: list[np.ndarray] = []
    modes: list[str] = []
    thresholds: list[np.ndarray] = []
    true_ids: list[np.ndarray] = []
    false_ids: list[np.ndarray] = []
    missing_true: list[np.ndarray] = []
    leaf_tree_ids: list[np.ndarray] = []
    leaf_node_ids: list[np.ndarray] = []
    leaf_values: list[np.ndarray] = []

    for tree_id, (estimator, columns) in enumerate(
        zip(model.estimators_, model.estimators_features_, strict=True)
    ):
        tree = _path_length_tree(estimator.tree_, columns if subsample_features else None)
        n_nodes = tree.left.shape[0]
        ids = np.arange(n_nodes, dtype=np.int64)
        tree_ids.append(np.full(n_nodes, tree_id, dtype=np.int64))
        node_ids.append(ids)
        feature_ids.append(tree.feature)
        modes.extend("LEAF" if leaf else "BRANCH_LEQ" for leaf in tree.is_leaf)
        thresholds.append(tree.threshold)
        true_ids.append(np.where(tree.is_leaf, 0, tree.left))
        false_ids.append(np.where(tree.is_leaf, 0, tree.right))
        missing_true.append(tree.missing_left)
        leaf_tree_ids.append(np.full(int(tree.is_leaf.sum()), tree_id, dtype=np.int64))
        leaf_node_ids.append(ids[tree.is_leaf])
        leaf_values.append(tree.value[tree.is_leaf])

    def cat(parts: list[np.ndarray]) -> list[Any]:
        return np.concatenate(parts).tolist()

    n_trees = len(model.estimators_)
    c_max = float(average_path_length(int(model._max_samples)))
    # s = 2 ** (-mean / c) = exp(-ln 2 / c * mean); c == 0 only for max_samples == 1,
    # where scikit-learn defines the score as 1.
    scale = -math.log(2.0) / c_max if c_max > 0 else 0.0

    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        inputs=[INPUT_NAME],
        outputs=["mean_path_length"],
        domain="ai.onnx.ml",
        name="isolation_trees",
        n_targets=1,
        aggregate_function="AVERAGE",
        post_transform="NONE",
        nodes_treeids=cat(tree_ids),
        nodes_nodeids=cat(node_ids),
        nodes_featureids=cat(feature_ids),
        nodes_modes=modes,
        nodes_values=cat(thresholds),
        nodes_truenodeids=cat(true_ids),
        nodes_falsenodeids=cat(false_ids),
        nodes_missing_value_tracks_true=cat(missing_true),
        target_treeids=cat(leaf_tree_ids),
        target_nodeids=cat(leaf_node_ids),
        target_ids=[0] * sum(len(v) for v in leaf_values),
        target_weights=cat(leaf_values),
    )
    graph = helper.make_graph(
        nodes=[
            ensemble,
            helper.make_node("Mul", ["mean_path_length", "neg_ln2_over_c"], ["log_score"]),
            helper.make_node("Exp", ["log_score"], ["score_2d"]),
            helper.make_node("Reshape", ["score_2d", "flat_shape"], [OUTPUT_NAME]),
        ],
        name="isolation_forest",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[
            helper.make_tensor("neg_ln2_over_c", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1]),
        ],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", _OPSET),
            helper.make_opsetid("ai.onnx.ml", _ML_OPSET),
        ],
        producer_name="txfast",
        doc_string=(
            f"Isolation Forest raw anomaly score: {n_trees} trees, "
            f"max_samples={int(model._max_samples)}, {n_features} features"
        ),
    )
    onnx_model.ir_version = _IR_VERSION
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString()


def native_raw_score(model: Any, features: np.ndarray) -> tuple[np.ndarray, str]:
    """The raw score the exported graph must reproduce, computed by the native model.

    Args:
        model: A fitted ``sklearn.ensemble.IsolationForest`` (raw score
            ``-score_samples``) or an XGBoost ``XGBClassifier``/``Booster`` (raw score
            the margin, ``predict(..., output_margin=True)``).
        features: float32 ``[N, F]`` rows.

    Returns:
        float64 ``[N]`` raw scores and a short description of how they were computed.

    Raises:
        ValueError: If the model is of neither kind.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if hasattr(model, "score_samples"):
        return -np.asarray(model.score_samples(x), dtype=np.float64), "score_samples"
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    if hasattr(booster, "inplace_predict"):
        margin = booster.inplace_predict(x, predict_type="margin")
        return np.asarray(margin, dtype=np.float64).reshape(-1), "xgboost's margin"
    raise ValueError(f"no native raw score for a {type(model).__name__}")


def check_parity(
    model: Any,
    onnx_bytes: bytes,
    features: np.ndarray,
    *,
    atol: float = 1e-5,
    threads: int | None = 1,
) -> float:
    """Compare the ONNX graph's raw score with the native model's on ``features``.

    The native raw score is ``-score_samples`` for an Isolation Forest and the margin for
    an XGBoost booster (see ``native_raw_score``). onnxruntime runs single-threaded by
    default: it then adds the trees of each row in order, as the native libraries do; with
    more threads it may sum partial tree sums, which moves float32 results by a few ulps.

    Args:
        model: The fitted native model that was exported.
        onnx_bytes: Its ONNX export.
        features: float32 ``[N, F]`` rows to compare on.
        atol: Largest allowed absolute difference.
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default).

    Returns:
        The largest absolute difference found.

    Raises:
        ParityError: If a difference exceeds ``atol`` (or the graph cannot be run); the
            message names the worst row, both scores and how many rows are over.
    """
    import onnxruntime as ort

    x = np.ascontiguousarray(features, dtype=np.float32)
    expected, what = native_raw_score(model, x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    try:
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1).astype(np.float64)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ParityError(f"the ONNX export cannot be run for the parity check: {exc}") from exc
    if got.shape != expected.shape:
        raise ParityError(
            f"ONNX export returned {got.shape[0]} scores for {expected.shape[0]} rows"
        )
    diff = np.abs(got - expected)
    diff[np.isnan(diff)] = np.inf
    worst = int(np.argmax(diff)) if diff.size else 0
    max_diff = float(diff[worst]) if diff.size else 0.0
    if not max_diff <= atol:
        raise ParityError(
            f"ONNX export differs from {what} by {max_diff:.3g} > {atol:g} "
            f"(row {worst}: onnx {got[worst]:.9g}, native {expected[worst]:.9g}; "
            f"{int((diff > atol).sum())} of {diff.size} rows over tolerance)"
        )
    return max_diff
