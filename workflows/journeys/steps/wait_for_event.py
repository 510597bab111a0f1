"""`wait_for_event`: until the member's own event or a timeout; member journeys only (a cohort
has no per-member wait for signals)."""

from __future__ import annotations

from temporalio import workflow

from workflows.journeys.definition import MAX_WAIT, Step, check_duration, check_event, duration
from workflows.journeys.steps.base import Checks, MemberRun, StepKind


class WaitForEvent(StepKind):
    name = "wait_for_event"

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        w = step.wait_for_event
        assert w is not None
        check_event(w.event, f"{path}.wait_for_event.event", checks.violations)
        check_duration(w.timeout, f"{path}.wait_for_event.timeout", checks.violations, MAX_WAIT)
        checks.target(f"{path}.wait_for_event.on_event", w.on_event)
        checks.target(f"{path}.wait_for_event.on_timeout", w.on_timeout)

    async def run(self, step: Step, member: MemberRun) -> str:
        w = step.wait_for_event
        assert w is not None
        happened = await member.event_until(w.event, workflow.now() + duration(w.timeout))
        return w.on_event if happened else w.on_timeout
