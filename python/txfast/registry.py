"""A file-system model registry with versioned models and a champion pointer.

Layout::

    <root>/<name>/v1/model.onnx
    <root>/<name>/v1/metadata.json     # ModelMetadata, JSON
    <root>/<name>/v1/explainer.npz     # optional artifacts (checksums in the metadata)
    <root>/<name>/v2/...
    <root>/<name>/CHAMPION             # "v2\\n": the version the scorer serves
    <root>/<name>/CHALLENGER           # optional "v3\\n": scored in shadow, never acting
    <root>/<name>/HISTORY.json         # every promote / rollback, oldest first

Versions are immutable once registered and numbered ``v1, v2, …`` in registration order.
A version directory appears atomically (it is written under a temporary name and renamed),
and ``CHAMPION`` / ``HISTORY.json`` are replaced atomically (temporary file +
``os.replace``), so a reader never sees a half-written model or pointer. Writers on one
host are serialised with an advisory lock file (``<name>/.lock``).

The module needs only msgspec and, for checking uploaded models, onnx.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from txfast.exceptions import RegistryError

try:  # advisory locking is POSIX-only; elsewhere writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Calibration",
    "ChampionEvent",
    "LoadedModel",
    "ModelMetadata",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "RiskBands",
    "ThresholdCalibration",
    "TrainingData",
]

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CHAMPION_FILE = "CHAMPION"
CHALLENGER_FILE = "CHALLENGER"
HISTORY_FILE = "HISTORY.json"
_LOCK_FILE = ".lock"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """Mapping from raw model scores to calibrated anomaly scores in [0, 1].

    Attributes:
        quantiles: Raw-score quantiles of the training sample at the evenly spaced
            probabilities ``0, 1/(n-1), …, 1`` (non-decreasing). The calibrated score of a
            raw score ``s`` is the interpolated fraction of training rows scoring below
            ``s`` (see ``txfast.scoring.Calibrator``).
        method: Calibration method; only ``"ecdf"`` (empirical CDF) exists.
    """

    quantiles: Annotated[list[float], msgspec.Meta(min_length=2)]
    method: Literal["ecdf"] = "ecdf"


class RiskBands(msgspec.Struct, frozen=True, kw_only=True):
    """Calibrated-score bands of the risk levels (score ≥ band → that level or above).

    Stored with a model when its threshold was calibrated; ``[risk]`` bands set in the
    configuration take precedence (see ``txfast.rules.resolve_bands``).

    Attributes:
        medium: Lowest calibrated score of MEDIUM.
        high: Lowest calibrated score of HIGH.
        critical: Lowest calibrated score of CRITICAL.
    """

    medium: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    high: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    critical: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class ThresholdCalibration(msgspec.Struct, frozen=True, kw_only=True):
    """How a model's threshold and risk bands were chosen, and what they should give.

    Attributes:
        method: ``"alert_rate"`` (a share of traffic, possibly given as alerts per day) or
            ``"precision"`` (the lowest threshold reaching a precision on labelled rows).
        target: The alert rate (share of transactions) or the precision aimed at.
        alerts_per_day: The daily alert budget the rate was derived from, if given.
        reference: Rows the threshold was read on: ``"training"`` (the calibration's own
            traffic) or ``"validation"`` (labelled rows not used for fitting).
        rows: Number of reference rows.
        expected_alert_rate: Share of reference rows at or above the threshold.
        expected_alerts_per_day: The same as alerts per day of the reference period.
        expected_precision: Precision on the reference rows, when they are labelled.
        expected_recall: Recall on the reference rows, when they are labelled.
    """

    method: Literal["alert_rate", "precision"]
    target: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
    alerts_per_day: float | None = None
    reference: Literal["training", "validation"] = "training"
    rows: Annotated[int, msgspec.Meta(ge=0)] = 0
    expected_alert_rate: float | None = None
    expected_alerts_per_day: float | None = None
    expected_precision: float | None = None
    expected_recall: float | None = None


class TrainingData(msgspec.Struct, frozen=True, kw_only=True):
    """What a model was trained on.

    Attributes:
        rows: Number of training rows (including any held-out rows).
        start_ms: Event time of the earliest training row, epoch milliseconds, if known.
        end_ms: Event time of the latest training row, epoch milliseconds, if known.
        source: Where the rows came from (a path or a description), if known.
        rejected: Input events rejected before training (invalid), if known.
        labelled: Rows with a known label, if labels were used.
        positives: Rows labelled fraud, if labels were used.
        validation_start_ms: Event time from which rows were held out for validation
            (early stopping, threshold), if any.
    """

    rows: Annotated[int, msgspec.Meta(ge=0)]
    start_ms: int | None = None
    end_ms: int | None = None
    source: str | None = None
    rejected: Annotated[int, msgspec.Meta(ge=0)] | None = None
    labelled: Annotated[int, msgspec.Meta(ge=0)] | None = None
    positives: Annotated[int, msgspec.Meta(ge=0)] | None = None
    validation_start_ms: int | None = None


class ModelMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the scorer needs to know about a model, stored as ``metadata.json``.

    Attributes:
        kind: Model family, e.g. ``"isolation_forest"``.
        feature_names: Input columns, in order; the scorer refuses other features.
        feature_version: Version of the feature set the model was trained on.
        calibration: Raw score → calibrated score mapping.
        threshold: Calibrated score at or above which a transaction is anomalous.
        training: Training data size and event-time range.
        metrics: Evaluation figures (names are free-form, values are numbers); trainers
            with a validation period store out-of-time figures as ``validation_*``.
        params: Training hyper-parameters, for provenance.
        name: Registered model name (set by the registry).
        version: Registered version, ``"v<n>"`` (set by the registry).
        created_at: Registration time, ISO-8601 UTC (set by the registry when empty).
        model_sha256: SHA-256 of ``model.onnx`` (set by the registry, checked on load).
        input_name: Name of the ONNX graph's float32 ``[N, F]`` input.
        output_name: Name of the ONNX graph's raw-score output (``[N]`` or ``[N, 1]``).
        schema_version: Version of this metadata layout.
        risk_bands: Risk-level bands chosen with the threshold, if calibrated.
        threshold_calibration: How the threshold was chosen, if calibrated.
        artifacts: Extra files stored beside the model (e.g. ``explainer.npz``), by file
            name, with their SHA-256 (set by the registry, checked on load).
        reference: The training distribution for drift monitoring: per feature (and
            ``"score"``) the inner decile edges and each bin's share of training rows
            (see ``txfast.metrics``); empty for models trained before it existed.
    """

    kind: str
    feature_names: Annotated[list[str], msgspec.Meta(min_length=1)]
    feature_version: str
    calibration: Calibration
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    training: TrainingData
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    name: str = ""
    version: str = ""
    created_at: str = ""
    model_sha256: str = ""
    input_name: str = "features"
    output_name: str = "score"
    schema_version: int = 1
    risk_bands: RiskBands | None = None
    threshold_calibration: ThresholdCalibration | None = None
    artifacts: dict[str, str] = {}
    reference: dict[str, dict[str, list[float]]] = {}


class ChampionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change of the champion pointer, as recorded in ``HISTORY.json``.

    Attributes:
        at: Time of the change, ISO-8601 UTC.
        action: ``"promote"`` or ``"rollback"``.
        version: The champion after the change.
        previous: The champion before the change, if there was one.
    """

    at: str
    action: Literal["promote", "rollback"]
    version: str
    previous: str | None = None


class _History(msgspec.Struct, kw_only=True):
    events: list[ChampionEvent] = []


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A registered model version (its files are not read beyond the metadata).

    Attributes:
        name: Model name.
        version: Version string, ``"v<n>"``.
        path: Directory holding ``model.onnx`` and ``metadata.json``.
        metadata: The parsed, validated metadata.
    """

    name: str
    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def number(self) -> int:
        """The numeric part of the version (``3`` for ``"v3"``)."""
        return _version_number(self.version)

    @property
    def model_path(self) -> Path:
        """Path of the ONNX file."""
        return self.path / MODEL_FILE


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version together with its verified ONNX bytes.

    Attributes:
        info: The version's identity and metadata.
        onnx_bytes: Serialized ONNX model (checksum verified).
    """

    info: ModelVersion
    onnx_bytes: bytes

    @property
    def metadata(self) -> ModelMetadata:
        """Shortcut for ``info.metadata``."""
        return self.info.metadata

    def artifact(self, file_name: str) -> bytes | None:
        """An artifact's bytes, checksum verified; ``None`` if the version has none.

        Raises:
            RegistryError: If the file is missing or fails its checksum.
        """
        expected = self.metadata.artifacts.get(file_name)
        if expected is None:
            return None
        path = self.info.path / file_name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"missing {path}") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise RegistryError(f"checksum mismatch for {path}: file is corrupted")
        return data


def _version_number(version: str) -> int:
    match = _VERSION_RE.match(version)
    if match is None:
        raise RegistryError(f"invalid version {version!r}: expected 'v1', 'v2', …")
    return int(match.group(1))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file only."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _encode_metadata(metadata: ModelMetadata) -> bytes:
    return msgspec.json.format(msgspec.json.encode(metadata), indent=2) + b"\n"


def _check_metadata(metadata: ModelMetadata) -> None:
    seen: set[str] = set()
    for feature in metadata.feature_names:
        if feature in seen:
            raise RegistryError(f"duplicate feature name {feature!r} in metadata")
        seen.add(feature)
    q = metadata.calibration.quantiles
    if not all(math.isfinite(x) for x in q) or any(b < a for a, b in zip(q, q[1:], strict=False)):
        raise RegistryError("calibration quantiles must be finite and non-decreasing")
    t = metadata.training
    if t.start_ms is not None and t.end_ms is not None and t.start_ms > t.end_ms:
        raise RegistryError(f"training start_ms {t.start_ms} is after end_ms {t.end_ms}")
    b = metadata.risk_bands
    if b is not None and not b.medium <= b.high <= b.critical:
        raise RegistryError(
            f"risk bands must satisfy medium <= high <= critical, got "
            f"{b.medium} / {b.high} / {b.critical}"
        )


_NESTED: dict[str, type[msgspec.Struct]] = {
    "calibration": Calibration,
    "training": TrainingData,
    "risk_bands": RiskBands,
    "threshold_calibration": ThresholdCalibration,
}


def _check_known_fields(fields: Mapping[str, Any]) -> None:
    """Refuse unknown keys on write, so that a typo does not silently drop data.

    Reading stays lenient (unknown keys are ignored) so older scorers can read newer files.
    """
    parts: list[tuple[str, Any, type[msgspec.Struct]]] = [("", fields, ModelMetadata)]
    parts += [(f"{key}.", fields[key], cls) for key, cls in _NESTED.items() if key in fields]
    for prefix, value, struct in parts:
        if not isinstance(value, Mapping):
            continue  # the decoder reports the wrong type
        unknown = sorted(set(value) - set(struct.__struct_fields__))
        if unknown:
            known = ", ".join(struct.__struct_fields__)
            raise RegistryError(
                f"invalid metadata: unknown field {prefix + unknown[0]!r} (known: {known})"
            )


def _check_onnx(onnx_bytes: bytes, metadata: ModelMetadata) -> None:
    """Check that the ONNX model parses and has the inputs/outputs the metadata names."""
    import onnx  # runtime dependency; imported lazily to keep scorer start-up lean

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise RegistryError(f"model bytes are not a valid ONNX model: {exc}") from exc
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    if metadata.input_name not in inputs:
        raise RegistryError(
            f"ONNX graph has no input {metadata.input_name!r} (inputs: {sorted(inputs)})"
        )
    outputs = [o.name for o in graph.output]
    if metadata.output_name not in outputs:
        raise RegistryError(
            f"ONNX graph has no output {metadata.output_name!r} (outputs: {outputs})"
        )
    dims = inputs[metadata.input_name].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        if dims[1].dim_value != len(metadata.feature_names):
            raise RegistryError(
                f"ONNX input has {dims[1].dim_value} features, metadata names "
                f"{len(metadata.feature_names)}"
            )


class Registry:
    """Model registry rooted at a directory.

    Args:
        root: Registry directory; created on first registration.

    Example:
        >>> reg = Registry("models")                                     # doctest: +SKIP
        >>> mv = reg.register("default", onnx_bytes, metadata, promote=True)  # doctest: +SKIP
        >>> reg.champion("default").version                              # doctest: +SKIP
        'v1'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        """The registry directory."""
        return self._root

    def __repr__(self) -> str:
        return f"Registry({str(self._root)!r})"

    # -- paths and validation -------------------------------------------------------------

    def _name_dir(self, name: str, *, must_exist: bool = True) -> Path:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RegistryError(
                f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
                "(at most 128 characters, not starting with '.', '_' or '-')"
            )
        path = self._root / name
        if must_exist and not path.is_dir():
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"unknown model {name!r} in {self._root} (known: {known})")
        return path

    def _version_numbers(self, name_dir: Path) -> list[int]:
        numbers = []
        for entry in os.scandir(name_dir):
            match = _VERSION_RE.match(entry.name)
            if match and entry.is_dir():
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    @contextlib.contextmanager
    def _lock(self, name_dir: Path) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - non-POSIX
            yield
            return
        with open(name_dir / _LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_version(self, name: str, version: str) -> ModelVersion:
        name_dir = self._name_dir(name)
        _version_number(version)
        path = name_dir / version
        if not path.is_dir():
            known = ", ".join(f"v{n}" for n in self._version_numbers(name_dir)) or "none"
            raise RegistryError(f"unknown version {version!r} of model {name!r} (known: {known})")
        meta_path = path / METADATA_FILE
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"missing {meta_path}") from None
        try:
            metadata = msgspec.json.decode(raw, type=ModelMetadata)
        except msgspec.DecodeError as exc:
            raise RegistryError(f"corrupted metadata {meta_path}: {exc}") from exc
        try:
            _check_metadata(metadata)
        except RegistryError as exc:
            raise RegistryError(f"corrupted metadata {meta_path}: {exc}") from exc
        if metadata.name != name or metadata.version != version:
            raise RegistryError(
                f"corrupted metadata {meta_path}: it describes "
                f"{metadata.name!r} {metadata.version!r}, not {name!r} {version!r}"
            )
        if not (path / MODEL_FILE).is_file():
            raise RegistryError(f"missing {path / MODEL_FILE}")
        return ModelVersion(name=name, version=version, path=path, metadata=metadata)

    # -- queries --------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Registered model names, sorted."""
        if not self._root.is_dir():
            return []
        return sorted(
            e.name for e in os.scandir(self._root) if e.is_dir() and _NAME_RE.match(e.name)
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of a model, oldest first.

        Raises:
            RegistryError: If the model is unknown or a version's files are missing or
                corrupted.
        """
        name_dir = self._name_dir(name)
        return [self._read_version(name, f"v{n}") for n in self._version_numbers(name_dir)]

    def get(self, name: str, version: str) -> ModelVersion:
        """One version's identity and metadata (the ONNX file is not read).

        Raises:
            RegistryError: If the name or version is unknown or its files are invalid.
        """
        return self._read_version(name, version)

    def champion_version(self, name: str) -> str | None:
        """The champion's version string, reading only the pointer file.

        Returns:
            ``"v<n>"``, or ``None`` when no version has been promoted.

        Raises:
            RegistryError: If the model is unknown or the pointer file is corrupted.
        """
        pointer = self._name_dir(name) / CHAMPION_FILE
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(text):
            raise RegistryError(f"corrupted champion pointer {pointer}: {text[:40]!r}")
        return text

    def challenger_version(self, name: str) -> str | None:
        """The shadow challenger's version, or ``None`` when none is set.

        Raises:
            RegistryError: If the model is unknown or the pointer file is corrupted.
        """
        pointer = self._name_dir(name) / CHALLENGER_FILE
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(text):
            raise RegistryError(f"corrupted challenger pointer {pointer}: {text[:40]!r}")
        return text

    def set_challenger(self, name: str, version: str | None) -> ModelVersion | None:
        """Run ``version`` in shadow beside the champion (``None`` stops the shadow).

        A shadow model scores every batch the champion scores; its score is stored beside
        the champion's and never changes a decision. Promoting the challenger ends the
        shadow.

        Returns:
            The challenger, or ``None`` when the shadow was stopped.

        Raises:
            RegistryError: If the name or version is unknown or its files are invalid, or
                the version is the champion.
        """
        name_dir = self._name_dir(name)
        with self._lock(name_dir):
            pointer = name_dir / CHALLENGER_FILE
            if version is None:
                with contextlib.suppress(FileNotFoundError):
                    pointer.unlink()
                    _fsync_dir(name_dir)
                return None
            info = self.load(name, version).info
            if self.champion_version(name) == version:
                raise RegistryError(
                    f"{name}/{version} is the champion; it cannot be its challenger"
                )
            _atomic_write(pointer, f"{version}\n".encode())
        return info

    def champion(self, name: str) -> ModelVersion | None:
        """The version currently served, or ``None`` when none has been promoted.

        Raises:
            RegistryError: If the model is unknown or the champion's files are invalid.
        """
        version = self.champion_version(name)
        return None if version is None else self._read_version(name, version)

    def history(self, name: str) -> list[ChampionEvent]:
        """Champion changes of a model, oldest first.

        Raises:
            RegistryError: If the model is unknown or the history file is corrupted.
        """
        return self._read_history(self._name_dir(name)).events

    def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Read a version's metadata and ONNX bytes, verifying the checksum.

        Args:
            name: Model name.
            version: ``"v<n>"``; ``None`` loads the champion.

        Raises:
            RegistryError: If the name or version is unknown, there is no champion, or a
                file is missing, corrupted or fails its checksum.
        """
        if version is None:
            version = self.champion_version(name)
            if version is None:
                raise RegistryError(f"model {name!r} has no champion; promote a version first")
        info = self._read_version(name, version)
        try:
            onnx_bytes = info.model_path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"missing {info.model_path}") from None
        expected = info.metadata.model_sha256
        if expected and hashlib.sha256(onnx_bytes).hexdigest() != expected:
            raise RegistryError(f"checksum mismatch for {info.model_path}: file is corrupted")
        return LoadedModel(info=info, onnx_bytes=onnx_bytes)

    # -- changes --------------------------------------------------------------------------

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        metadata: ModelMetadata | Mapping[str, Any],
        *,
        promote: bool = False,
        artifacts: Mapping[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store a new model version.

        The registry assigns ``name``, ``version``, ``model_sha256``, ``artifacts`` and
        (when empty) ``created_at``; whatever the given metadata holds for them is replaced.

        Args:
            name: Model name (letters, digits, ``.``, ``_``, ``-``).
            onnx_bytes: Serialized ONNX model.
            metadata: A ``ModelMetadata`` or a mapping with its fields.
            promote: Also make the new version the champion.
            artifacts: Extra files to store beside the model, by file name (for example
                ``explainer.npz``); their checksums go into the metadata.

        Returns:
            The new version.

        Raises:
            RegistryError: If the name, metadata or model is invalid.
        """
        name_dir = self._name_dir(name, must_exist=False)
        if not isinstance(onnx_bytes, bytes | bytearray | memoryview) or not onnx_bytes:
            raise RegistryError("onnx_bytes must be non-empty bytes")
        onnx_bytes = bytes(onnx_bytes)
        if isinstance(metadata, Mapping):
            _check_known_fields(metadata)
        elif not isinstance(metadata, ModelMetadata):
            raise RegistryError(
                f"metadata must be a ModelMetadata or a mapping, not {type(metadata).__name__}"
            )
        try:
            # Structs are not validated on construction: round-trip them through the decoder.
            fields = msgspec.to_builtins(metadata)
            metadata = msgspec.convert(fields, type=ModelMetadata)
        except (msgspec.ValidationError, TypeError) as exc:
            raise RegistryError(f"invalid metadata: {exc}") from exc
        _check_metadata(metadata)
        _check_onnx(onnx_bytes, metadata)
        extra = {k: bytes(v) for k, v in (artifacts or {}).items()}
        for file_name in extra:
            if (
                file_name in (MODEL_FILE, METADATA_FILE)
                or not _NAME_RE.match(file_name)
                or file_name != Path(file_name).name
            ):
                raise RegistryError(f"invalid artifact name {file_name!r}")

        name_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(name_dir):
            numbers = self._version_numbers(name_dir)
            number = (numbers[-1] if numbers else 0) + 1
            while True:
                version = f"v{number}"
                final = msgspec.structs.replace(
                    metadata,
                    name=name,
                    version=version,
                    created_at=metadata.created_at or _now_iso(),
                    model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                    artifacts={k: hashlib.sha256(v).hexdigest() for k, v in extra.items()},
                )
                tmp = name_dir / f".tmp-{uuid.uuid4().hex}"
                tmp.mkdir()
                try:
                    _write_file(tmp / MODEL_FILE, onnx_bytes)
                    _write_file(tmp / METADATA_FILE, _encode_metadata(final))
                    for file_name, data in extra.items():
                        _write_file(tmp / file_name, data)
                    _fsync_dir(tmp)
                    os.rename(tmp, name_dir / version)
                except OSError:
                    for leftover in tmp.glob("*"):
                        leftover.unlink()
                    tmp.rmdir()
                    if (name_dir / version).exists():  # taken by a writer without a lock
                        number += 1
                        continue
                    raise
                break
            _fsync_dir(name_dir)
            info = ModelVersion(name=name, version=version, path=name_dir / version, metadata=final)
            if promote:
                self._set_champion(name_dir, version, "promote")
        return info

    def promote(self, name: str, version: str) -> ModelVersion:
        """Make ``version`` the champion (a no-op if it already is).

        Raises:
            RegistryError: If the name or version is unknown or its files are invalid.
        """
        name_dir = self._name_dir(name)
        with self._lock(name_dir):
            info = self.load(name, version).info  # full check, including the checksum
            if self.champion_version(name) != version:
                self._set_champion(name_dir, version, "promote")
            self._end_shadow_of(name_dir, version)
        return info

    def rollback(self, name: str) -> ModelVersion:
        """Make the previous champion the champion again.

        Repeated rollbacks walk further back through the promotion history.

        Returns:
            The new champion.

        Raises:
            RegistryError: If the model is unknown or has no previous champion.
        """
        name_dir = self._name_dir(name)
        with self._lock(name_dir):
            stack = self._champion_stack(name_dir)
            if len(stack) < 2:
                raise RegistryError(f"model {name!r} has no previous champion to roll back to")
            previous = stack[-2]
            info = self.load(name, previous).info
            self._set_champion(name_dir, previous, "rollback")
            self._end_shadow_of(name_dir, previous)
        return info

    def _end_shadow_of(self, name_dir: Path, version: str) -> None:
        """Remove the challenger pointer when ``version``, now champion, was the challenger."""
        if self.challenger_version(name_dir.name) == version:
            (name_dir / CHALLENGER_FILE).unlink()
            _fsync_dir(name_dir)

    # -- champion pointer and history -----------------------------------------------------

    def _read_history(self, name_dir: Path) -> _History:
        path = name_dir / HISTORY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return _History()
        try:
            return msgspec.json.decode(raw, type=_History)
        except msgspec.DecodeError as exc:
            raise RegistryError(f"corrupted history {path}: {exc}") from exc

    def _champion_stack(self, name_dir: Path) -> list[str]:
        """Replay the history into the stack of champions, reconciled with the pointer."""
        stack: list[str] = []
        for event in self._read_history(name_dir).events:
            if event.action == "promote":
                if not stack or stack[-1] != event.version:
                    stack.append(event.version)
            elif stack:
                stack.pop()
        current = self.champion_version(name_dir.name)
        # The pointer is written before the history; after a crash in between, the
        # pointer is right and the history lags by one change.
        if current is not None and (not stack or stack[-1] != current):
            if len(stack) >= 2 and stack[-2] == current:
                stack.pop()
            else:
                stack.append(current)
        return stack

    def _set_champion(
        self, name_dir: Path, version: str, action: Literal["promote", "rollback"]
    ) -> None:
        history = self._read_history(name_dir)
        previous = self.champion_version(name_dir.name)
        _atomic_write(name_dir / CHAMPION_FILE, f"{version}\n".encode())
        event = ChampionEvent(at=_now_iso(), action=action, version=version, previous=previous)
        history.events.append(event)
        _atomic_write(
            name_dir / HISTORY_FILE,
            msgspec.json.format(msgspec.json.encode(history), indent=2) + b"\n",
        )
