"""ONNX export of a fitted XGBoost binary classifier as one tree-ensemble node.

The exported graph computes the booster's *margin* (log-odds), which is what
``booster.predict(..., output_margin=True)`` returns:

```
features  float32 [N, F]
  └─ ai.onnx.ml.TreeEnsembleRegressor (SUM; logit(base_score) folded into tree 0)  [N, 1]
  └─ Reshape([-1])                                  → score  float32 [N]
```

Why the margin and not the probability: the probability ``sigmoid(margin)`` rounds to
exactly 1.0 in float32 once the margin passes about 16.6, so the transactions a fraud team
cares about most would all tie at the top. The margin keeps them ordered; the registry's
calibration maps it to [0, 1] anyway (``txfast.scoring.Calibrator``).

Split semantics follow XGBoost exactly:

* XGBoost stores thresholds, leaf values and inputs as float32 and sends ``x < threshold``
  left: ``BRANCH_LT`` with the threshold unchanged.
* A missing value (NaN) follows the node's ``default_left`` flag
  (``nodes_missing_value_tracks_true``).
* Leaf values are the booster's leaf outputs (learning rate already applied).

Why not onnxmltools: its XGBoost converter emits a ``TreeEnsembleClassifier`` with
``label`` and ``[N, 2]`` ``probabilities`` outputs (the saturating probability above), caps
the opset at 15, and would need graph surgery to give the registry's ``[N]`` ``score``
output. Reading the booster's JSON dump is a few dozen lines and the parity check
(``txfast.training.base.check_parity``) proves the result on every training run.

This module reads the booster's JSON; it does not import xgboost.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from txfast.training.onnx_export import INPUT_NAME, OUTPUT_NAME

__all__ = ["base_margin", "xgboost_to_onnx"]

_OPSET = 17
_ML_OPSET = 3
_IR_VERSION = 9  # readable by onnxruntime >= 1.15
_OBJECTIVES = ("binary:logistic", "binary:logitraw")


def _booster_json(model: Any) -> dict[str, Any]:
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    if not hasattr(booster, "save_raw"):
        raise ValueError(
            f"expected an xgboost Booster or XGBClassifier, got {type(model).__name__}"
        )
    return json.loads(bytes(booster.save_raw(raw_format="json")))


def _parse_float(text: str) -> float:
    """XGBoost writes ``base_score`` as ``"0.5"`` (1.x/2.x) or ``"[5E-1]"`` (3.x)."""
    return float(text.strip().strip("[]").split(",")[0])


def base_margin(learner: dict[str, Any]) -> float:
    """The margin every tree sum starts from, from the learner section of the JSON dump.

    Args:
        learner: ``json["learner"]`` of a booster's JSON dump.

    Returns:
        ``logit(base_score)`` for ``binary:logistic``; ``base_score`` for
        ``binary:logitraw``.

    Raises:
        ValueError: For other objectives (only binary classification is exported).
    """
    objective = learner["objective"]["name"]
    if objective not in _OBJECTIVES:
        raise ValueError(f"only {_OBJECTIVES} boosters are exported, got {objective!r}")
    base = _parse_float(learner["learner_model_param"]["base_score"])
    if objective == "binary:logitraw":
        return base
    if not 0.0 < base < 1.0:
        raise ValueError(f"base_score {base} is not a probability")
    return math.log(base / (1.0 - base))


def xgboost_to_onnx(model: Any, n_features: int) -> bytes:
    """Export a fitted XGBoost binary classifier to an ONNX graph of its margin.

    Args:
        model: A fitted ``xgboost.XGBClassifier`` or ``xgboost.Booster`` with objective
            ``binary:logistic`` (or ``binary:logitraw``), numerical features only, one
            parallel tree per round.
        n_features: Number of input columns ``F`` (must match the fitted model).

    Returns:
        Serialized ONNX model. Input ``"features"``: float32 ``[N, F]``; output
        ``"score"``: float32 ``[N]``, the margin (higher means more likely fraud). The
        model passes ``onnx.checker.check_model``.

    Raises:
        ValueError: If the model is not such a booster or its feature count differs.
    """
    dump = _booster_json(model)
    learner = dump["learner"]
    n_in = int(learner["learner_model_param"]["num_feature"])
    if n_in != n_features:
        raise ValueError(f"model was fitted on {n_in} features, n_features={n_features}")
    if int(learner["learner_model_param"].get("num_target", "1")) != 1:
        raise ValueError("multi-target boosters are not supported")
    booster = learner["gradient_booster"]
    if booster["name"] != "gbtree":
        raise ValueError(f"only gbtree boosters are exported, got {booster['name']!r}")
    trees = booster["model"]["trees"]
    if not trees:
        raise ValueError("the booster has no trees")
    margin0 = base_margin(learner)

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
    for tree_id, tree in enumerate(trees):
        if any(int(t) != 0 for t in tree["split_type"]):
            raise ValueError("categorical splits are not supported")
        left = np.asarray(tree["left_children"], dtype=np.int64)
        right = np.asarray(tree["right_children"], dtype=np.int64)
        cond = np.asarray(tree["split_conditions"], dtype=np.float32)
        is_leaf = left == -1
        n_nodes = left.shape[0]
        ids = np.arange(n_nodes, dtype=np.int64)
        tree_ids.append(np.full(n_nodes, tree_id, dtype=np.int64))
        node_ids.append(ids)
        feature_ids.append(np.where(is_leaf, 0, np.asarray(tree["split_indices"], np.int64)))
        modes.extend("LEAF" if leaf else "BRANCH_LT" for leaf in is_leaf)
        thresholds.append(np.where(is_leaf, np.float32(0), cond))
        true_ids.append(np.where(is_leaf, 0, left))
        false_ids.append(np.where(is_leaf, 0, right))
        missing_true.append(np.where(is_leaf, 0, np.asarray(tree["default_left"], np.int64)))
        leaf_tree_ids.append(np.full(int(is_leaf.sum()), tree_id, dtype=np.int64))
        leaf_node_ids.append(ids[is_leaf])
        values = cond[is_leaf]
        if tree_id == 0:
            # XGBoost starts each row's float32 sum at the base margin and adds the trees
            # in order; folding the base margin into the first tree's leaves makes
            # onnxruntime's in-order float32 sum round the same way (up to the last bit
            # of the base margin, which XGBoost derives from base_score in float32).
            values = (np.float32(margin0) + values).astype(np.float32)
        leaf_values.append(values)

    def cat(parts: list[np.ndarray]) -> list[Any]:
        return np.concatenate(parts).tolist()

    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        inputs=[INPUT_NAME],
        outputs=["margin_2d"],
        domain="ai.onnx.ml",
        name="boosted_trees",
        n_targets=1,
        aggregate_function="SUM",
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
        nodes=[ensemble, helper.make_node("Reshape", ["margin_2d", "flat_shape"], [OUTPUT_NAME])],
        name="gradient_boosted_trees",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1])],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", _OPSET),
            helper.make_opsetid("ai.onnx.ml", _ML_OPSET),
        ],
        producer_name="txfast",
        doc_string=(
            f"XGBoost margin (log-odds): {len(trees)} trees, base margin {margin0:.6g}, "
            f"{n_features} features"
        ),
    )
    onnx_model.ir_version = _IR_VERSION
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString()
