"""Batch scoring with the registry's champion model in onnxruntime.

A ``Scorer`` holds one active model: an onnxruntime session, its calibration and its
metadata, bundled in one immutable object. Every batch call reads that object once, so a
concurrent ``reload_if_changed()`` swaps models *between* batches: a batch is scored by
exactly one model version, never a mix.

Scores:

* **raw score** — what the ONNX graph outputs (for Isolation Forest the anomaly score of
  the original paper, in (0, 1]; for gradient-boosted trees the margin, i.e. the
  log-odds of fraud; higher is more suspicious either way);
* **score** — the calibrated anomaly score in [0, 1]: the fraction of training traffic
  whose raw score is below the row's raw score (interpolated between stored quantiles).
  ``score >= threshold`` flags an anomaly; with the default threshold 0.99 that is the
  top 1 % of training traffic. A model whose threshold was calibrated also carries risk
  bands (``ScoredBatch.bands``) for the rules.

Feature batches are float32 ``(n, F)`` arrays in the model's column order. NaN is passed
through to the model (an exported Isolation Forest routes it like scikit-learn does).

Only numpy, msgspec and onnxruntime are needed here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from txfast.exceptions import ModelMismatchError, TxfastError
from txfast.explain import EXPLAINER_FILE, Explainer, Method, TreeTables
from txfast.registry import LoadedModel, ModelMetadata, ModelVersion, Registry, RegistryError

__all__ = [
    "Calibrator",
    "ModelMismatchError",
    "ScoredBatch",
    "Scorer",
    "check_features",
    "fit_calibration",
]

log = logging.getLogger(__name__)


def fit_calibration(raw_scores: np.ndarray, n_quantiles: int = 1001) -> list[float]:
    """Summarise training raw scores as evenly spaced quantiles for ``Calibrator``.

    Args:
        raw_scores: Raw scores of the training sample (any shape, finite).
        n_quantiles: Number of quantiles, at probabilities ``0, 1/(n-1), …, 1``.

    Returns:
        ``n_quantiles`` non-decreasing floats (JSON-ready).

    Raises:
        ValueError: If there are no scores, a score is not finite or ``n_quantiles < 2``.
    """
    if n_quantiles < 2:
        raise ValueError(f"n_quantiles must be at least 2, got {n_quantiles}")
    scores = np.asarray(raw_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot calibrate on an empty sample")
    if not np.isfinite(scores).all():
        raise ValueError("raw scores must be finite")
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, n_quantiles))
    return np.maximum.accumulate(quantiles).tolist()  # guard against rounding wobble


class Calibrator:
    """Vectorised empirical-CDF calibration from stored quantiles.

    For raw score ``s`` the result is the fraction of training rows with a raw score
    strictly below ``s``, linearly interpolated between quantiles; 0 below the training
    minimum, 1 above the maximum. Ties in the training scores are kept as steps: a score
    equal to a tied value gets the fraction below the tie, anything above it the fraction
    up to the end of the tie.

    Args:
        quantiles: Non-decreasing raw-score quantiles at evenly spaced probabilities
            ``0, 1/(n-1), …, 1`` (``n >= 2``), as produced by ``fit_calibration``.

    Raises:
        ValueError: If the quantiles are too few, not finite or decreasing.
    """

    __slots__ = ("_fp", "_xp")

    def __init__(self, quantiles: Sequence[float] | np.ndarray) -> None:
        q = np.asarray(quantiles, dtype=np.float64)
        if q.ndim != 1 or q.size < 2:
            raise ValueError("calibration needs at least 2 quantiles")
        if not np.isfinite(q).all() or (np.diff(q) < 0).any():
            raise ValueError("calibration quantiles must be finite and non-decreasing")
        p = np.linspace(0.0, 1.0, q.size)
        values, first, counts = np.unique(q, return_index=True, return_counts=True)
        below = p[first]
        upto = p[first + counts - 1]
        just_above = np.nextafter(values, np.inf)
        following = np.append(values[1:], np.inf)
        step = (counts > 1) & (just_above < following)
        xp = np.concatenate([values, just_above[step]])
        fp = np.concatenate([below, upto[step]])
        order = np.argsort(xp, kind="stable")
        self._xp = xp[order]
        self._fp = fp[order]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate raw scores.

        Args:
            raw: Raw scores, any shape.

        Returns:
            float32 array of the same shape with values in [0, 1].
        """
        out = np.interp(raw, self._xp, self._fp, left=0.0, right=1.0)
        bad = ~np.isfinite(out)
        if bad.any():  # a segment narrower than ~1e-308 overflows np.interp's slope
            out[bad] = self._interp_by_ratio(np.asarray(raw, dtype=np.float64)[bad])
        return out.astype(np.float32)

    def _interp_by_ratio(self, x: np.ndarray) -> np.ndarray:
        """Slow, overflow-free interpolation: ``fp[k] + (x - xp[k]) / (xp[k+1] - xp[k]) * Δfp``."""
        xp, fp = self._xp, self._fp
        k = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, xp.size - 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip((x - xp[k]) / (xp[k + 1] - xp[k]), 0.0, 1.0)
        out = fp[k] + t * (fp[k + 1] - fp[k])
        out[x < xp[0]] = 0.0
        out[x > xp[-1]] = 1.0
        return out


