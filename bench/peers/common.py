"""What every peer of ``bench/compare.py`` shares: features, decisions, alerts, model, status.

Plain Python and numpy only (no txfast import): a peer is what a team would write without
txfast. The features are txfast's 37 default columns (``docs/features.md``) for in-order
streams, computed per event from ``deque`` window state the way most teams write them (one
backwards pass over the card's retained events per transaction); ``compare.py`` checks them
against txfast's engine before timing anything. Decisions are txfast's default risk bands,
actions and four rules; alerts are the same JSON document txfast publishes, with the source
message's Kafka timestamp in a ``source_timestamp`` header.

Each peer runs as its own process and writes JSON lines to stdout: ``{"processed": n,
"wall": t}`` progress lines (at most twice a second) and one ``{"final": {...}}`` line at
exit, with ``processed``, ``alerts``, ``first_input_wall`` and ``done_wall`` (wall-clock
seconds: the first input seen, and every output produced and flushed).
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import sys
import threading
import time
from bisect import bisect_right
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

WINDOWS = (60_000, 3_600_000, 86_400_000, 604_800_000, 2_592_000_000)  # 1m 1h 24h 7d 30d
W_MAX = WINDOWS[-1]
MERCHANT_WINDOWS = (86_400_000, 604_800_000)  # 24h 7d
USER_WINDOW = 86_400_000  # 24h
LATENESS = 3_600_000  # allowed lateness: retention is the longest window + 1 h
CHANNELS = {"pos": 1, "ecom": 2, "atm": 3, "moto": 4, "transfer": 5}
REQUIRED = ("transaction_id", "timestamp", "card_id", "amount", "currency", "merchant_id")
TS_MIN, TS_MAX = 946_684_800_000, 4_102_444_800_000  # 2000-01-01 ≤ t < 2100-01-01
N_CARD = 34  # columns 0..33 come from the card's state; then 2 merchant, 1 user

LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
ACTIONS = ("approve", "review", "alert", "block")
LEVEL_ACTION = np.array([0, 0, 2, 2], dtype=np.int8)  # txfast's default [risk] actions
RISKY_CATEGORIES = frozenset(("4829", "6051", "5815", "5816", "5817", "5818", "5944", "5732"))
RULE_NAMES = (
    "critical_high_value",
    "auto_approve_small",
    "review_risky_category",
    "review_impossible_travel",
)

_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """``x`` rounded to float32 (txfast rounds amounts on input)."""
    return _F32.unpack(_F32.pack(x))[0]


# -- decoding -------------------------------------------------------------------------------


def parse(payload: bytes, rates: dict[str, float], max_amount: float = 1e9) -> dict | None:
    """The event as a dict with ``ts`` (epoch ms) and ``amount_base``; None if invalid."""
    try:
        e = json.loads(payload)
    except ValueError:
        return None
    return validate(e, rates, max_amount)


def validate(e: Any, rates: dict[str, float], max_amount: float = 1e9) -> dict | None:
    """The contract's checks on a decoded event (card-number detection left out)."""
    if not isinstance(e, dict):
        return None
    for k in REQUIRED:
        v = e.get(k)
        if v is None or v == "":
            return None
    amount, ts = e["amount"], e["timestamp"]
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return None
    if not (0 < amount <= max_amount) or math.isnan(amount):
        return None
    rate = rates.get(str(e["currency"]).upper())
    if rate is None:
        return None
    if isinstance(ts, str):
        from datetime import datetime

        try:
            ts = int(datetime.fromisoformat(ts).timestamp() * 1000)
        except ValueError:
            return None
    elif isinstance(ts, bool) or not isinstance(ts, int):
        return None
    if not TS_MIN <= ts < TS_MAX:
        return None
    e["ts"] = ts
    e["amount_base"] = amount * rate
    return e


