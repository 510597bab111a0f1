"""`award`: points through the tasks service, once per enrolment and step; member journeys only
(EarnPoints takes one member at a time)."""

from __future__ import annotations

from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import MAX_POINTS, Step
from workflows.journeys.payloads import AwardRequest
from workflows.journeys.steps.base import Checks, MemberRun, StepKind, treat


class Award(StepKind):
    name = "award"
    treats = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        award = step.award
        assert award is not None
        if not 1 <= award.points <= MAX_POINTS:
            checks.add(f"{path}.award.points", f"must be 1-{MAX_POINTS}")
        if not 0 <= award.expiry_days <= 3650:
            checks.add(f"{path}.award.expiry_days", "must be 0 (never) to 3650")

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.award is not None
        request = AwardRequest(
            member.tenant_id,
            member.definition.key,
            member.enrolment_id,
            member.member_id,
            step.id,
            step.award,
        )
        return await treat(member, step.id, JourneyActivities.award, request)
