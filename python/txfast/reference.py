"""Pure-Python reference implementation of the transaction features.

This module is the executable form of ``docs/features.md``. It is deliberately slow: every
processed event is kept in a plain Python list and every feature is recomputed from that list
by filtering it exactly as the documentation describes. Nothing is incremental, nothing is
hashed, nothing is pruned in place. The Rust engine (``txfast._core.FeatureEngine``) must
produce the same rows; the property tests compare the two on random streams.

Example:
    >>> engine = ReferenceEngine()
    >>> row = engine.process_event(1_700_000_000_000, "card-1", 12.5, "shop-1")
    >>> dict(zip(engine.feature_names, row))["card_count_1m"]
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

FEATURE_VERSION = "txfast-features/2"
"""Version of the feature set implemented here (see ``docs/features.md``)."""

DEFAULT_CARD_WINDOWS_MS: tuple[int, ...] = (
    60_000,
    3_600_000,
    86_400_000,
    604_800_000,
    2_592_000_000,
)
DEFAULT_MERCHANT_WINDOWS_MS: tuple[int, ...] = (86_400_000, 604_800_000)
DEFAULT_USER_WINDOWS_MS: tuple[int, ...] = (86_400_000,)
DEFAULT_ALLOWED_LATENESS_MS = 3_600_000

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius used by the haversine distance."""

MIN_TRAVEL_MS = 1000
"""Smallest time difference used to turn a distance into a speed."""

MIN_SIGMA = 1e-6
"""Standard deviations below this make the z-score undefined (reported as ``0``)."""

MAX_MERCHANT_RETENTION_MS = 2**32 - 1
"""Upper bound of the longest merchant window plus the allowed lateness."""

UNDEFINED = -1.0
"""Value of a feature that is undefined, unless its definition says otherwise."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_UNITS_MS: tuple[tuple[str, int], ...] = (
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
)


def to_float32(value: float) -> float:
    """Round a number to the nearest ``float32`` and return it as a Python float.

    Args:
        value: Any real number.

    Returns:
        The ``float32`` value closest to ``value`` (``inf`` beyond the ``float32`` range),
        widened back to ``float``.
    """
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def window_suffix(window_ms: int) -> str:
    """Name a window length the way feature names do.

    Whole numbers of days from two days up are named in days; otherwise the largest of the
    units ``h``, ``m``, ``s`` that divides the length exactly is used, e.g. ``60_000`` ->
    ``"1m"``, ``90_000`` -> ``"90s"``, ``86_400_000`` -> ``"24h"``, ``604_800_000`` -> ``"7d"``.

    Args:
        window_ms: Window length in milliseconds; a positive multiple of 1000.

    Returns:
        The suffix, such as ``"24h"``.

    Raises:
        ValueError: If the length is not a positive whole number of seconds.
    """
    if window_ms <= 0 or window_ms % 1000 != 0:
        raise ValueError(f"window length must be a positive whole number of seconds: {window_ms}")
    day_ms = 86_400_000
    if window_ms % day_ms == 0 and window_ms >= 2 * day_ms:
        return f"{window_ms // day_ms}d"
    for unit, unit_ms in _UNITS_MS:
        if unit == "d":
            continue
        if window_ms % unit_ms == 0:
            return f"{window_ms // unit_ms}{unit}"
    raise AssertionError("unreachable: every whole number of seconds has a suffix")


def feature_names(
    card_windows_ms: Sequence[int] = DEFAULT_CARD_WINDOWS_MS,
    merchant_windows_ms: Sequence[int] = DEFAULT_MERCHANT_WINDOWS_MS,
    user_windows_ms: Sequence[int] = DEFAULT_USER_WINDOWS_MS,
    merchant_label_windows_ms: Sequence[int] = (),
    card_label_windows_ms: Sequence[int] = (),
) -> list[str]:
    """List the feature columns, in order, for a window configuration.

    Args:
        card_windows_ms: Card window lengths, in column order.
        merchant_windows_ms: Merchant window lengths, in column order.
        user_windows_ms: User window lengths, in column order.
        merchant_label_windows_ms: Merchant label windows (none by default).
        card_label_windows_ms: Card label windows (none by default).

    Returns:
        The column names; 43 of them with the default windows.
    """
    card = [window_suffix(w) for w in card_windows_ms]
    longest = window_suffix(max(card_windows_ms))
    names = ["amount_base", "log_amount", "hour", "dow", "is_weekend", "channel"]
    for aggregate in ("count", "sum", "mean", "max"):
        names += [f"card_{aggregate}_{suffix}" for suffix in card]
    names += [
        f"card_amount_ratio_{longest}",
        f"card_amount_z_{longest}",
        "card_secs_since_prev",
        "card_km_from_prev",
        "card_kmh_from_prev",
        f"card_new_country_{longest}",
        f"card_new_merchant_{longest}",
        f"card_category_share_{longest}",
    ]
    names += [f"merchant_count_{window_suffix(w)}" for w in merchant_windows_ms]
    names += [f"user_distinct_cards_{window_suffix(w)}" for w in user_windows_ms]
    names += [f"merchant_fraud_labels_{window_suffix(w)}" for w in merchant_label_windows_ms]
    names += [f"merchant_fraud_rate_{window_suffix(w)}" for w in merchant_label_windows_ms]
    names += [f"card_fraud_labels_{window_suffix(w)}" for w in card_label_windows_ms]
    return names


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points on a sphere of radius ``EARTH_RADIUS_KM``.

    Args:
        lat1: Latitude of the first point, degrees.
        lon1: Longitude of the first point, degrees.
        lat2: Latitude of the second point, degrees.
        lon2: Longitude of the second point, degrees.

    Returns:
        The distance in kilometres.
    """
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    d_phi = math.radians(lat2 - lat1)
    d_lambda = math.radians(lon2 - lon1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, a))))


