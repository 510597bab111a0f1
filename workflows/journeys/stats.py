"""The statistics of the journey report: a conversion rate's 95 % interval, and the difference of
two arms' rates with its interval, p-value and a flag when the sample says nothing.

Pure functions over counts, the standard library only (the service computes them for every
report; statsmodels is the independent check in the tests, not a dependency). The methods, and
the statsmodels calls each one equals:

- a rate's interval: Wilson's score interval, `proportion_confint(c, n, method="wilson")`. Wald's
  p ± z·√(p(1-p)/n) has width 0 at 0 or n conversions and covers far less than 95 % at the low
  rates journeys convert at; Wilson's stays inside [0, 1] and keeps its coverage there.
- the p-value: the two-proportion z-test with the pooled standard error (both arms' rate under
  "no difference"), `test_proportions_2indep(c1, n1, c2, n2, method="score", correction=False)`,
  which is `proportions_ztest([c1, c2], [n1, n2])`.
- the difference's interval: Wald's with the unpooled standard error,
  `confint_proportions_2indep(c1, n1, c2, n2, method="wald")`.
- too small: either arm has fewer than MIN_OUTCOMES conversions or fewer than MIN_OUTCOMES members
  who did not convert (the n·p ≥ 5 and n·(1-p) ≥ 5 rule the normal approximation above rests on).
  A member count alone would not do: 10,000 members converting at 0.02 % are two conversions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# The two-sided 95 % quantile of the standard normal distribution, 1.959963984540054.
Z95 = NormalDist().inv_cdf(0.975)
# Conversions, and members who did not convert, that each arm needs for the normal approximation.
MIN_OUTCOMES = 5


@dataclass(frozen=True)
class Difference:
    """Rate of the arm minus rate of the baseline, with what can be said about it."""

    difference: float
    ci_low: float
    ci_high: float
    # Two-sided; 1.0 when there is nothing to compare (an arm without members, or both arms all
    # converted or none converted).
    p_value: float
    too_small: bool


def rate(conversions: int, members: int) -> float:
    return conversions / members if members else 0.0


def wilson(conversions: int, members: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for conversions/members; (0, 1) when there are no members."""
    _check(conversions, members)
    if members == 0:
        return 0.0, 1.0
    p, z2 = conversions / members, z * z
    denominator = 1 + z2 / members
    centre = (p + z2 / (2 * members)) / denominator
    half = z * math.sqrt(p * (1 - p) / members + z2 / (4 * members * members)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def too_small(conversions: int, members: int) -> bool:
    """True when the arm has fewer than MIN_OUTCOMES conversions or non-conversions."""
    _check(conversions, members)
    return conversions < MIN_OUTCOMES or members - conversions < MIN_OUTCOMES


def compare(conversions: int, members: int, base_conversions: int, base_members: int) -> Difference:
    """The arm's rate minus the baseline's: Wald interval (unpooled), pooled z-test p-value."""
    _check(conversions, members)
    _check(base_conversions, base_members)
    small = too_small(conversions, members) or too_small(base_conversions, base_members)
    if members == 0 or base_members == 0:
        return Difference(0.0, -1.0, 1.0, 1.0, True)
    p1, p2 = conversions / members, base_conversions / base_members
    difference = p1 - p2
    unpooled = math.sqrt(p1 * (1 - p1) / members + p2 * (1 - p2) / base_members)
    pooled_rate = (conversions + base_conversions) / (members + base_members)
    pooled = math.sqrt(pooled_rate * (1 - pooled_rate) * (1 / members + 1 / base_members))
    # A zero pooled error means both arms converted all or none: the same rate, no evidence.
    p_value = math.erfc(abs(difference / pooled) / math.sqrt(2)) if pooled > 0 else 1.0
    return Difference(difference, difference - Z95 * unpooled, difference + Z95 * unpooled, p_value, small)


def _check(conversions: int, members: int) -> None:
    if not 0 <= conversions <= members:
        raise ValueError(f"need 0 <= conversions <= members, got {conversions} of {members}")
