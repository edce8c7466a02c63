"""The per-event pure-Python baseline: what a team writes first, done carefully.

One event at a time: ``json.loads``, the contract checks as ``if`` statements, per-card,
per-merchant and per-user state in ``dict`` + ``deque`` (pruned to the longest window), the
same 37 features as txfast's defaults (in-order streams), the same Isolation Forest walked
tree by tree in Python, the same calibration (``bisect``) and the default rules. No numpy
and no native code in the loop. ``bench_core.py`` checks that its scores equal txfast's.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections import deque
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

WINDOWS = (60_000, 3_600_000, 86_400_000, 604_800_000, 2_592_000_000)
MERCHANT_WINDOWS = (86_400_000, 604_800_000)
USER_WINDOW = 86_400_000
LATENESS = 3_600_000
CHANNELS = {"pos": 1, "ecom": 2, "atm": 3, "moto": 4, "transfer": 5}
REQUIRED = ("transaction_id", "timestamp", "card_id", "amount", "currency", "merchant_id")


def _f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


class PythonForest:
    """An sklearn IsolationForest as plain Python lists, walked one row at a time."""

    def __init__(self, model: Any) -> None:
        from txfast.training.onnx_export import average_path_length

        self.trees = []
        for est, feats in zip(model.estimators_, model.estimators_features_, strict=True):
            t = est.tree_
            depth = [0] * t.node_count
            for node in range(t.node_count):
                for child in (t.children_left[node], t.children_right[node]):
                    if child >= 0:
                        depth[child] = depth[node] + 1
            leaf = [
                float(depth[i] + average_path_length(t.n_node_samples[i]))
                for i in range(t.node_count)
            ]
            self.trees.append(
                (
                    t.children_left.tolist(),
                    t.children_right.tolist(),
                    [int(feats[f]) if f >= 0 else -1 for f in t.feature],
                    [float(x) for x in t.threshold],
                    leaf,
                )
            )
        self.norm = float(average_path_length(model._max_samples))

    def score(self, row: list[float]) -> float:
        total = 0.0
        for left, right, feature, threshold, leaf in self.trees:
            node = 0
            while left[node] >= 0:
                node = left[node] if _f32(row[feature[node]]) <= threshold[node] else right[node]
            total += leaf[node]
        return 2.0 ** (-(total / len(self.trees)) / self.norm)


class PythonBaseline:
    """Decode, validate, featurise, score and decide one event at a time."""

    def __init__(
        self, forest: PythonForest, quantiles: list[float], threshold: float, rates: dict
    ) -> None:
        from txfast.scoring import Calibrator

        cal = Calibrator(quantiles)  # the same knots as txfast, then used as plain lists
        self.xp: list[float] = cal._xp.tolist()
        self.fp: list[float] = cal._fp.tolist()
        self.forest = forest
        self.threshold = threshold
        self.rates = rates
        self.cards: dict[str, deque] = {}
        self.last_loc: dict[str, tuple[int, float, float]] = {}
        self.merchants: dict[str, deque] = {}
        self.users: dict[str, deque] = {}
        self.alerts = 0
        self.rejected = 0
        self.feature_seconds = 0.0
        self.score_seconds = 0.0

    def calibrate(self, raw: float) -> float:
        xp, fp = self.xp, self.fp
        if raw <= xp[0]:
            return 0.0 if raw < xp[0] else fp[0]
        if raw >= xp[-1]:
            return 1.0 if raw > xp[-1] else fp[-1]
        k = bisect_right(xp, raw) - 1
        return fp[k] + (raw - xp[k]) / (xp[k + 1] - xp[k]) * (fp[k + 1] - fp[k])

    def handle(self, payload: bytes) -> float | None:
        try:
            e = json.loads(payload)
        except ValueError:
            self.rejected += 1
            return None
        if not isinstance(e, dict) or any(e.get(k) in (None, "") for k in REQUIRED):
            self.rejected += 1
            return None
        amount = e["amount"]
        rate = self.rates.get(str(e["currency"]).upper())
        if not isinstance(amount, int | float) or not amount > 0 or rate is None:
            self.rejected += 1
            return None
        ts = e["timestamp"]
        if isinstance(ts, str):
            ts = int(datetime.fromisoformat(ts).timestamp() * 1000)
        t0 = perf_counter()
        row = self.features(
            ts,
            e["card_id"],
            amount * rate,
            e["merchant_id"],
            e.get("user_id"),
            e.get("merchant_category"),
            e.get("country"),
            e.get("lat"),
            e.get("lon"),
            e.get("channel"),
        )
        t1 = perf_counter()
        score = self.calibrate(self.forest.score(row))
        t2 = perf_counter()
        self.feature_seconds += t1 - t0
        self.score_seconds += t2 - t1
        if score >= self.threshold or (score >= 0.95 and e.get("merchant_category") in {"6051"}):
            self.alerts += 1
        return score

    def features(
        self, ts, card, amount, merchant, user, category, country, lat, lon, channel
    ) -> list[float]:
        amount = _f32(amount)
        dt = datetime.fromtimestamp(ts / 1000, UTC)
        row = [amount, math.log1p(amount), dt.hour, dt.weekday(), float(dt.weekday() >= 5)]
        row.append(CHANNELS.get(channel, 6) if channel else 0)
        events = self.cards.setdefault(card, deque())
        horizon = ts - WINDOWS[-1] - LATENESS
        while events and events[0][0] <= horizon:
            events.popleft()
        prev_ts = events[-1][0] if events else None
        seen_country = seen_merchant = False
        w30 = ts - WINDOWS[-1]
        others = []
        for ets, eamt, emer, ecat, ectry in events:
            if ets > w30:
                others.append((eamt, ecat))
                seen_country |= country is not None and ectry == country
                seen_merchant |= emer == merchant
        events.append((ts, amount, merchant, category, country))
        counts, sums, maxs = [], [], []
        for w in WINDOWS:
            c, s, m = 0, 0.0, 0.0
            lo = ts - w
            for ets, eamt, *_ in reversed(events):
                if ets <= lo:
                    break
                c += 1
                s += eamt
                m = max(m, eamt)
            counts.append(c)
            sums.append(s)
            maxs.append(m)
        row += counts + sums + [s / c for s, c in zip(sums, counts, strict=True)] + maxs
        row.append(amount / (sums[-1] / counts[-1]))
        if len(others) >= 2:
            mu = sum(a for a, _ in others) / len(others)
            sd = math.sqrt(sum((a - mu) ** 2 for a, _ in others) / len(others))
            row.append((amount - mu) / sd if sd >= 1e-6 else 0.0)
        else:
            row.append(0.0)
        row.append((ts - prev_ts) / 1000 if prev_ts is not None else -1.0)
        km = kmh = -1.0
        if lat is not None and lon is not None:
            last = self.last_loc.get(card)
            if last is not None:
                km = _haversine(last[1], last[2], lat, lon)
                kmh = km / (max(abs(ts - last[0]), 1000) / 3.6e6)
            self.last_loc[card] = (ts, lat, lon)
        row += [km, kmh]
        row.append(float(country is not None and not seen_country))
        row.append(float(not seen_merchant))
        if category is None:
            row.append(-1.0)
        else:
            same = sum(a for a, c in others if c == category) + amount
            row.append(same / sums[-1])
        mts = self.merchants.setdefault(merchant, deque())
        while mts and mts[0] <= ts - MERCHANT_WINDOWS[-1] - LATENESS:
            mts.popleft()
        mts.append(ts)
        for w in MERCHANT_WINDOWS:
            row.append(len(mts) - bisect_right(mts, ts - w))
        if user is None:
            row.append(-1.0)
        else:
            uev = self.users.setdefault(user, deque())
            while uev and uev[0][0] <= ts - USER_WINDOW - LATENESS:
                uev.popleft()
            uev.append((ts, card))
            row.append(len({c for t, c in uev if t > ts - USER_WINDOW}))
        return [_f32(float(x)) for x in row]
