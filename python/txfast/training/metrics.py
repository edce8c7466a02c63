"""Fraud-detection metrics, vectorised with numpy (no scikit-learn needed).

Ranking metrics take any score where higher means more suspicious; ties are handled as
scikit-learn does (a group of equal scores is one threshold). Day-level metrics follow the
investigator's view (see ``shared/domain.md``): each day, analysts review the ``k``
highest-scored transactions or cards.

* ``roc_auc`` — area under the ROC curve (Mann–Whitney with average ranks for ties).
* ``average_precision`` — ``Σ (R_n − R_{n−1}) P_n`` over distinct thresholds, as
  ``sklearn.metrics.average_precision_score``.
* ``precision_recall_curve`` — as ``sklearn.metrics.precision_recall_curve``.
* ``precision_at_k_per_day`` — share of fraud among each day's ``k`` top transactions.
* ``card_precision_at_k_per_day`` — each day, a card's score is its highest transaction
  score that day and it is fraudulent if any of its transactions that day is; the ``k``
  top cards are reviewed, and cards *caught* on an earlier day (reviewed and fraudulent)
  are no longer candidates: they have been blocked.
* ``threshold_metrics`` — precision, recall, F1, alert rate and fraud amount caught at a
  threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ThresholdMetrics",
    "average_precision",
    "card_precision_at_k_per_day",
    "precision_at_k_per_day",
    "precision_recall_curve",
    "roc_auc",
    "threshold_metrics",
]


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y).reshape(-1)
    ss = np.asarray(score, dtype=np.float64).reshape(-1)
    if yy.shape != ss.shape:
        raise ValueError(f"labels and scores differ in length: {yy.size} vs {ss.size}")
    if not np.isin(yy, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(ss).any():
        raise ValueError("scores must not be NaN")
    return yy.astype(np.int64), ss


def _sorted_groups(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]
    tps = np.cumsum(t)[last]
    fps = np.cumsum(1 - t)[last]
    return tps, fps, s[last]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    yy, ss = _check(y, score)
    n_pos = int(yy.sum())
    n_neg = yy.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(ss, kind="mergesort")
    s = ss[order]
    # Average rank (1-based) of each group of ties.
    first = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], s.size]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = avg_rank[group]
    rank_sum = float(ranks[yy == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def precision_recall_curve(
    y: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, as scikit-learn returns them.

    Returns:
        ``(precision, recall, thresholds)``: thresholds increasing; precision and recall
        have one more element, ending at precision 1 and recall 0.

    Raises:
        ValueError: If there is no fraud (recall is undefined).
    """
    yy, ss = _check(y, score)
    if yy.sum() == 0:
        raise ValueError("precision_recall_curve needs at least one positive label")
    tps, fps, thresholds = _sorted_groups(yy, ss)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return (
        np.r_[precision[::-1], 1.0],
        np.r_[recall[::-1], 0.0],
        thresholds[::-1],
    )


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the precision-recall step curve); NaN without fraud."""
    yy, ss = _check(y, score)
    if yy.sum() == 0:
        return float("nan")
    tps, fps, _ = _sorted_groups(yy, ss)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _day_groups(day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days, inverse = np.unique(np.asarray(day), return_inverse=True)
    return days, inverse.reshape(-1)


def precision_at_k_per_day(
    day: np.ndarray, y: np.ndarray, score: np.ndarray, k: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Share of fraud among the ``k`` highest-scored transactions of each day.

    A day with fewer than ``k`` transactions still divides by ``k`` (the unused review
    capacity counts as missed precision).

    Returns:
        ``(mean over days, days, per-day precision)``; the mean is NaN without rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    yy, ss = _check(y, score)
    days, d = _day_groups(day)
    if d.shape != yy.shape:
        raise ValueError("day and labels differ in length")
    order = np.lexsort((-ss, d))  # by day, then score descending
    d_sorted = d[order]
    starts = np.searchsorted(d_sorted, np.arange(days.size))
    rank = np.arange(d_sorted.size) - starts[d_sorted]
    top = order[rank < k]
    hits = np.bincount(d[top], weights=yy[top], minlength=days.size)
    per_day = hits / k
    return (float(per_day.mean()) if days.size else float("nan")), days, per_day


def card_precision_at_k_per_day(
    day: np.ndarray, card: np.ndarray, y: np.ndarray, score: np.ndarray, k: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Card precision@k per day, with cards caught on earlier days removed.

    Each day (in increasing order), every card gets the highest score of its transactions
    that day and is fraudulent if any of them is. Cards caught before (among an earlier
    day's ``k`` top cards *and* fraudulent) are left out; the ``k`` top remaining cards are
    reviewed; precision is the share of fraudulent cards among them, over ``k``.

    Args:
        day: Day of each transaction (any sortable key).
        card: Card key of each transaction (any hashable numpy dtype).
        y: 0/1 labels.
        score: Scores, higher is more suspicious.
        k: Cards reviewed per day.

    Returns:
        ``(mean over days, days, per-day card precision)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    yy, ss = _check(y, score)
    days, d = _day_groups(day)
    cards, c = np.unique(np.asarray(card), return_inverse=True)
    c = c.reshape(-1)
    if not d.shape == c.shape == yy.shape:
        raise ValueError("day, card and labels differ in length")
    # One row per (day, card): max score, any fraud.
    key = d.astype(np.int64) * cards.size + c
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    card_score = np.full(uniq.size, -np.inf)
    np.maximum.at(card_score, inv, ss)
    card_fraud = np.zeros(uniq.size, dtype=np.int64)
    np.maximum.at(card_fraud, inv, yy)
    card_day = uniq // cards.size
    card_id = uniq % cards.size

    caught = np.zeros(cards.size, dtype=bool)
    per_day = np.zeros(days.size, dtype=np.float64)
    bounds = np.searchsorted(card_day, np.arange(days.size + 1))  # uniq is sorted by day
    for i in range(days.size):
        lo, hi = bounds[i], bounds[i + 1]
        ids, sc, fr = card_id[lo:hi], card_score[lo:hi], card_fraud[lo:hi]
        keep = ~caught[ids]
        ids, sc, fr = ids[keep], sc[keep], fr[keep]
        top = np.argsort(-sc, kind="mergesort")[:k]
        per_day[i] = fr[top].sum() / k
        caught[ids[top][fr[top] == 1]] = True
    return (float(per_day.mean()) if days.size else float("nan")), days, per_day


@dataclass(frozen=True, slots=True)
class ThresholdMetrics:
    """Figures at one threshold.

    Attributes:
        alerts: Transactions flagged.
        alert_rate: Flagged share of transactions.
        precision: Fraud share of the flagged (NaN without alerts).
        recall: Flagged share of the fraud (NaN without fraud).
        f1: Harmonic mean of precision and recall (NaN when either is).
        fraud_amount: Total amount of the fraudulent transactions.
        fraud_amount_caught: Amount of the flagged fraudulent transactions.
        fraud_amount_caught_share: ``fraud_amount_caught / fraud_amount``.
    """

    alerts: int
    alert_rate: float
    precision: float
    recall: float
    f1: float
    fraud_amount: float
    fraud_amount_caught: float
    fraud_amount_caught_share: float


def threshold_metrics(
    y: np.ndarray, flagged: np.ndarray, amount: np.ndarray | None = None
) -> ThresholdMetrics:
    """Precision, recall, F1, alert rate and fraud amount caught for a set of alerts.

    Args:
        y: 0/1 labels.
        flagged: Boolean alerts (e.g. ``score >= threshold``).
        amount: Transaction amounts (base currency); zeros when omitted.
    """
    yy, _ = _check(y, np.zeros(np.asarray(y).size))
    f = np.asarray(flagged, dtype=bool).reshape(-1)
    if f.shape != yy.shape:
        raise ValueError("labels and alerts differ in length")
    amt = np.zeros(yy.size) if amount is None else np.asarray(amount, dtype=np.float64)
    tp = int((f & (yy == 1)).sum())
    alerts = int(f.sum())
    frauds = int(yy.sum())
    precision = tp / alerts if alerts else float("nan")
    recall = tp / frauds if frauds else float("nan")
    if np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        f1 = float("nan") if np.isnan(precision) or np.isnan(recall) else 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    fraud_amount = float(amt[yy == 1].sum())
    caught = float(amt[(yy == 1) & f].sum())
    return ThresholdMetrics(
        alerts=alerts,
        alert_rate=alerts / yy.size if yy.size else float("nan"),
        precision=precision,
        recall=recall,
        f1=f1,
        fraud_amount=fraud_amount,
        fraud_amount_caught=caught,
        fraud_amount_caught_share=caught / fraud_amount if fraud_amount else float("nan"),
    )