@dataclass(frozen=True)
class Event:
    """One processed transaction, as kept by the reference engine.

    Attributes:
        arrival: Position in processing order (0 for the first event ever processed).
        ts_ms: Event time, epoch milliseconds UTC.
        card: Card identifier.
        amount: Amount in the base currency, already rounded to ``float32``.
        merchant: Merchant identifier.
        user: User identifier, or ``None``.
        category: Merchant category, or ``None``.
        country: Country code, or ``None``.
        location: ``(lat, lon)`` in degrees, or ``None``.
        channel: Channel code.
    """

    arrival: int
    ts_ms: int
    card: str
    amount: float
    merchant: str
    user: str | None
    category: str | None
    country: str | None
    location: tuple[float, float] | None
    channel: int


def _time_order(event: Event) -> tuple[int, int]:
    """Sort key for ascending ``(ts, arrival)`` order."""
    return (event.ts_ms, event.arrival)


def _ordered_sum(amounts: Iterable[float]) -> float:
    """Add numbers one by one, left to right, in ``float64``."""
    total = 0.0
    for amount in amounts:
        total += amount
    return total


def _absent_if_empty(value: str | None) -> str | None:
    """Map ``""`` to ``None``: an empty identifier means "absent", as for ``hash_ids``."""
    return value if value else None


_KEY_OF: dict[str, Callable[[Event], str | None]] = {
    "card": lambda event: event.card,
    "merchant": lambda event: event.merchant,
    "user": lambda event: event.user,
}


