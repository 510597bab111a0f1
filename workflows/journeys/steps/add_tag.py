"""`add_tag`: a strategy (or manual) tag value through tagging; a member already holding it is
left alone, so retries change nothing. A batch tags its members in a few calls."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import NAME, Step
from workflows.journeys.payloads import TagRequest
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind, treat

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient


class AddTag(StepKind):
    name = "add_tag"
    broadcast = True
    treats = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        add_tag = step.add_tag
        assert add_tag is not None
        if not NAME.match(add_tag.dimension):
            checks.add(f"{path}.add_tag.dimension", "must be a tag dimension name")
        if not add_tag.value or len(add_tag.value) > 64:
            checks.add(f"{path}.add_tag.value", "must be 1-64 characters")

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.add_tag is not None
        request = TagRequest(member.tenant_id, member.definition.key, member.member_id, step.id, step.add_tag)
        return await treat(member, step.id, JourneyActivities.add_tag, request)

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        batch.tag(due.position, due.member_id)