# -- features -------------------------------------------------------------------------------


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def card_features(events: deque, last_loc: list | None, e: dict) -> tuple[list, list | None]:
    """Columns 0-33 for event ``e`` of a card; updates ``events`` in place.

    Args:
        events: The card's retained events, oldest first, as ``(ts, amount, merchant,
            category, country)`` tuples or lists; pruned and appended to.
        last_loc: The card's last location ``[ts, lat, lon]`` or None.
        e: The parsed event.

    Returns:
        The 34 values and the card's new last location.
    """
    ts = e["ts"]
    amount = f32(e["amount_base"])
    merchant, category, country = e["merchant_id"], e.get("merchant_category"), e.get("country")
    channel = e.get("channel")
    dow = (ts // 86_400_000 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    row = [
        amount,
        math.log1p(amount),
        (ts // 3_600_000) % 24,
        dow,
        1.0 if dow >= 5 else 0.0,
        (CHANNELS.get(channel.lower(), 6) if channel else 0),
    ]
    horizon = ts - W_MAX - LATENESS
    while events and events[0][0] <= horizon:
        events.popleft()
    prev_ts = events[-1][0] if events else None
    # One pass backwards over the earlier events: the windows close one after the other.
    counts, sums, maxs = [0] * 5, [0.0] * 5, [0.0] * 5
    c, s, m, k = 1, amount, amount, 0
    others: list[float] = []
    seen_country = seen_merchant = False
    same_category = amount
    for ets, eamt, emer, ecat, ectry in reversed(events):
        age = ts - ets
        while k < 5 and age >= WINDOWS[k]:
            counts[k], sums[k], maxs[k] = c, s, m
            k += 1
        if k == 5:
            break
        c += 1
        s += eamt
        if eamt > m:
            m = eamt
        others.append(eamt)
        if emer == merchant:
            seen_merchant = True
        if ectry == country and country is not None:
            seen_country = True
        if ecat == category and category is not None:
            same_category += eamt
    while k < 5:
        counts[k], sums[k], maxs[k] = c, s, m
        k += 1
    row += counts
    row += sums
    row += [sm / n for sm, n in zip(sums, counts, strict=True)]
    row += maxs
    row.append(amount / (sums[4] / counts[4]))
    n = len(others)
    if n >= 2:
        mu = sum(others) / n
        sd = math.sqrt(sum((a - mu) ** 2 for a in others) / n)
        row.append((amount - mu) / sd if sd >= 1e-6 else 0.0)
    else:
        row.append(0.0)
    row.append((ts - prev_ts) / 1000 if prev_ts is not None else -1.0)
    km = kmh = -1.0
    lat, lon = e.get("lat"), e.get("lon")
    if lat is not None and lon is not None:
        if last_loc is not None:
            km = _haversine(last_loc[1], last_loc[2], lat, lon)
            kmh = km / (max(abs(ts - last_loc[0]), 1000) / 3.6e6)
        last_loc = [ts, lat, lon]
    row.append(km)
    row.append(kmh)
    row.append(1.0 if country is not None and not seen_country else 0.0)
    row.append(0.0 if seen_merchant else 1.0)
    row.append(same_category / sums[4] if category is not None else -1.0)
    events.append((ts, amount, merchant, category, country))
    return row, last_loc


def merchant_features(stamps: deque, ts: int) -> list:
    """Columns 34-35: the merchant's events in 24 h and 7 d; appends ``ts`` to ``stamps``."""
    horizon = ts - MERCHANT_WINDOWS[-1] - LATENESS
    while stamps and stamps[0] <= horizon:
        stamps.popleft()
    stamps.append(ts)
    n = len(stamps)
    return [n - bisect_right(stamps, ts - w) for w in MERCHANT_WINDOWS]


def user_features(seen: deque, ts: int, card: str) -> float:
    """Column 36: distinct cards of the user in 24 h; appends ``(ts, card)`` to ``seen``."""
    horizon = ts - USER_WINDOW - LATENESS
    while seen and seen[0][0] <= horizon:
        seen.popleft()
    seen.append((ts, card))
    lo = ts - USER_WINDOW
    return float(len({c for t, c in seen if t > lo}))


class FeatureState:
    """Per-card, per-merchant and per-user window state in dicts of deques (one process)."""

    def __init__(self) -> None:
        self.cards: dict[str, deque] = {}
        self.locations: dict[str, list] = {}
        self.merchants: dict[str, deque] = {}
        self.users: dict[str, deque] = {}

    def row(self, e: dict) -> list:
        """The 37 feature values of event ``e`` (in arrival order)."""
        card = e["card_id"]
        events = self.cards.get(card)
        if events is None:
            events = self.cards[card] = deque()
        row, loc = card_features(events, self.locations.get(card), e)
        if loc is not None:
            self.locations[card] = loc
        stamps = self.merchants.get(e["merchant_id"])
        if stamps is None:
            stamps = self.merchants[e["merchant_id"]] = deque()
        row += merchant_features(stamps, e["ts"])
        user = e.get("user_id")
        if user:
            seen = self.users.get(user)
            if seen is None:
                seen = self.users[user] = deque()
            row.append(user_features(seen, e["ts"], card))
        else:
            row.append(-1.0)
        return row


# -- model and decisions ----------------------------------------------------------------------


class Model:
    """The scikit-learn Isolation Forest and txfast's calibration, threshold and bands.

    ``compare.py`` writes ``model.pkl`` (the fitted forest txfast exported to ONNX) and
    ``model.json`` into one directory.
    """

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        with open(d / "model.pkl", "rb") as f:
            self.forest = pickle.load(f)  # noqa: S301 - written by compare.py in this run
        meta = json.loads((d / "model.json").read_text())
        self.xp = np.asarray(meta["calibration_xp"], dtype=np.float64)
        self.fp = np.asarray(meta["calibration_fp"], dtype=np.float64)
        self.threshold = float(meta["threshold"])
        self.bands = tuple(float(b) for b in meta["bands"])
        self.version = str(meta["model_version"])
        self.rates = {k: float(v) for k, v in meta["rates"].items()}
        self.feature_names = list(meta["feature_names"])
        self.kmh = self.feature_names.index("card_kmh_from_prev")

    def score(self, X: np.ndarray) -> np.ndarray:
        """Calibrated scores (float32) of the float32 feature rows ``X``."""
        raw = -self.forest.score_samples(X)  # 2^(-E[h]/c): the paper's anomaly score
        return np.interp(raw, self.xp, self.fp, left=0.0, right=1.0).astype(np.float32)

    def decide(
        self,
        score: np.ndarray,
        X: np.ndarray,
        amount: np.ndarray,
        categories: Any,
        channels: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """txfast's default bands, actions and rules (``[[rules]]`` of the default settings).

        Args:
            score: Calibrated scores (float32).
            X: The feature rows.
            amount: Amounts in the base currency (float64).
            categories: Merchant categories (str or None), one per row.
            channels: Channels (str or None), one per row.

        Returns:
            ``is_anomaly``, level index, action index and fired-rule bits, per row.
        """
        n = len(score)
        anomalous = score >= self.threshold
        medium, high, critical = self.bands
        level = (
            (score >= medium).astype(np.int8)
            + (score >= high).astype(np.int8)
            + (score >= critical).astype(np.int8)
        )
        base = level.copy()
        action = LEVEL_ACTION[level]
        fired = np.zeros(n, dtype=np.uint8)
        m = anomalous & (amount >= 5000.0)
        level[m], action[m], fired[m] = 3, 3, fired[m] | 1
        m = (amount < 10.0) & (base == 0)
        action[m], fired[m] = 0, fired[m] | 2
        risky = np.fromiter((c in RISKY_CATEGORIES for c in categories), bool, n)
        m = risky & ((base == 1) | (base == 2))
        action[m], fired[m] = 1, fired[m] | 4
        chan = np.fromiter((c in ("pos", "atm") for c in channels), bool, n)
        m = chan & (X[:, self.kmh] >= 1000.0)
        action[m], fired[m] = 1, fired[m] | 8
        return anomalous, level, action, fired

    def decide_events(
        self, score: np.ndarray, X: np.ndarray, events: list[dict]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`decide` for a list of parsed events."""
        return self.decide(
            score,
            X,
            np.fromiter((e["amount_base"] for e in events), np.float64, len(events)),
            [e.get("merchant_category") for e in events],
            [e.get("channel") for e in events],
        )


def alert_json(
    e: dict, score: float, anomalous: bool, level: int, action: int, fired: int, version: str
) -> bytes:
    """The alert document txfast publishes (``txfast.streaming._ALERT_FIELDS``)."""
    return json.dumps(
        {
            "transaction_id": e["transaction_id"],
            "ts": e["ts"],
            "card_id": e["card_id"],
            "user_id": e.get("user_id"),
            "merchant_id": e["merchant_id"],
            "merchant_category": e.get("merchant_category"),
            "country": e.get("country"),
            "channel": e.get("channel"),
            "amount": e["amount"],
            "currency": e["currency"],
            "amount_base": e["amount_base"],
            "score": score,
            "is_anomaly": anomalous,
            "risk_level": LEVELS[level],
            "action": ACTIONS[action],
            "model_version": version,
            "rules": [n for k, n in enumerate(RULE_NAMES) if fired >> k & 1],
        },
        separators=(",", ":"),
    ).encode()


# -- progress reporting ----------------------------------------------------------------------


class Status:
    """Progress lines on stdout for ``compare.py``: counters, printed every 0.2 s on change."""

    def __init__(self) -> None:
        self.processed = 0
        self.alerts = 0
        self.first_input_wall: float | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._report, daemon=True).start()

    def _report(self) -> None:
        shown = -1
        while True:
            time.sleep(0.2)
            n = self.processed
            if n != shown:
                shown = n
                emit({"processed": n, "wall": time.time()})

    def seen_input(self) -> None:
        if self.first_input_wall is None:
            self.first_input_wall = time.time()

    def add(self, processed: int, alerts: int) -> None:
        with self._lock:
            self.processed += processed
            self.alerts += alerts

    def final(self, **extra: Any) -> None:
        emit(
            {
                "final": {
                    "processed": self.processed,
                    "alerts": self.alerts,
                    "first_input_wall": self.first_input_wall,
                    "done_wall": time.time(),
                    **extra,
                }
            }
        )


_EMIT = threading.Lock()


def emit(obj: dict) -> None:
    with _EMIT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def add_common_args(ap: Any) -> None:
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out-topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--expect", type=int, default=0, help="stop after N events (0: SIGTERM)")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--linger-ms", type=float, default=100.0)
    ap.add_argument("--latency", action="store_true", help="tuned for latency (else drain)")
