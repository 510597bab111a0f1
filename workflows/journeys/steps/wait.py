"""`wait`: a fixed time, for a member and for a batch alike."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from temporalio import workflow

from workflows.journeys.definition import MAX_WAIT, Step, check_duration, duration
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient


class Wait(StepKind):
    name = "wait"
    broadcast = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        assert step.wait is not None
        check_duration(step.wait.duration, f"{path}.wait.duration", checks.violations, MAX_WAIT)

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.wait is not None
        await member.sleep_until(workflow.now() + duration(step.wait.duration))
        return ""

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        assert step.wait is not None
        batch.go(due.member_id, due.position + 1, due.due_time + duration(step.wait.duration))
