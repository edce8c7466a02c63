"""Numba kernels used by :mod:`txfast.simulate`.

Every kernel is a pure function of its array arguments: random draws are made by the caller
with a seeded :class:`numpy.random.Generator` and passed in, so results are reproducible and
independent of the numba version or thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MS_PER_HOUR = 3_600_000


@njit(cache=True)
def sample_slots(
    card: np.ndarray,
    dow: np.ndarray,
    u: np.ndarray,
    slot_weight: np.ndarray,
    slot_kind: np.ndarray,
    kind_dow: np.ndarray,
) -> np.ndarray:
    """Draw one usage slot per transaction from its card's day-of-week adjusted weights.

    Args:
        card: Card index per transaction, shape ``(n,)``.
        dow: Day of week per transaction (0 = Monday), shape ``(n,)``.
        u: Uniform draws in ``[0, 1)``, shape ``(n,)``.
        slot_weight: Per-card slot weights, shape ``(cards, slots)``; each row has at least one
            positive entry.
        slot_kind: Merchant kind of each slot, shape ``(slots,)``.
        kind_dow: Day-of-week factor per merchant kind, shape ``(kinds, 7)``; all positive.

    Returns:
        The chosen slot index per transaction (int16).
    """
    n = card.shape[0]
    n_slots = slot_weight.shape[1]
    out = np.empty(n, np.int16)
    for i in range(n):
        c = card[i]
        d = dow[i]
        total = 0.0
        for s in range(n_slots):
            total += slot_weight[c, s] * kind_dow[slot_kind[s], d]
        x = u[i] * total
        acc = 0.0
        chosen = -1
        last_positive = 0
        for s in range(n_slots):
            w = slot_weight[c, s] * kind_dow[slot_kind[s], d]
            if w > 0.0:
                last_positive = s
                acc += w
                if x < acc:
                    chosen = s
                    break
        out[i] = chosen if chosen >= 0 else last_positive
    return out


@njit(cache=True)
def sample_time_of_day(
    profile: np.ndarray, weekend: np.ndarray, u: np.ndarray, v: np.ndarray, cdf: np.ndarray
) -> np.ndarray:
    """Draw a local time of day in milliseconds from hourly activity profiles.

    Args:
        profile: Profile index per transaction, shape ``(n,)``.
        weekend: 1 on Saturday/Sunday, else 0, shape ``(n,)``.
        u: Uniform draws choosing the hour, shape ``(n,)``.
        v: Uniform draws placing the transaction within the hour, shape ``(n,)``.
        cdf: Cumulative hourly distribution, shape ``(profiles, 2, 24)``, last entry 1.

    Returns:
        Milliseconds since local midnight per transaction (int64).
    """
    n = profile.shape[0]
    out = np.empty(n, np.int64)
    for i in range(n):
        p = profile[i]
        w = weekend[i]
        x = u[i]
        h = 0
        while h < 23 and x >= cdf[p, w, h]:
            h += 1
        out[i] = h * MS_PER_HOUR + np.int64(v[i] * MS_PER_HOUR)
    return out


@njit(cache=True)
def pick_in_groups(
    group: np.ndarray, u: np.ndarray, group_start: np.ndarray, group_size: np.ndarray
) -> np.ndarray:
    """Pick a uniformly random member of each row's group.

    Args:
        group: Group index per row, shape ``(n,)``.
        u: Uniform draws in ``[0, 1)``, shape ``(n,)``.
        group_start: First member of each group in a member array sorted by group.
        group_size: Number of members of each group (all positive).

    Returns:
        The member index per row (int32).
    """
    n = group.shape[0]
    out = np.empty(n, np.int32)
    for i in range(n):
        g = group[i]
        k = np.int64(u[i] * group_size[g])
        if k >= group_size[g]:
            k = group_size[g] - 1
        out[i] = group_start[g] + k
    return out


@njit(cache=True)
def segment_cumsum(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment, exclusive of the current value.

    Args:
        values: Values laid out segment after segment, shape ``(sum(sizes),)``.
        sizes: Segment lengths.

    Returns:
        For each value, the sum of the values before it in its own segment (int64); the first
        value of every segment gets 0.
    """
    out = np.empty(values.shape[0], np.int64)
    pos = 0
    for s in range(sizes.shape[0]):
        acc = np.int64(0)
        for _ in range(sizes[s]):
            out[pos] = acc
            acc += values[pos]
            pos += 1
    return out


