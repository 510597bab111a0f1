"""`exit`: the member leaves the steps here, as if it had walked past the last one. It is not an
exit criterion: the member stays measured for the goal until its window ends, in both shapes, so
treated and held-out members who take the same path (the holdout walks exit steps too) are
measured alike, and a conversion after a path that ends in an exit counts for the treatment."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from workflows.journeys.definition import Step
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient


class Exit(StepKind):
    name = "exit"
    broadcast = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        pass  # any reason, or none

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.exit is not None
        member.leave(step.exit.reason)
        return ""

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        batch.leave(due.member_id)
