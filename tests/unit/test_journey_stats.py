"""The journey report's statistics: against values worked out by hand, and against statsmodels (a
dev dependency, used here only) over many random arms."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from statsmodels.stats import proportion as sm

from workflows.journeys import stats


def test_the_wilson_interval_of_hand_worked_examples() -> None:
    # 0 of 10: p = 0, z² = 3.841459; centre = (z²/20) / (1 + z²/10) = 0.192073 / 1.384146 = 0.138766,
    # half width = z·√(z²/400) / 1.384146 = the same: (0, 0.277532). Wald's would be (0, 0).
    low, high = stats.wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.277532, abs=1e-6)
    # 30 of 1000: centre = (0.03 + 0.0019207) / 1.0038415 = 0.0317986; half width =
    # 1.959964 · √(0.0000291 + 0.00000096) / 1.0038415 = 0.0107048.
    low, high = stats.wilson(30, 1000)
    assert (low, high) == pytest.approx((0.0210938, 0.0425034), abs=1e-7)
    # All converted: the interval ends at 1, symmetric to 0 of 10.
    assert stats.wilson(10, 10) == pytest.approx((1 - 0.277532, 1.0), abs=1e-6)
    # Nothing known without members.
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_a_difference_of_hand_worked_arms() -> None:
    # 30/1000 against 20/1000. Pooled rate 0.025, pooled error √(0.025·0.975·(2/1000)) = 0.0069821,
    # z = 0.01 / 0.0069821 = 1.432230, two-sided p = 2·(1 - Φ(1.432230)) = 0.152078.
    # Unpooled error √(0.03·0.97/1000 + 0.02·0.98/1000) = 0.0069785, half width 0.0136777.
    d = stats.compare(30, 1000, 20, 1000)
    assert d.difference == pytest.approx(0.01)
    assert d.p_value == pytest.approx(0.152078, abs=1e-6)
    assert (d.ci_low, d.ci_high) == pytest.approx((-0.0036777, 0.0236777), abs=1e-7)
    assert not d.too_small
    # The other way round: the same p-value, the interval mirrored.
    back = stats.compare(20, 1000, 30, 1000)
    assert back.p_value == d.p_value and (back.ci_low, back.ci_high) == pytest.approx((-d.ci_high, -d.ci_low))


@pytest.mark.parametrize(
    ("arm", "baseline", "small"),
    [
        ((5, 10), (5, 10), False),  # 5 conversions and 5 non-conversions each: enough
        ((4, 1000), (50, 1000), True),  # 4 conversions in the arm
        ((50, 1000), (996, 1000), True),  # 4 non-conversions in the baseline
        ((2, 10_000), (1, 10_000), True),  # many members, too few conversions
        ((0, 0), (50, 1000), True),  # no members
    ],
)
def test_too_small_asks_five_conversions_and_five_non_conversions_of_each_arm(
    arm: tuple[int, int], baseline: tuple[int, int], small: bool
) -> None:
    assert stats.compare(*arm, *baseline).too_small is small


def test_arms_with_nothing_to_compare() -> None:
    assert stats.compare(0, 0, 3, 10) == stats.Difference(0.0, -1.0, 1.0, 1.0, True)
    # Neither arm converted anybody: no difference, and no evidence of one.
    none = stats.compare(0, 100, 0, 200)
    assert (none.difference, none.ci_low, none.ci_high, none.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="conversions <= members"):
        stats.compare(11, 10, 0, 10)
    with pytest.raises(ValueError, match="conversions <= members"):
        stats.wilson(-1, 10)


def random_arm(rng: random.Random) -> tuple[int, int]:
    members = rng.choice([rng.randint(1, 60), rng.randint(1, 5_000), rng.randint(1, 2_000_000)])
    # Journeys convert at low rates mostly; sometimes anything.
    share = rng.choice([rng.uniform(0, 0.05), rng.random()])
    return round(members * share), members


def test_the_statistics_equal_statsmodels_over_random_arms() -> None:
    rng = random.Random(19)
    checked = 0
    for _ in range(2_000):
        (c1, n1), (c2, n2) = random_arm(rng), random_arm(rng)
        low, high = sm.proportion_confint(c1, n1, alpha=0.05, method="wilson")
        assert stats.wilson(c1, n1) == pytest.approx((low, high), rel=1e-9, abs=1e-12)
        ours = stats.compare(c1, n1, c2, n2)
        low, high = sm.confint_proportions_2indep(c1, n1, c2, n2, method="wald", compare="diff", alpha=0.05)
        assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-9, abs=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when both arms convert all or none
            test = sm.test_proportions_2indep(c1, n1, c2, n2, method="score", correction=False)
        if math.isnan(test.pvalue):
            assert ours.p_value == 1.0 and ours.difference == 0.0
            continue
        assert ours.difference == pytest.approx(c1 / n1 - c2 / n2, abs=1e-15)
        assert ours.p_value == pytest.approx(test.pvalue, rel=1e-7, abs=1e-12)
        checked += 1
    assert checked > 1_900
