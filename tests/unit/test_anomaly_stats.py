"""The anomaly check's statistics (workflows/anomalies/stats.py): robust z-scores of a day against
the same weekday of up to eight weeks before it."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from workflows.anomalies import stats
from workflows.anomalies.payloads import KPIS, Series
from workflows.anomalies.workflow import findings

MONDAY = dt.date(2026, 3, 2)


def middle(values: list[float]) -> float:
    """The median computed directly: the middle of the sorted values (mean of the two middles)."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def test_scores_match_a_direct_computation() -> None:
    rng = random.Random(22)
    for _ in range(500):
        history = [rng.uniform(0, 1000) for _ in range(rng.randint(4, 8))]
        value = rng.uniform(0, 3000)
        median = middle(history)
        mad = middle([abs(x - median) for x in history])
        expected = (value - median) / max(1.4826 * mad, 0.05 * median, 1.0)
        scored = stats.score(value, history, 1.0)
        assert scored is not None
        assert scored.baseline == pytest.approx(median)
        assert scored.robust_z == pytest.approx(expected)
        assert scored.history_days == len(history)


def test_scores_match_numpy() -> None:
    np = pytest.importorskip("numpy")
    history = [120.0, 151.0, 98.0, 125.0, 160.0, 112.0, 109.0, 137.0]
    median = float(np.median(history))
    mad = float(np.median(np.abs(np.array(history) - median)))
    assert 1.4826 * mad > 0.05 * median  # the spread, not the floor, scales this one
    scored = stats.score(190.0, history, 1.0)
    assert scored is not None
    assert scored.robust_z == pytest.approx((190.0 - median) / (1.4826 * mad))
    assert scored.flagged and scored.direction == "high"


def test_a_flat_history_divides_by_the_floor_not_zero() -> None:
    flat = [3.0] * 8
    same = stats.score(3.0, flat, stats.MIN_SCALE["orders"])
    one_more = stats.score(4.0, flat, stats.MIN_SCALE["orders"])
    tenfold = stats.score(30.0, flat, stats.MIN_SCALE["orders"])
    assert same is not None and same.robust_z == 0 and not same.flagged
    assert one_more is not None and one_more.robust_z == 1 and not one_more.flagged
    assert tenfold is not None and tenfold.robust_z == 27 and tenfold.flagged
    # A large flat series is measured against 5 % of its median: 3 % more is no anomaly.
    big = stats.score(10_300.0, [10_000.0] * 8, stats.MIN_SCALE["gmv"])
    assert big is not None and big.robust_z == pytest.approx(0.6)
    # No failures ever, then 5 % of sends failing: five floors of one percentage point.
    rate = stats.score(0.05, [0.0] * 6, stats.MIN_SCALE["send_failure_rate"])
    assert rate is not None and rate.robust_z == pytest.approx(5) and rate.flagged


def test_fewer_than_four_earlier_values_are_not_checked() -> None:
    assert stats.score(100.0, [1.0, 1.0, 1.0], 1.0) is None
    values: dict[dt.date, float | None] = {MONDAY - dt.timedelta(weeks=k): 5.0 for k in range(1, 4)}
    values[MONDAY - dt.timedelta(weeks=4)] = None  # a day without a value is no history
    values[MONDAY] = 500.0
    assert stats.check_day("orders", values, MONDAY) is None


def test_history_is_the_same_weekday_of_up_to_eight_weeks_before() -> None:
    values: dict[dt.date, float | None] = {}
    for n in range(1, 80):
        values[MONDAY - dt.timedelta(days=n)] = 1000.0  # other weekdays and older weeks: ignored
    for k in range(1, 9):
        values[MONDAY - dt.timedelta(weeks=k)] = float(k)
    values[MONDAY] = 4.5
    scored = stats.check_day("orders", values, MONDAY)
    assert scored is not None
    assert (scored.history_days, scored.baseline) == (8, 4.5)
    assert stats.same_weekdays(values, MONDAY) == [float(k) for k in range(1, 9)]


def test_low_days_are_flagged_low() -> None:
    scored = stats.score(10.0, [100.0, 104.0, 98.0, 101.0, 99.0], 1.0)
    assert scored is not None and scored.flagged and scored.direction == "low"


def test_the_workflow_flags_only_the_odd_day_of_steady_series() -> None:
    first, last = dt.date(2026, 1, 1), dt.date(2026, 3, 4)
    n = (last - first).days + 1
    spike = 60  # 2026-03-02
    orders: list[float | None] = [3.0] * n
    orders[spike] = 30.0
    series = Series(
        first.isoformat(),
        (last - dt.timedelta(days=6)).isoformat(),
        last.isoformat(),
        {
            "orders": orders,
            "gmv": [300.0] * n,
            "new_members": [0.0] * n,
            "sign_ins": [0.0] * n,
            "send_failure_rate": [None] * n,
        },
    )
    checked, found = findings(series)
    assert checked == 7 * (len(KPIS) - 1)
    assert [(f.kpi, f.day, f.direction, f.history_days) for f in found] == [
        ("orders", "2026-03-02", "high", 8)
    ]
    assert found[0].baseline == 3 and found[0].robust_z == 27


def test_checked_days_end_with_the_last() -> None:
    assert stats.checked_days(dt.date(2026, 3, 8), 3) == [
        dt.date(2026, 3, 6),
        dt.date(2026, 3, 7),
        dt.date(2026, 3, 8),
    ]
    assert stats.history_start(dt.date(2026, 3, 8)) == dt.date(2026, 1, 11)
