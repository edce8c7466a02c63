"""Native core of txfast (Rust, PyO3). Use the façades in :mod:`txfast.features`."""

from collections.abc import Iterable, Sequence
from typing import Any, final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "__version__",
    "TxfastError",
    "ConfigError",
    "SnapshotError",
    "InputError",
    "FEATURE_VERSION",
    "FeatureEngine",
    "hash_id",
    "hash_ids",
    "Decoder",
    "line_spans",
    "TreeExplainer",
    "CHANNELS",
    "REJECT_REASONS",
]

__version__: str

FEATURE_VERSION: str
"""Version of the feature set (``"txfast-features/1"``)."""

class TxfastError(Exception):
    """Base class of every txfast error."""

class ConfigError(TxfastError):
    """A configuration value is invalid."""

class SnapshotError(TxfastError):
    """A state snapshot cannot be restored."""

class InputError(TxfastError):
    """Input columns are inconsistent."""

def hash_id(value: str) -> int:
    """Stable 64-bit id of a string: FNV-1a 64 of its UTF-8 bytes, splitmix64 finaliser.

    Never 0 (0 means "absent").
    """

def hash_ids(values: Sequence[str | None]) -> NDArray[np.uint64]:
    """``hash_id`` of every string as a uint64 array; ``None`` and ``""`` give 0."""

@final
class FeatureEngine:
    """Per-card, per-merchant and per-user sliding-window feature engine.

    Every column is defined in ``docs/features.md``. Defaults: card windows 1 min, 1 h, 24 h,
    7 d, 30 d; merchant windows 24 h, 7 d; user window 24 h; ``allowed_lateness_ms`` 1 h;
    ``idle_ttl_ms=None`` (the longest window of each entity kind plus the lateness); 64 shards;
    ``threads=None`` (one thread per CPU); no label windows (label features off). Invalid
    configuration raises ``ConfigError``.
    """

    def __new__(
        cls,
        *,
        card_windows_ms: Sequence[int] = ...,
        merchant_windows_ms: Sequence[int] = ...,
        user_windows_ms: Sequence[int] = ...,
        allowed_lateness_ms: int = ...,
        idle_ttl_ms: int | None = None,
        shards: int = ...,
        threads: int | None = None,
        merchant_label_windows_ms: Sequence[int] = ...,
        card_label_windows_ms: Sequence[int] = ...,
    ) -> FeatureEngine: ...
    @property
    def feature_names(self) -> list[str]:
        """Column names of the output, in order."""

    @property
    def feature_version(self) -> str:
        """Feature-set version (``FEATURE_VERSION``)."""

    def process(
        self,
        ts_ms: NDArray[np.int64],
        card: NDArray[np.uint64],
        amount: NDArray[np.float64],
        merchant: NDArray[np.uint64],
        user: NDArray[np.uint64],
        category: NDArray[np.uint64],
        country: NDArray[np.uint64],
        lat: NDArray[np.float64],
        lon: NDArray[np.float64],
        channel: NDArray[np.uint8],
        out: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float32]:
        """Compute the features of a batch and add its events to the state.

        Takes ten 1-D contiguous arrays of one length with exactly these dtypes, processes the
        events in the given order and returns a C-contiguous float32 array of shape
        ``(n, len(feature_names))``. Releases the GIL while it works. Raises ``InputError``
        on columns of different lengths or invalid values (the state is then unchanged).
        """

    @property
    def labels_enabled(self) -> bool:
        """Whether label columns are configured (any merchant or card label window)."""

    def process_labels(
        self,
        known_ms: NDArray[np.int64],
        card: NDArray[np.uint64],
        merchant: NDArray[np.uint64],
        label: NDArray[np.uint8],
    ) -> int:
        """Add label events to the label state, in order; returns the number of rows.

        Takes four 1-D contiguous arrays of one length with exactly these dtypes. A
        transaction processed afterwards at ``t`` counts a label only if ``known_ms <= t``.
        Ignored (after validation) when no label window is configured. Releases the GIL.
        Raises ``InputError`` on columns of different lengths or a label other than 0/1 (the
        state is then unchanged).
        """

    def snapshot(self) -> bytes:
        """Serialise configuration and state (magic ``b"TXFS"``, format version, config, state).

        Releases the GIL while serialising.
        """

    @classmethod
    def restore(cls, data: bytes) -> FeatureEngine:
        """Rebuild an engine from ``snapshot()`` bytes (default threads).

        Raises ``SnapshotError`` on bad magic, an unsupported version, truncated or corrupted
        data. Releases the GIL while parsing.
        """

    def evict_idle(self, watermark_ms: int | None = None) -> int:
        """Drop entities idle for longer than their kind's TTL; returns how many were dropped.

        An entity is dropped when its newest event time is older than ``watermark_ms - TTL``;
        ``None`` uses the largest event time processed so far. Releases the GIL.
        """

    def stats(self) -> dict[str, int]:
        """Entity counts, retained events and heap bytes of the state.

        Keys: ``cards``, ``merchants``, ``users``, ``card_events``, ``merchant_events``,
        ``user_events``, ``state_bytes`` and its split ``card_bytes``, ``merchant_bytes``,
        ``user_bytes``, ``label_bytes``; ``label_entities`` and ``labels`` (label state).
        Releases the GIL while counting.
        """