def check_features(
    metadata: ModelMetadata, feature_names: Sequence[str], feature_version: str
) -> None:
    """Refuse a model trained on other features than the ones provided.

    Args:
        metadata: The model's metadata.
        feature_names: Feature columns the caller will pass, in order.
        feature_version: Feature-set version the caller computes.

    Raises:
        ModelMismatchError: If the feature version, the names or their order differ; the
            message names the versions and the first differing feature.
    """
    problems = []
    if metadata.feature_version != feature_version:
        problems.append(
            f"feature version: model {metadata.feature_version!r}, provided {feature_version!r}"
        )
    expected = list(metadata.feature_names)
    provided = list(feature_names)
    if expected != provided:
        for i in range(max(len(expected), len(provided))):
            want = expected[i] if i < len(expected) else None
            have = provided[i] if i < len(provided) else None
            if want != have:
                break
        if want is None:
            detail = f"unexpected extra feature {have!r}"
        elif have is None:
            detail = f"missing feature {want!r}"
        else:
            detail = f"model expects {want!r}, provided {have!r}"
        problems.append(
            f"features differ at column {i}: {detail} "
            f"(model has {len(expected)} features, provided {len(provided)})"
        )
    if problems:
        who = f"model {metadata.name!r} {metadata.version}".strip() if metadata.name else "model"
        raise ModelMismatchError(
            f"{who} does not match the scorer's features: " + "; ".join(problems)
        )


def _bands(metadata: ModelMetadata) -> tuple[float, float, float] | None:
    b = metadata.risk_bands
    return None if b is None else (b.medium, b.high, b.critical)


class ScoredBatch(NamedTuple):
    """Scores of one batch, all from one model version.

    Attributes:
        raw: float32 ``[n]`` raw model scores.
        score: float32 ``[n]`` calibrated anomaly scores in [0, 1].
        is_anomaly: bool ``[n]``, ``score >= threshold``.
        model_version: Version that scored the batch.
        threshold: Threshold used for ``is_anomaly``.
        bands: The model's calibrated MEDIUM/HIGH/CRITICAL bands, ``None`` if it has none.
        explainer: Explains rows for this very model version; ``None`` when the model has
            no explainer or explanations are off.
        shadow_score: float32 ``[n]`` calibrated scores of the shadow challenger, if one ran.
        shadow_version: The shadow challenger's version, if one ran.
    """

    raw: np.ndarray
    score: np.ndarray
    is_anomaly: np.ndarray
    model_version: str
    threshold: float
    bands: tuple[float, float, float] | None = None
    explainer: Explainer | None = None
    shadow_score: np.ndarray | None = None
    shadow_version: str | None = None


@dataclass(frozen=True, slots=True)
class _Active:
    info: ModelVersion
    session: ort.InferenceSession
    calibrator: Calibrator
    input_name: str
    output_name: str
    n_features: int
    explainer: Explainer | None