@njit(cache=True)
def argsort_time(ts: np.ndarray) -> np.ndarray:
    """Stable argsort of integer timestamps in linear time.

    A counting sort into buckets holding a few rows each, then an insertion sort inside
    each bucket. Much faster than a comparison sort for the near-uniform event times of a
    simulation, and equal to ``np.argsort(ts, kind="stable")``.

    Args:
        ts: Integer timestamps, shape ``(n,)``.

    Returns:
        The permutation that sorts ``ts`` (int64), ties kept in input order.
    """
    n = ts.shape[0]
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    lo = ts.min()
    width = ts.max() - lo + 1
    bucket = max(np.int64(1), width * 4 // n + 1)
    n_buckets = width // bucket + 1
    start = np.zeros(n_buckets + 1, np.int64)
    for i in range(n):
        start[(ts[i] - lo) // bucket + 1] += 1
    for b in range(n_buckets):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    for i in range(n):
        b = (ts[i] - lo) // bucket
        order[fill[b]] = i
        fill[b] += 1
    for b in range(n_buckets):
        for j in range(start[b] + 1, start[b + 1]):
            cur = order[j]
            key = ts[cur]
            k = j - 1
            while k >= start[b] and ts[order[k]] > key:
                order[k + 1] = order[k]
                k -= 1
            order[k + 1] = cur
    return order


@njit(cache=True)
def assemble_json(
    data: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    valid: np.ndarray,
    quoted: np.ndarray,
    keys: np.ndarray,
    key_offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble one JSON object per row from pre-encoded field values.

    Args:
        data: Concatenated UTF-8 text of every field value.
        start: Start of each value in ``data``, shape ``(n, fields)``.
        end: End (exclusive) of each value in ``data``, shape ``(n, fields)``.
        valid: Whether a field is present in a row, shape ``(n, fields)``; absent fields are
            omitted from the object.
        quoted: Per field, whether its values are wrapped in double quotes on output.
        keys: Concatenated ``"name":`` prefixes of the fields.
        key_offsets: Offsets of each prefix in ``keys``, shape ``(fields + 1,)``.

    Returns:
        The bytes of all objects back to back, and the offsets of each object, shape ``(n + 1,)``.
    """
    n, n_fields = valid.shape
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    for i in range(n):
        size = 1  # the closing brace; every present field adds its opening brace or comma
        for f in range(n_fields):
            if valid[i, f]:
                size += 1 + key_offsets[f + 1] - key_offsets[f] + end[i, f] - start[i, f]
                if quoted[f]:
                    size += 2
        if size == 1:
            size = 2
        offsets[i + 1] = offsets[i] + size
    out = np.empty(offsets[n], np.uint8)
    for i in range(n):
        pos = offsets[i]
        out[pos] = 123  # {
        sep = 123
        for f in range(n_fields):
            if not valid[i, f]:
                continue
            out[pos] = sep
            sep = 44  # ,
            pos += 1
            k0 = key_offsets[f]
            k1 = key_offsets[f + 1]
            out[pos : pos + k1 - k0] = keys[k0:k1]
            pos += k1 - k0
            if quoted[f]:
                out[pos] = 34  # "
                pos += 1
            d0 = start[i, f]
            d1 = end[i, f]
            out[pos : pos + d1 - d0] = data[d0:d1]
            pos += d1 - d0
            if quoted[f]:
                out[pos] = 34
                pos += 1
        if sep == 123:
            pos += 1
        out[pos] = 125  # }
    return out, offsets
