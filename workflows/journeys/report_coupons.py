"""A journey report's coupon figures: the tasks service's GetCouponStats for the journey's campaign
(`journeys/{key}`), read per report arm.

Each coupon's source arm is `treated` or the split arms its member had taken (`{step}:{arm}`
joined by commas, see steps/issue_coupon.py). Every coupon goes to a treated member, so `treated`
counts them all; a split arm counts the coupons whose source names it; the holdout counts none.
The tasks service keeps no journey version, so the figures cover every version of the journey.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from workflows.journeys.report import TREATED, JourneyReport


@dataclass(frozen=True)
class CouponCount:
    issued: int = 0
    used: int = 0


def per_arm(stats: Mapping[str, CouponCount]) -> dict[str, CouponCount]:
    """GetCouponStats' arms (source arms) as report arms."""
    issued: defaultdict[str, int] = defaultdict(int)
    used: defaultdict[str, int] = defaultdict(int)
    for source, count in stats.items():
        arms = {TREATED} | {arm for arm in source.split(",") if arm}
        for arm in arms:
            issued[arm] += count.issued
            used[arm] += count.used
    return {arm: CouponCount(issued[arm], used[arm]) for arm in issued}


def with_coupons(report: JourneyReport, stats: Mapping[str, CouponCount] | None) -> JourneyReport:
    """The report with each arm's coupons; `stats` None (the tasks service did not answer) marks
    the figures unavailable instead."""
    if stats is None:
        return dataclasses.replace(report, coupons_unavailable=True)
    counts = per_arm(stats)
    arms = tuple(
        dataclasses.replace(
            arm,
            coupons_issued=counts.get(arm.arm, CouponCount()).issued,
            coupons_used=counts.get(arm.arm, CouponCount()).used,
        )
        for arm in report.arms
    )
    return dataclasses.replace(report, arms=arms)