def _session_options(threads: int | None, allow_spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime picks (physical cores)
    options.inter_op_num_threads = 1
    # Spinning workers shave a few microseconds off each call on an idle machine but burn
    # a core between calls and halve throughput when the cores are shared with other
    # work (the feature engine, decoding, sinks).
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    return options


class Scorer:
    """Scores feature batches with one registered model, calibrated to [0, 1].

    Args:
        model: The model to serve (e.g. ``Registry(root).load(name)``).
        feature_names: Feature columns the caller will pass, in order.
        feature_version: Feature-set version the caller computes.
        threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose.
        allow_spinning: Let idle onnxruntime threads busy-wait for the next call. Only
            worth it when the scorer has cores to itself.
        explain: Load the model's explainer (``explainer.npz``) when it has one.
        explain_top_k: Contributions kept per explanation.
        explain_method: ``"treeshap"`` or ``"path"``; ``None`` uses the model's default.

    Raises:
        ModelMismatchError: If the model was trained on other features.
        RegistryError: If onnxruntime cannot load the model or its inputs do not fit.
        ValueError: If ``threads`` is not a positive integer.

    Example:
        >>> scorer = Scorer.from_registry(                              # doctest: +SKIP
        ...     "models", feature_names=names, feature_version="txfast-features/1")
        >>> scores = scorer.score(features)                             # doctest: +SKIP
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        feature_names: Sequence[str],
        feature_version: str,
        threads: int | None = None,
        allow_spinning: bool = False,
        explain: bool = True,
        explain_top_k: int = 5,
        explain_method: Method | None = None,
    ) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self._feature_names = list(feature_names)
        self._feature_version = feature_version
        self._threads = threads
        self._allow_spinning = allow_spinning
        self._explain = explain
        self._explain_top_k = explain_top_k
        self._explain_method = explain_method
        self._registry: Registry | None = None
        self._name: str | None = None
        self._reload_lock = threading.Lock()
        self._active = self._activate(model)
        self._shadow: _Active | None = None
        self._shadow_pointer: str | None = None  # the challenger pointer last acted on

    @classmethod
    def from_registry(
        cls,
        root: str | os.PathLike[str],
        name: str = "default",
        *,
        feature_names: Sequence[str],
        feature_version: str,
        threads: int | None = None,
        allow_spinning: bool = False,
        **options: Any,
    ) -> Scorer:
        """Load the champion of ``name`` from the registry at ``root``.

        The scorer remembers the registry so that ``reload_if_changed()`` can follow the
        champion pointer.

        Args:
            root: Registry directory.
            name: Model name.
            feature_names: Feature columns the caller will pass, in order.
            feature_version: Feature-set version the caller computes.
            threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose.
            allow_spinning: Let idle onnxruntime threads busy-wait for the next call.
            **options: The explanation options of the constructor.

        Raises:
            RegistryError: If the model is unknown, has no champion or its files are
                invalid.
            ModelMismatchError: If the champion was trained on other features.
        """
        registry = Registry(root)
        scorer = cls(
            registry.load(name),
            feature_names=feature_names,
            feature_version=feature_version,
            threads=threads,
            allow_spinning=allow_spinning,
            **options,
        )
        scorer._registry = registry
        scorer._name = name
        scorer._follow_challenger()
        return scorer

    def _activate(self, model: LoadedModel, *, explain: bool | None = None) -> _Active:
        metadata = model.metadata
        check_features(metadata, self._feature_names, self._feature_version)
        try:
            session = ort.InferenceSession(
                model.onnx_bytes,
                sess_options=_session_options(self._threads, self._allow_spinning),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RegistryError(
                f"onnxruntime cannot load model {model.info.name!r} {model.info.version}: {exc}"
            ) from exc
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        where = f"model {model.info.name!r} {model.info.version}"
        if metadata.input_name not in inputs:
            raise RegistryError(f"{where} has no input {metadata.input_name!r}")
        if metadata.output_name not in outputs:
            raise RegistryError(f"{where} has no output {metadata.output_name!r}")
        n_features = len(metadata.feature_names)
        shape = inputs[metadata.input_name].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n_features):
            raise RegistryError(
                f"{where}: input shape {shape} does not fit {n_features} feature columns"
            )
        return _Active(
            info=model.info,
            session=session,
            calibrator=Calibrator(metadata.calibration.quantiles),
            input_name=metadata.input_name,
            output_name=metadata.output_name,
            n_features=n_features,
            explainer=(
                self._explainer(model, where)
                if (self._explain if explain is None else explain)
                else None
            ),
        )

    def _explainer(self, model: LoadedModel, where: str) -> Explainer | None:
        data = model.artifact(EXPLAINER_FILE)
        if data is None:
            log.info("%s has no explainer: alerts are stored without explanations", where)
            return None
        try:
            return Explainer(
                TreeTables.from_bytes(data),
                model.metadata.feature_names,
                top_k=self._explain_top_k,
                method=self._explain_method,
            )
        except (ValueError, TxfastError) as exc:
            raise RegistryError(f"{where}: invalid {EXPLAINER_FILE}: {exc}") from exc

    # -- properties -----------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """Version of the active model, e.g. ``"v3"``."""
        return self._active.info.version

    @property
    def shadow_version(self) -> str | None:
        """Version of the shadow challenger scoring beside the champion, if any."""
        shadow = self._shadow
        return None if shadow is None else shadow.info.version

    @property
    def model_name(self) -> str:
        """Registered name of the active model."""
        return self._active.info.name

    @property
    def threshold(self) -> float:
        """Calibrated score at or above which a row is anomalous."""
        return self._active.info.metadata.threshold

    @property
    def metadata(self) -> ModelMetadata:
        """Metadata of the active model."""
        return self._active.info.metadata

    @property
    def risk_bands(self) -> tuple[float, float, float] | None:
        """The active model's calibrated MEDIUM/HIGH/CRITICAL bands, if it has any."""
        return _bands(self._active.info.metadata)

    @property
    def feature_names(self) -> list[str]:
        """Feature columns expected by ``score``, in order."""
        return list(self._feature_names)

    # -- scoring --------------------------------------------------------------------------

    @staticmethod
    def _run(active: _Active, features: Any) -> np.ndarray:
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != active.n_features:
            raise ValueError(
                f"expected a 2-D array with {active.n_features} feature columns, "
                f"got shape {x.shape}"
            )
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        out = active.session.run([active.output_name], {active.input_name: x})[0]
        return out.reshape(-1)

    def raw_score(self, features: np.ndarray) -> np.ndarray:
        """Raw model scores.

        Args:
            features: ``(n, F)`` array, converted to C-contiguous float32 if needed.

        Returns:
            float32 array of shape ``(n,)``.

        Raises:
            ValueError: If ``features`` is not 2-D with ``F`` columns.
        """
        return self._run(self._active, features)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Calibrated anomaly scores in [0, 1].

        Args:
            features: ``(n, F)`` array, converted to C-contiguous float32 if needed.

        Returns:
            float32 array of shape ``(n,)``.

        Raises:
            ValueError: If ``features`` is not 2-D with ``F`` columns.
        """
        active = self._active
        return active.calibrator(self._run(active, features))

    def score_batch(self, features: np.ndarray) -> ScoredBatch:
        """Raw and calibrated scores, anomaly flags and the model version, consistently.

        Args:
            features: ``(n, F)`` array, converted to C-contiguous float32 if needed.

        Returns:
            A ``ScoredBatch`` whose every field comes from the same model version.

        Raises:
            ValueError: If ``features`` is not 2-D with ``F`` columns.
        """
        active, shadow = self._active, self._shadow
        raw = self._run(active, features)
        score = active.calibrator(raw)
        threshold = active.info.metadata.threshold
        shadow_score = None
        if shadow is not None:
            shadow_score = shadow.calibrator(self._run(shadow, features))
        return ScoredBatch(
            raw=raw,
            score=score,
            is_anomaly=score >= np.float32(threshold),
            model_version=active.info.version,
            threshold=threshold,
            bands=_bands(active.info.metadata),
            explainer=active.explainer,
            shadow_score=shadow_score,
            shadow_version=None if shadow is None else shadow.info.version,
        )

    # -- reloading ------------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Switch to the registry's champion if the pointer moved to another version.

        Call it between batches. The new model is fully loaded and checked before it
        replaces the active one; a batch in flight in another thread finishes with the
        model it started with. If the champion pointer is gone, the current model stays.

        Returns:
            ``True`` if another model version is now active.

        Raises:
            ModelMismatchError: If the new champion was trained on other features; the
                current model stays active.
            RegistryError: If the new champion cannot be loaded; the current model stays
                active.
        """
        if self._registry is None or self._name is None:
            return False
        self._follow_challenger()
        version = self._registry.champion_version(self._name)
        if version is None or version == self._active.info.version:
            return False
        with self._reload_lock:
            if version == self._active.info.version:  # another thread got here first
                return False
            self._active = self._activate(self._registry.load(self._name, version))
        return True

    def _follow_challenger(self) -> None:
        """Start, switch or stop the shadow challenger as its pointer says.

        The shadow never acts, so it never stops the champion either: a challenger that
        cannot be loaded or was trained on other features is logged and skipped until its
        pointer changes.
        """
        assert self._registry is not None and self._name is not None
        try:
            version = self._registry.challenger_version(self._name)
        except RegistryError as exc:
            version = None
            if self._shadow_pointer != "corrupted":
                log.error("challenger pointer of %r ignored: %s", self._name, exc)
            self._shadow_pointer = "corrupted"
            self._shadow = None
            return
        if version == self._shadow_pointer:
            return
        with self._reload_lock:
            self._shadow_pointer = version
            if version is None:
                self._shadow = None
                log.info("shadow challenger of %r stopped", self._name)
                return
            try:
                shadow = self._activate(self._registry.load(self._name, version), explain=False)
            except (RegistryError, ModelMismatchError) as exc:
                self._shadow = None
                log.error("challenger %s/%s not run in shadow: %s", self._name, version, exc)
                return
            self._shadow = shadow
            log.info("challenger %s/%s scores in shadow", self._name, version)

    def __repr__(self) -> str:
        info = self._active.info
        return f"Scorer(model={info.name!r}, version={info.version!r})"
