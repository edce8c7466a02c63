"""Metrics against scikit-learn and hand-worked examples; thresholds and risk bands."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sk = pytest.importorskip("sklearn.metrics")

from txfast.training.metrics import (  # noqa: E402
    average_precision,
    card_precision_at_k_per_day,
    precision_at_k_per_day,
    precision_recall_curve,
    roc_auc,
    threshold_metrics,
)
from txfast.training.thresholds import bands_for_threshold, choose_threshold  # noqa: E402


def _labelled(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(np.int64)
    y[0], y[1] = 1, 0
    s = rng.normal(size=n) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many equal scores
    return y, s


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 7, 100, 5000])
def test_ranking_metrics_equal_sklearn(n: int, ties: bool) -> None:
    y, s = _labelled(n, seed=n, ties=ties)
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    for mine, theirs in zip(
        precision_recall_curve(y, s), sk.precision_recall_curve(y, s), strict=True
    ):
        np.testing.assert_allclose(mine, theirs, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40).filter(
        lambda rows: len({r[0] for r in rows}) == 2
    )
)
def test_ranking_metrics_equal_sklearn_on_random_ties(rows: list[tuple[int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=np.float64)
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


def test_undefined_ranking_metrics_are_nan() -> None:
    assert np.isnan(roc_auc([0, 0, 0], [1.0, 2.0, 3.0]))
    assert np.isnan(average_precision([0, 0], [1.0, 2.0]))
    with pytest.raises(ValueError, match="at least one positive"):
        precision_recall_curve([0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [1.0, np.nan])


def test_threshold_metrics_equal_sklearn() -> None:
    y, s = _labelled(2000, seed=3, ties=False)
    amount = np.random.default_rng(4).lognormal(3, 1, size=y.size)
    flagged = s >= 1.0
    m = threshold_metrics(y, flagged, amount)
    assert m.precision == pytest.approx(sk.precision_score(y, flagged))
    assert m.recall == pytest.approx(sk.recall_score(y, flagged))
    assert m.f1 == pytest.approx(sk.f1_score(y, flagged))
    assert m.alerts == int(flagged.sum()) and m.alert_rate == pytest.approx(flagged.mean())
    assert m.fraud_amount == pytest.approx(amount[y == 1].sum())
    assert m.fraud_amount_caught == pytest.approx(amount[(y == 1) & flagged].sum())
    assert m.fraud_amount_caught_share == pytest.approx(m.fraud_amount_caught / m.fraud_amount)
    none = threshold_metrics(y, np.zeros(y.size, bool), amount)
    assert np.isnan(none.precision) and none.recall == 0.0 and np.isnan(none.f1)


def test_precision_at_k_per_day_by_hand() -> None:
    # Day 1: scores 9 (fraud), 8, 7 (fraud), 1 (fraud) -> top 2 hold 1 fraud -> 0.5
    # Day 2: scores 5 (fraud) only                      -> top 2 hold 1 fraud -> 0.5 (1/k)
    # Day 3: scores 3, 2 (fraud), 6 (fraud)              -> top 2 = 6, 3      -> 0.5
    day = np.array([1, 1, 1, 1, 2, 3, 3, 3])
    y = np.array([1, 0, 1, 1, 1, 0, 1, 1])
    s = np.array([9, 8, 7, 1, 5, 3, 2, 6], dtype=float)
    mean, days, per_day = precision_at_k_per_day(day, y, s, k=2)
    assert days.tolist() == [1, 2, 3]
    assert per_day.tolist() == [0.5, 0.5, 0.5]
    assert mean == 0.5
    _, _, per_day_1 = precision_at_k_per_day(day, y, s, k=1)
    assert per_day_1.tolist() == [1.0, 1.0, 1.0]


def test_card_precision_at_k_by_hand() -> None:
    """Worked example: card scores are daily maxima; caught cards leave later days.

    Day 1 transactions (card: score, label):
      A: 0.9 fraud, 0.2 legit  -> A max 0.9, fraudulent
      B: 0.8 legit             -> B 0.8, legitimate
      C: 0.3 fraud             -> C 0.3, fraudulent
      k = 2 -> top cards A, B -> precision 1/2; A is caught (reviewed and fraudulent).
    Day 2:
      A: 0.99 fraud            -> removed: A was caught on day 1
      B: 0.7 legit             -> B 0.7 (reviewed on day 1 but legitimate: stays)
      C: 0.6 fraud             -> C 0.6, fraudulent
      D: 0.1 fraud             -> D 0.1, fraudulent
      k = 2 -> top cards B, C -> precision 1/2; C is caught.
    Day 3:
      C: 0.95 fraud            -> removed
      D: 0.5 fraud             -> D 0.5 -> the only candidate: precision 1/2 (1 of k = 2)
    """
    day = np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    card = np.array(["A", "A", "B", "C", "A", "B", "C", "D", "C", "D"])
    y = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    s = np.array([0.9, 0.2, 0.8, 0.3, 0.99, 0.7, 0.6, 0.1, 0.95, 0.5])
    mean, days, per_day = card_precision_at_k_per_day(day, card, y, s, k=2)
    assert days.tolist() == [1, 2, 3]
    assert per_day.tolist() == [0.5, 0.5, 0.5]
    assert mean == 0.5
    # Without the removal, day 2 would review A and B, day 3 C and D: a different result.
    _, _, per_day_k1 = card_precision_at_k_per_day(day, card, y, s, k=1)
    # k = 1: day 1 A (fraud, caught); day 2 B (legit); day 3 C (fraud).
    assert per_day_k1.tolist() == [1.0, 0.0, 1.0]
    # The order of the rows does not matter.
    perm = np.random.default_rng(0).permutation(day.size)
    _, _, shuffled = card_precision_at_k_per_day(day[perm], card[perm], y[perm], s[perm], k=2)
    assert shuffled.tolist() == per_day.tolist()


def test_card_precision_matches_a_plain_python_loop() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    day = rng.integers(0, 6, size=n)
    card = rng.integers(0, 200, size=n).astype(np.uint64)
    y = (rng.random(n) < 0.05).astype(np.int64)
    s = rng.random(n) + y * rng.random(n)
    k = 7

    caught: set[int] = set()
    expected = []
    for d in range(6):
        rows = np.flatnonzero(day == d)
        best: dict[int, tuple[float, int]] = {}
        for i in rows:
            c = int(card[i])
            sc, fr = best.get(c, (-np.inf, 0))
            best[c] = (max(sc, s[i]), max(fr, int(y[i])))
        ranked = sorted(
            ((sc, c, fr) for c, (sc, fr) in best.items() if c not in caught), reverse=True
        )[:k]
        expected.append(sum(fr for _, _, fr in ranked) / k)
        caught |= {c for _, c, fr in ranked if fr}
    mean, _, per_day = card_precision_at_k_per_day(day, card, y, s, k)
    np.testing.assert_allclose(per_day, expected)
    assert mean == pytest.approx(np.mean(expected))


# -- thresholds --------------------------------------------------------------------------------


def test_bands_for_threshold_keep_the_historical_defaults() -> None:
    b = bands_for_threshold(0.99)
    assert (b.medium, b.high, b.critical) == (pytest.approx(0.95), 0.99, pytest.approx(0.999))
    b = bands_for_threshold(0.9)
    assert (b.medium, b.high, b.critical) == (pytest.approx(0.5), 0.9, pytest.approx(0.99))
    assert bands_for_threshold(0.5).medium == 0.0
    with pytest.raises(ValueError):
        bands_for_threshold(1.5)


def test_alerts_per_day_becomes_a_rate() -> None:
    ts = np.linspace(0, 10 * 86_400_000, 20_001).astype(np.int64)  # 2,000 rows per day
    choice = choose_threshold(alerts_per_day=50, train_rows=ts.size, train_ts_ms=ts)
    assert choice.calibration.method == "alert_rate"
    assert choice.calibration.target == pytest.approx(50 / 2000.1)
    assert choice.threshold == pytest.approx(1 - 50 / 2000.1)
    assert choice.bands.high == choice.threshold
    with pytest.raises(ValueError, match="not below"):
        choose_threshold(alerts_per_day=5000, train_rows=ts.size, train_ts_ms=ts)


def test_target_precision_picks_the_lowest_threshold_reaching_it() -> None:
    # Scores 10..1; labels make precision at each cut: 1, 1, 2/3, 3/4, 3/5, 4/6, ...
    score = np.arange(10, 0, -1, dtype=np.float64) / 10
    label = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0])
    choice = choose_threshold(
        target_precision=0.66, train_rows=10, reference_score=score, reference_label=label
    )
    # Precision >= 0.66 at cuts 0.9 (1.0), 0.7 (0.75), 0.5 (4/6 = 0.667): the lowest is 0.5.
    assert choice.threshold == pytest.approx(0.5)
    assert choice.calibration.expected_precision == pytest.approx(4 / 6)
    assert choice.calibration.expected_recall == pytest.approx(1.0)
    assert choice.calibration.expected_alert_rate == pytest.approx(0.6)
    strict = choose_threshold(
        target_precision=0.9, train_rows=10, reference_score=score, reference_label=label
    )
    assert strict.threshold == pytest.approx(0.9)
    with pytest.raises(ValueError, match="needs labelled reference rows"):
        choose_threshold(target_precision=0.5, train_rows=10)


def test_unreachable_precision_names_the_best() -> None:
    with pytest.raises(ValueError, match=r"best 0\.500"):
        choose_threshold(
            target_precision=0.9,
            train_rows=4,
            reference_score=np.array([0.9, 0.8, 0.7, 0.6]),
            reference_label=np.array([0, 1, 0, 1]),
        )


def test_one_target_only() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(train_rows=10)
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(target_alert_rate=0.1, target_precision=0.5, train_rows=10)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        choose_threshold(target_alert_rate=1.0, train_rows=10)
