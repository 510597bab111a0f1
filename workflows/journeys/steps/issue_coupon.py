"""`issue_coupon`: a coupon of a tasks-service template, once per enrolment and step; member journeys
only (IssueCoupon takes one member at a time). The coupon is kept by the run, so the member's later
sends can show its code and terms; a refusal (no stock left, the member at the template's limit, a
retired template) is counted `failed` and the member goes on, its later coupon sends skipped.

Its source is the journey (`journeys/{key}`) and the member's report arm: `treated`, or the split
arms the member took before this step (`{step id}:{arm}`, joined by commas as enrolments record
them), so the report counts a coupon under `treated` and under each split arm it names.
"""

from __future__ import annotations

from temporalio.exceptions import ActivityError

from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import COUPON_TEMPLATE_ID, Step
from workflows.journeys.payloads import IssueCouponRequest
from workflows.journeys.steps.base import Checks, MemberRun, StepKind

# CouponSource.arm holds at most this many characters.
MAX_ARM = 128
TREATED = "treated"


def coupon_arm(split_arms: tuple[str, ...]) -> str:
    """The source arm of a treated member's coupon: its split arms, or `treated` without any. Split
    arms that would not fit are dropped, the earliest first (their arms then miss the coupon)."""
    kept = list(split_arms)
    while kept and len(",".join(kept)) > MAX_ARM:
        kept.pop(0)
    return ",".join(kept) or TREATED


class IssueCoupon(StepKind):
    name = "issue_coupon"
    treats = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        issue = step.issue_coupon
        assert issue is not None
        if not COUPON_TEMPLATE_ID.match(issue.template):
            checks.add(
                f"{path}.issue_coupon.template", "must be a coupon template id such as new-customer-20-off"
            )

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.issue_coupon is not None
        request = IssueCouponRequest(
            tenant_id=member.tenant_id,
            journey_key=member.definition.key,
            enrolment_id=member.enrolment_id,
            member_id=member.member_id,
            step_id=step.id,
            issue_coupon=step.issue_coupon,
            arm=coupon_arm(member.split_arms),
        )
        try:
            issued = await member.call(JourneyActivities.issue_coupon, request)
        except ActivityError:
            member.count(step.id, "failed")
            return ""
        if issued.refused:
            member.count(step.id, "failed")
            return ""
        member.keep_coupon(issued)
        member.count(step.id, "done")
        return ""