class ReferenceEngine:
    """Slow, literal implementation of ``docs/features.md``.

    Identifiers are plain strings; ``None`` or ``""`` means absent for the optional ones.
    Nothing is ever deleted: every processed event stays in ``events``, retention is applied
    as a filter each time an entity's events are read, and an idle eviction only records,
    per entity, the processing position before which that entity's events are forgotten.

    Args:
        card_windows_ms: Card window lengths in milliseconds (column order).
        merchant_windows_ms: Merchant window lengths in milliseconds (column order).
        user_windows_ms: User window lengths in milliseconds (column order).
        allowed_lateness_ms: Allowed lateness ``L`` used by retention and the default TTL.
        idle_ttl_ms: Idle time after which ``evict_idle`` drops an entity; ``None`` means
            ``W_max + L`` of that entity's kind.

    Raises:
        ValueError: If a window list is empty, a window is not a positive whole number of
            seconds, two windows of a kind are equal, a duration is negative, or the longest
            merchant window plus the lateness exceeds ``MAX_MERCHANT_RETENTION_MS``.
    """

    def __init__(
        self,
        *,
        card_windows_ms: Sequence[int] = DEFAULT_CARD_WINDOWS_MS,
        merchant_windows_ms: Sequence[int] = DEFAULT_MERCHANT_WINDOWS_MS,
        user_windows_ms: Sequence[int] = DEFAULT_USER_WINDOWS_MS,
        allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
        idle_ttl_ms: int | None = None,
        merchant_label_windows_ms: Sequence[int] = (),
        card_label_windows_ms: Sequence[int] = (),
    ) -> None:
        self.windows_ms: dict[str, tuple[int, ...]] = {
            "card": tuple(int(w) for w in card_windows_ms),
            "merchant": tuple(int(w) for w in merchant_windows_ms),
            "user": tuple(int(w) for w in user_windows_ms),
        }
        self.label_windows_ms: dict[str, tuple[int, ...]] = {
            "merchant": tuple(int(w) for w in merchant_label_windows_ms),
            "card": tuple(int(w) for w in card_label_windows_ms),
        }
        for kind, windows in self.label_windows_ms.items():
            for window in windows:
                window_suffix(window)
            if len(set(windows)) != len(windows):
                raise ValueError(f"duplicate {kind} label windows: {windows}")
        for kind, windows in self.windows_ms.items():
            if not windows:
                raise ValueError(f"{kind} windows must not be empty")
            for window in windows:
                window_suffix(window)  # raises unless a positive whole number of seconds
            if len(set(windows)) != len(windows):
                raise ValueError(f"duplicate {kind} windows: {windows}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0: {allowed_lateness_ms}")
        merchant_retention_ms = max(self.windows_ms["merchant"]) + allowed_lateness_ms
        if merchant_retention_ms > MAX_MERCHANT_RETENTION_MS:
            raise ValueError(
                "longest merchant window + allowed_lateness_ms must be at most "
                f"{MAX_MERCHANT_RETENTION_MS} ms: {merchant_retention_ms}"
            )
        if idle_ttl_ms is not None and idle_ttl_ms < 0:
            raise ValueError(f"idle_ttl_ms must be >= 0: {idle_ttl_ms}")
        self.allowed_lateness_ms = int(allowed_lateness_ms)
        self.idle_ttl_ms = idle_ttl_ms
        self.feature_version = FEATURE_VERSION
        self.feature_names = feature_names(
            self.windows_ms["card"],
            self.windows_ms["merchant"],
            self.windows_ms["user"],
            self.label_windows_ms["merchant"],
            self.label_windows_ms["card"],
        )
        self.events: list[Event] = []
        # (kind, key) -> labels (known_ms, label) still held, in the order given; merchants
        # keep all labels, cards their fraud labels only. An empty list is deleted.
        self.labels: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._forgotten_before: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ state queries

    def longest_window_ms(self, kind: str) -> int:
        """Return ``W_max`` of an entity kind (``"card"``, ``"merchant"`` or ``"user"``)."""
        return max(self.windows_ms[kind])

    def history(self, kind: str, key: str) -> list[Event]:
        """Events of one entity processed so far and not forgotten by an idle eviction.

        Args:
            kind: ``"card"``, ``"merchant"`` or ``"user"``.
            key: The entity's identifier.

        Returns:
            The entity's events in processing order.
        """
        start = self._forgotten_before.get((kind, key), 0)
        return [e for e in self.events[start:] if _KEY_OF[kind](e) == key]

    def _retained_earlier(self, kind: str, current: Event) -> list[Event]:
        """Earlier-processed events of the current event's entity that retention keeps.

        An entity keeps the events with ``ts > max_ts - W_max - L``, ``max_ts`` being the
        largest event time the entity has seen, the current event included.
        """
        key = _KEY_OF[kind](current)
        assert key is not None
        earlier = self.history(kind, key)
        max_ts = max([e.ts_ms for e in earlier] + [current.ts_ms])
        cutoff = max_ts - self.longest_window_ms(kind) - self.allowed_lateness_ms
        return [e for e in earlier if e.ts_ms > cutoff]

    @staticmethod
    def _window(retained_earlier: list[Event], current: Event, window_ms: int) -> list[Event]:
        """Events in ``(t - W, t]``: the current one plus retained earlier ones.

        Returns:
            The window's events in ascending ``(ts, arrival)`` order.
        """
        t = current.ts_ms
        inside = [e for e in retained_earlier if t - window_ms < e.ts_ms <= t]
        return sorted([*inside, current], key=_time_order)

    # ------------------------------------------------------------------ processing

    def process_event(
        self,
        ts_ms: int,
        card_id: str,
        amount: float,
        merchant_id: str,
        user_id: str | None = None,
        category: str | None = None,
        country: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        channel: int = 0,
    ) -> list[float]:
        """Score one transaction, then remember it.

        Args:
            ts_ms: Event time, epoch milliseconds UTC.
            card_id: Card identifier.
            amount: Amount in the base currency, > 0.
            merchant_id: Merchant identifier.
            user_id: User identifier; ``None`` or ``""`` when absent.
            category: Merchant category; ``None`` or ``""`` when absent.
            country: Country code (upper-case alpha-2); ``None`` or ``""`` when absent.
            lat: Latitude in degrees; ``None`` (or NaN) when absent.
            lon: Longitude in degrees; ``None`` (or NaN) when absent.
            channel: Channel code, 0-6.

        Returns:
            One value per entry of ``feature_names``, each rounded to ``float32``.

        Raises:
            ValueError: If the amount is not positive and finite once rounded to ``float32``,
                or only one of ``lat``/``lon`` is given.
        """
        amount_f32 = to_float32(amount)
        if not (math.isfinite(amount_f32) and amount_f32 > 0):
            raise ValueError(f"amount must be positive and finite as float32: {amount}")
        location = None
        if lat is not None and lon is not None and not (math.isnan(lat) or math.isnan(lon)):
            location = (float(lat), float(lon))
        elif not (lat is None or math.isnan(lat)) or not (lon is None or math.isnan(lon)):
            raise ValueError("lat and lon must be given together")
        current = Event(
            arrival=len(self.events),
            ts_ms=int(ts_ms),
            card=card_id,
            amount=amount_f32,
            merchant=merchant_id,
            user=_absent_if_empty(user_id),
            category=_absent_if_empty(category),
            country=_absent_if_empty(country),
            location=location,
            channel=int(channel),
        )
        row = (
            self._calendar_features(current)
            + self._card_features(current)
            + self._merchant_features(current)
            + self._user_features(current)
            + self._label_features(current)
        )
        self.events.append(current)
        return [to_float32(value) for value in row]

    def process_label(
        self, known_ms: int, card_id: str | None, merchant_id: str | None, label: int
    ) -> None:
        """Remember one label event (see "Label features" in ``docs/features.md``).

        The label goes to its merchant (every label) and its card (fraud labels only), for
        each kind with label windows and a non-empty id. Then that entity forgets its labels
        with ``known_ms <= newest - W_max - L`` (``newest``: the largest event time processed
        so far, none before the first event; ``W_max``: its kind's longest label window).

        Args:
            known_ms: When the label became known, epoch milliseconds UTC.
            card_id: Card of the labelled transaction; ``None`` or ``""`` when unknown.
            merchant_id: Merchant of the labelled transaction; ``None`` or ``""`` when unknown.
            label: 1 fraud, 0 legitimate.

        Raises:
            ValueError: If ``label`` is not 0 or 1.
        """
        if label not in (0, 1):
            raise ValueError(f"label must be 0 or 1: {label}")
        newest = max((e.ts_ms for e in self.events), default=None)
        for kind, key in (("merchant", merchant_id), ("card", card_id)):
            windows = self.label_windows_ms[kind]
            if not windows or not key or (kind == "card" and label != 1):
                continue
            held = [*self.labels.get((kind, key), []), (int(known_ms), int(label))]
            if newest is not None:
                cutoff = newest - max(windows) - self.allowed_lateness_ms
                held = [h for h in held if h[0] > cutoff]
            if held:
                self.labels[(kind, key)] = held
            else:
                self.labels.pop((kind, key), None)

    def process_batch(self, events: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Score transactions one after the other.

        Args:
            events: Mappings whose keys are ``process_event`` parameter names.

        Returns:
            A ``float32`` array of shape ``(len(events), len(feature_names))``.
        """
        rows = [self.process_event(**event) for event in events]
        return np.array(rows, dtype=np.float32).reshape(len(rows), len(self.feature_names))

    def evict_idle(self, watermark_ms: int | None = None) -> int:
        """Forget every entity whose newest event is older than ``watermark_ms - TTL``.

        Args:
            watermark_ms: Reference time; ``None`` means the largest event time processed so
                far (nothing is evicted before the first event).

        Returns:
            How many entities (cards, merchants and users together) were forgotten.
        """
        if watermark_ms is None:
            if not self.events:
                return 0
            watermark_ms = max(e.ts_ms for e in self.events)
        evicted = 0
        for kind in _KEY_OF:
            ttl = self.idle_ttl_ms
            if ttl is None:
                ttl = self.longest_window_ms(kind) + self.allowed_lateness_ms
            for key in self.entity_keys(kind):
                newest = max(e.ts_ms for e in self.history(kind, key))
                if newest < watermark_ms - ttl:
                    self._forgotten_before[(kind, key)] = len(self.events)
                    evicted += 1
        for (kind, key), held in list(self.labels.items()):
            ttl = self.idle_ttl_ms
            if ttl is None:
                ttl = max(self.label_windows_ms[kind]) + self.allowed_lateness_ms
            kept = [h for h in held if h[0] >= watermark_ms - ttl]
            if kept:
                self.labels[(kind, key)] = kept
            else:
                del self.labels[(kind, key)]
                evicted += 1
        return evicted

    def entity_keys(self, kind: str) -> list[str]:
        """Identifiers of the entities of a kind currently remembered, sorted.

        Args:
            kind: ``"card"``, ``"merchant"`` or ``"user"``.

        Returns:
            Every identifier with at least one event not forgotten by an idle eviction.
        """
        keys = {key for key in map(_KEY_OF[kind], self.events) if key is not None}
        return sorted(key for key in keys if self.history(kind, key))

    def entity_count(self) -> dict[str, int]:
        """Count the entities currently remembered, per kind."""
        return {kind: len(self.entity_keys(kind)) for kind in _KEY_OF}

    # ------------------------------------------------------------------ feature groups

    @staticmethod
    def _calendar_features(current: Event) -> list[float]:
        """``amount_base``, ``log_amount``, ``hour``, ``dow``, ``is_weekend``, ``channel``."""
        moment = _EPOCH + timedelta(milliseconds=current.ts_ms)
        dow = moment.weekday()  # Monday = 0 ... Sunday = 6
        return [
            current.amount,
            math.log1p(current.amount),
            float(moment.hour),
            float(dow),
            1.0 if dow >= 5 else 0.0,
            float(current.channel),
        ]

    def _card_features(self, current: Event) -> list[float]:
        """Every ``card_*`` column, in order."""
        windows = self.windows_ms["card"]
        w_max = self.longest_window_ms("card")
        earlier = self._retained_earlier("card", current)
        in_window = {w: self._window(earlier, current, w) for w in windows}

        counts = [float(len(in_window[w])) for w in windows]
        sums = [_ordered_sum(e.amount for e in in_window[w]) for w in windows]
        means = [total / count for total, count in zip(sums, counts, strict=True)]
        maxes = [max(e.amount for e in in_window[w]) for w in windows]

        longest = in_window[w_max]
        longest_sum = _ordered_sum(e.amount for e in longest)
        amount_ratio = current.amount / (longest_sum / len(longest))
        others = [e.amount for e in longest if e is not current]
        amount_z = self._z_score(current.amount, others)

        secs_since_prev = self._secs_since_prev(current, earlier)
        km, kmh = self._travel(current)

        earlier_in_longest = [e for e in longest if e is not current]
        if current.country is None:
            new_country = 0.0
        else:
            seen = any(e.country == current.country for e in earlier_in_longest)
            new_country = 0.0 if seen else 1.0
        seen_merchant = any(e.merchant == current.merchant for e in earlier_in_longest)
        new_merchant = 0.0 if seen_merchant else 1.0

        if current.category is None:
            category_share = UNDEFINED
        else:
            same = _ordered_sum(e.amount for e in longest if e.category == current.category)
            category_share = same / longest_sum

        return [
            *counts,
            *sums,
            *means,
            *maxes,
            amount_ratio,
            amount_z,
            secs_since_prev,
            km,
            kmh,
            new_country,
            new_merchant,
            category_share,
        ]

    @staticmethod
    def _z_score(amount: float, others: list[float]) -> float:
        """Two-pass z-score of ``amount`` against ``others`` (given in ``(ts, arrival)`` order).

        Returns:
            ``(amount - mean) / population std``, or ``0`` when there are fewer than two
            other amounts or the standard deviation is below ``MIN_SIGMA``.
        """
        n = len(others)
        if n < 2:
            return 0.0
        mean = _ordered_sum(others) / n
        sigma = math.sqrt(_ordered_sum((x - mean) ** 2 for x in others) / n)
        if sigma < MIN_SIGMA:
            return 0.0
        return (amount - mean) / sigma

    @staticmethod
    def _secs_since_prev(current: Event, retained_earlier: list[Event]) -> float:
        """Seconds since the latest retained earlier event at or before ``t``, else ``-1``."""
        previous = [e.ts_ms for e in retained_earlier if e.ts_ms <= current.ts_ms]
        if not previous:
            return UNDEFINED
        return (current.ts_ms - max(previous)) / 1000

    def _travel(self, current: Event) -> tuple[float, float]:
        """``card_km_from_prev`` and ``card_kmh_from_prev``.

        The previous location is the one of the card's most recently *processed* located
        event, whatever its event time and whether or not retention still keeps it.
        """
        if current.location is None:
            return UNDEFINED, UNDEFINED
        located = [e for e in self.history("card", current.card) if e.location is not None]
        if not located:
            return UNDEFINED, UNDEFINED
        last = located[-1]
        assert last.location is not None
        km = haversine_km(*last.location, *current.location)
        hours = max(abs(current.ts_ms - last.ts_ms), MIN_TRAVEL_MS) / 3.6e6
        return km, km / hours

    def _merchant_features(self, current: Event) -> list[float]:
        """``merchant_count_<W>`` for each merchant window."""
        earlier = self._retained_earlier("merchant", current)
        return [float(len(self._window(earlier, current, w))) for w in self.windows_ms["merchant"]]

    def _label_features(self, current: Event) -> list[float]:
        """Label columns: labels with ``known_ms`` in ``(t - W, t]`` only.

        ``merchant_fraud_labels_<W>`` and ``merchant_fraud_rate_<W>`` (fraud / all labels,
        ``-1`` without labels) per merchant label window, then ``card_fraud_labels_<W>`` per
        card label window.
        """
        t = current.ts_ms

        def known(kind: str, key: str, window_ms: int) -> list[int]:
            held = self.labels.get((kind, key), [])
            return [label for k, label in held if t - window_ms < k <= t]

        merchant = [
            known("merchant", current.merchant, w) for w in self.label_windows_ms["merchant"]
        ]
        counts = [float(sum(labels)) for labels in merchant]
        rates = [sum(labels) / len(labels) if labels else UNDEFINED for labels in merchant]
        card = [float(sum(known("card", current.card, w))) for w in self.label_windows_ms["card"]]
        return counts + rates + card

    def _user_features(self, current: Event) -> list[float]:
        """``user_distinct_cards_<W>`` for each user window (``-1`` without a user)."""
        windows = self.windows_ms["user"]
        if current.user is None:
            return [UNDEFINED for _ in windows]
        earlier = self._retained_earlier("user", current)
        return [float(len({e.card for e in self._window(earlier, current, w)})) for w in windows]