CHANNELS: list[str]
"""Channel names; code ``i + 1`` is ``CHANNELS[i]`` (0 means absent)."""

REJECT_REASONS: list[str]
"""Stable reason codes of rejected events."""

@final
class Decoder:
    """Decodes and validates raw JSON events into columns (see ``txfast.decode.Decoder``).

    Raises:
        ConfigError: On an invalid base currency, rates table or limit.
    """

    def __new__(
        cls,
        *,
        base_currency: str = "EUR",
        rates: dict[str, float] = ...,
        max_event_bytes: int = 1_048_576,
        max_amount: float = 1e9,
    ) -> Decoder: ...
    @property
    def base_currency(self) -> str:
        """The base currency."""
    @property
    def rates(self) -> dict[str, float]:
        """The rates table, base currency included."""
    def decode(self, payloads: Iterable[bytes | None]) -> dict[str, Any]:
        """Decode one message per payload (``None``: empty message). Releases the GIL.

        Returns a dict of numpy columns (string columns as ``(offsets, data, valid)``) and
        ``rejects``, a list of ``(index, reason, message)``.
        """
    def decode_lines(self, buffer: bytes) -> dict[str, Any]:
        """Decode a JSON-lines buffer; ``index`` is the line number. Releases the GIL."""
    def decode_offsets(self, data: NDArray[np.uint8], offsets: NDArray[np.int64]) -> dict[str, Any]:
        """Decode payloads stored back to back (Arrow layout). Releases the GIL."""

    def decode_table(
        self,
        rows: int,
        strings: dict[str, tuple[NDArray[np.int64], NDArray[np.uint8], NDArray[np.uint8], int]],
        numbers: dict[str, tuple[NDArray[np.float64], NDArray[np.uint8], int]],
        label: tuple[NDArray[np.int64], NDArray[np.uint8], int],
        *,
        ids_only: bool = False,
    ) -> dict[str, Any]:
        """Decode a history table given as Arrow buffers. Releases the GIL.

        String columns are ``(offsets, data, validity bitmap, bitmap offset)``, numbers
        ``(values, bitmap, bitmap offset)`` (an empty bitmap: no nulls). With ``ids_only``
        the string columns other than ``transaction_id`` are None.
        """

def line_spans(buffer: bytes) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Byte ``(starts, ends)`` of the lines of a JSON-lines buffer."""

@final
class TreeExplainer:
    """Feature attributions of a tree ensemble (TreeSHAP or path attribution)."""

    def __new__(
        cls,
        tree_offsets: NDArray[np.int64],
        feature: NDArray[np.int32],
        threshold: NDArray[np.float64],
        left: NDArray[np.int32],
        right: NDArray[np.int32],
        default_left: NDArray[np.bool_],
        value: NDArray[np.float64],
        cover: NDArray[np.float64],
        *,
        n_features: int,
        strict_less: bool,
        base: float = 0.0,
        scale: float = 1.0,
    ) -> TreeExplainer: ...
    @property
    def n_features(self) -> int:
        """Number of input features."""
    @property
    def n_trees(self) -> int:
        """Number of trees."""
    @property
    def expected_value(self) -> float:
        """Expected model output (the bias of every explanation)."""
    def contributions(self, x: NDArray[np.float32], method: str) -> NDArray[np.float64]:
        """Contributions, float64 ``(n, n_features + 1)`` (last column: the bias)."""
    def explain_json(
        self,
        x: NDArray[np.float32],
        method: str,
        feature_names: list[str],
        *,
        units: str,
        top_k: int = 5,
    ) -> list[str]:
        """One JSON explanation per row with the ``top_k`` largest contributions."""
