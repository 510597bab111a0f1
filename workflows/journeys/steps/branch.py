"""`branch`: on the member's audience membership or tags now; member journeys only (a batch
would need one membership check per member)."""

from __future__ import annotations

from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import NAME, RESOURCE_ID, Step
from workflows.journeys.payloads import ConditionRequest
from workflows.journeys.steps.base import Checks, MemberRun, StepKind


class Branch(StepKind):
    name = "branch"

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        branch = step.branch
        assert branch is not None
        condition, at = branch.condition, f"{path}.branch.condition"
        if bool(condition.audience) == (condition.tag is not None):
            checks.add(at, "set exactly one of audience, tag")
        elif condition.audience and not RESOURCE_ID.match(condition.audience):
            checks.add(f"{at}.audience", "must be an audience id")
        elif condition.tag is not None and not NAME.match(condition.tag.dimension):
            checks.add(f"{at}.tag.dimension", "must be a tag dimension name")
        checks.target(f"{path}.branch.if_true", branch.if_true)
        checks.target(f"{path}.branch.if_false", branch.if_false)

    async def run(self, step: Step, member: MemberRun) -> str:
        branch = step.branch
        assert branch is not None
        holds = await member.call(
            JourneyActivities.check_condition,
            ConditionRequest(member.tenant_id, member.member_id, branch.condition),
        )
        return branch.if_true if holds else branch.if_false
