"""Per-card, per-merchant and per-user sliding-window features.

A thin façade over the native :class:`txfast._core.FeatureEngine`; every definition is in
``docs/features.md``. Columns go in as numpy arrays, one ``float32`` row per event comes out:

    >>> import numpy as np
    >>> from txfast.features import FeatureEngine, hash_ids
    >>> engine = FeatureEngine()
    >>> rows = engine.process(
    ...     ts_ms=np.array([1_700_000_000_000]),
    ...     card=hash_ids(["card-1"]),
    ...     amount=np.array([12.5]),
    ...     merchant=hash_ids(["shop-1"]),
    ...     user=hash_ids([None]),
    ...     category=hash_ids(["5411"]),
    ...     country=hash_ids(["FR"]),
    ...     lat=np.array([np.nan]),
    ...     lon=np.array([np.nan]),
    ...     channel=np.array([1]),
    ... )
    >>> rows.shape, float(rows[0, engine.feature_names.index("card_count_1m")])
    ((1, 37), 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from txfast import _core
from txfast._core import FEATURE_VERSION, hash_id, hash_ids

if TYPE_CHECKING:
    from txfast.config import FeatureSettings

__all__ = [
    "DEFAULT_FEATURE_NAMES",
    "FEATURE_VERSION",
    "SUGGESTED_CARD_LABEL_WINDOWS_MS",
    "SUGGESTED_MERCHANT_LABEL_WINDOWS_MS",
    "FeatureEngine",
    "engine_from_settings",
    "hash_id",
    "hash_ids",
]

DEFAULT_CARD_WINDOWS_MS: tuple[int, ...] = (
    60_000,
    3_600_000,
    86_400_000,
    604_800_000,
    2_592_000_000,
)
"""Card windows of the default feature set: 1 min, 1 h, 24 h, 7 d, 30 d."""

DEFAULT_MERCHANT_WINDOWS_MS: tuple[int, ...] = (86_400_000, 604_800_000)
"""Merchant windows of the default feature set: 24 h, 7 d."""

DEFAULT_USER_WINDOWS_MS: tuple[int, ...] = (86_400_000,)
"""User windows of the default feature set: 24 h."""

SUGGESTED_MERCHANT_LABEL_WINDOWS_MS: tuple[int, ...] = (604_800_000, 2_592_000_000)
"""Merchant label windows used when label features are switched on: 7 d, 30 d."""

SUGGESTED_CARD_LABEL_WINDOWS_MS: tuple[int, ...] = (2_592_000_000,)
"""Card label windows used when label features are switched on: 30 d."""

DEFAULT_FEATURE_NAMES: tuple[str, ...] = tuple(_core.FeatureEngine().feature_names)
"""Column names of the default feature set (label features off), in order."""

_DTYPES: tuple[tuple[str, type[np.generic]], ...] = (
    ("ts_ms", np.int64),
    ("card", np.uint64),
    ("amount", np.float64),
    ("merchant", np.uint64),
    ("user", np.uint64),
    ("category", np.uint64),
    ("country", np.uint64),
    ("lat", np.float64),
    ("lon", np.float64),
    ("channel", np.uint8),
)


class FeatureEngine:
    """Keeps the window state of every card, merchant and user and builds feature rows.

    Args:
        card_windows_ms: Card window lengths in milliseconds, in column order; positive whole
            seconds.
        merchant_windows_ms: Merchant window lengths in milliseconds, in column order.
        user_windows_ms: User window lengths in milliseconds, in column order.
        allowed_lateness_ms: How late (in event time) an event may be and still see exact
            windows; state is kept for the longest window plus this.
        idle_ttl_ms: Idle time after which :meth:`evict_idle` drops an entity; ``None`` means
            the longest window of the entity's kind plus ``allowed_lateness_ms``.
        shards: State shards per entity kind (parallelism grain).
        threads: Worker threads; ``None`` uses one per CPU.
        merchant_label_windows_ms: Merchant label windows in milliseconds (on the labels'
            known time); empty (the default) adds no merchant label column.
        card_label_windows_ms: Card label windows in milliseconds; empty (the default) adds
            no card label column.

    Raises:
        txfast.exceptions.ConfigError: If a value is invalid.
    """

    __slots__ = ("_engine",)

    _engine: _core.FeatureEngine

    def __init__(
        self,
        *,
        card_windows_ms: Sequence[int] = DEFAULT_CARD_WINDOWS_MS,
        merchant_windows_ms: Sequence[int] = DEFAULT_MERCHANT_WINDOWS_MS,
        user_windows_ms: Sequence[int] = DEFAULT_USER_WINDOWS_MS,
        allowed_lateness_ms: int = 3_600_000,
        idle_ttl_ms: int | None = None,
        shards: int = 64,
        threads: int | None = None,
        merchant_label_windows_ms: Sequence[int] = (),
        card_label_windows_ms: Sequence[int] = (),
    ) -> None:
        self._engine = _core.FeatureEngine(
            card_windows_ms=list(card_windows_ms),
            merchant_windows_ms=list(merchant_windows_ms),
            user_windows_ms=list(user_windows_ms),
            allowed_lateness_ms=allowed_lateness_ms,
            idle_ttl_ms=idle_ttl_ms,
            shards=shards,
            threads=threads,
            merchant_label_windows_ms=list(merchant_label_windows_ms),
            card_label_windows_ms=list(card_label_windows_ms),
        )

    @classmethod
    def _from_native(cls, engine: _core.FeatureEngine) -> FeatureEngine:
        """Wrap an existing native engine without re-validating it."""
        self = cls.__new__(cls)
        self._engine = engine
        return self

    @classmethod
    def from_snapshot(cls, data: bytes) -> FeatureEngine:
        """Rebuild an engine from :meth:`snapshot` bytes.

        Args:
            data: A snapshot written by :meth:`snapshot` (any build with the same format
                version).

        Returns:
            An engine whose next batches give exactly the rows the snapshotted one would.

        Raises:
            txfast.exceptions.SnapshotError: If the bytes are not a complete, intact snapshot
                of a supported format version.
        """
        return cls._from_native(_core.FeatureEngine.restore(bytes(data)))

    @property
    def feature_names(self) -> list[str]:
        """Column names of :meth:`process` output, in order."""
        return self._engine.feature_names

    @property
    def feature_version(self) -> str:
        """Version of the feature set (``FEATURE_VERSION``)."""
        return self._engine.feature_version

    def process(
        self,
        ts_ms: ArrayLike,
        card: ArrayLike,
        amount: ArrayLike,
        merchant: ArrayLike,
        user: ArrayLike,
        category: ArrayLike,
        country: ArrayLike,
        lat: ArrayLike,
        lon: ArrayLike,
        channel: ArrayLike,
        *,
        out: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float32]:
        """Compute the feature rows of a batch and add its events to the state.

        Events are processed in the given order; each sees the events processed before it
        (in this and earlier batches) and itself. Inputs are converted to contiguous arrays
        of the documented dtypes when they are not already (no copy otherwise). The native
        work runs without the GIL.

        Args:
            ts_ms: Event times, epoch milliseconds UTC (int64).
            card: ``hash_id`` of the card ids (uint64).
            amount: Amounts in the base currency, positive and finite (float64).
            merchant: ``hash_id`` of the merchant ids (uint64).
            user: ``hash_id`` of the user ids, 0 when absent (uint64).
            category: ``hash_id`` of the merchant categories, 0 when absent (uint64).
            country: ``hash_id`` of the country codes, 0 when absent (uint64).
            lat: Latitudes in degrees, NaN when absent (float64).
            lon: Longitudes in degrees, NaN when absent (float64).
            channel: Channel codes (uint8).
            out: Where to write the rows: a C-contiguous ``float32`` array of shape
                ``(n, len(feature_names))``, for example rows of a larger matrix (no copy).

        Returns:
            A C-contiguous ``float32`` array of shape ``(n, len(feature_names))`` (``out``
            when given).

        Raises:
            txfast.exceptions.InputError: If the columns differ in length or hold invalid
                values (non-positive amount, half a location); the state is then unchanged.
        """
        values = (ts_ms, card, amount, merchant, user, category, country, lat, lon, channel)
        c: list[Any] = [
            np.ascontiguousarray(value, dtype=dtype)
            for value, (_, dtype) in zip(values, _DTYPES, strict=True)
        ]
        return self._engine.process(
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], out=out
        )

    @property
    def labels_enabled(self) -> bool:
        """Whether label columns are configured (any merchant or card label window)."""
        return self._engine.labels_enabled

    def process_labels(
        self,
        known_ms: ArrayLike,
        card: ArrayLike,
        merchant: ArrayLike,
        label: ArrayLike,
    ) -> int:
        """Add label events to the per-merchant and per-card label state.

        A label says the transaction of ``card`` at ``merchant`` was fraud (1) or legitimate
        (0) and became known at ``known_ms``. Contract: a transaction at ``t`` processed
        *after* this call counts the label when ``known_ms <= t`` (and the label is in the
        window); a label with ``known_ms > t`` is never counted, whenever it was given, so
        labels may be given early (offline replay gives them all before the transactions).
        Rows already returned by :meth:`process` never change. A no-op (after validation)
        when no label window is configured. The native work runs without the GIL.

        Args:
            known_ms: When each label became known, epoch milliseconds UTC (int64).
            card: ``hash_id`` of the labelled transaction's card, 0 when unknown (uint64).
            merchant: ``hash_id`` of its merchant, 0 when unknown (uint64).
            label: 1 fraud, 0 legitimate (uint8).

        Returns:
            The number of label rows given.

        Raises:
            txfast.exceptions.InputError: If the columns differ in length or a label is not
                0 or 1; the state is then unchanged.
        """
        return self._engine.process_labels(
            np.ascontiguousarray(known_ms, dtype=np.int64),
            np.ascontiguousarray(card, dtype=np.uint64),
            np.ascontiguousarray(merchant, dtype=np.uint64),
            np.ascontiguousarray(label, dtype=np.uint8),
        )

    def snapshot(self) -> bytes:
        """Serialise the configuration and all state.

        Returns:
            Bytes starting with ``b"TXFS"`` and a format version; see
            :meth:`from_snapshot`.
        """
        return self._engine.snapshot()

    def evict_idle(self, watermark_ms: int | None = None) -> int:
        """Drop entities whose newest event is older than ``watermark_ms`` minus their TTL.

        Args:
            watermark_ms: Reference event time; ``None`` means the largest event time
                processed so far.

        Returns:
            The number of entities (cards, merchants and users) dropped.
        """
        return self._engine.evict_idle(watermark_ms)

    def stats(self) -> dict[str, int]:
        """Entity counts, retained events and memory of the state.

        Returns:
            ``cards``, ``merchants``, ``users``, ``card_events``, ``merchant_events``,
            ``user_events``, ``state_bytes`` (heap bytes of all state, every allocation at its
            capacity and malloc chunk size) and its split ``card_bytes``,
            ``merchant_bytes``, ``user_bytes``, ``label_bytes``; ``label_entities`` and
            ``labels`` (merchants and cards with label state, retained label times).
        """
        return self._engine.stats()

    def __repr__(self) -> str:
        return repr(self._engine)


def engine_from_settings(features: FeatureSettings) -> FeatureEngine:
    """A feature engine with the windows of a ``[features]`` settings section.

    Label columns are added only when ``features.labels`` is true, with
    ``merchant_label_windows`` and ``card_label_windows``.

    Args:
        features: The ``[features]`` section of the settings.

    Returns:
        An engine with empty state.

    Raises:
        txfast.exceptions.ConfigError: If a value is invalid.
    """
    from txfast.config import parse_duration_ms

    def ms(windows: Sequence[str]) -> list[int]:
        return [parse_duration_ms(w) for w in windows]

    return FeatureEngine(
        card_windows_ms=ms(features.card_windows),
        merchant_windows_ms=ms(features.merchant_windows),
        user_windows_ms=ms(features.user_windows),
        allowed_lateness_ms=parse_duration_ms(features.allowed_lateness),
        idle_ttl_ms=parse_duration_ms(features.idle_ttl) if features.idle_ttl else None,
        shards=features.shards,
        threads=features.threads,
        merchant_label_windows_ms=ms(features.merchant_label_windows) if features.labels else (),
        card_label_windows_ms=ms(features.card_label_windows) if features.labels else (),
    )
