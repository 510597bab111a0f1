"""`wait_until_hour`: until the member-local hour:minute, or with `preferred` the member's own
`preferred_send_hour` (tagging's model tag, "00".."23"; `hour` for members without one)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from workflows.journeys import local_time
from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import Step
from workflows.journeys.payloads import LocalTimeRequest
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient


class WaitUntilHour(StepKind):
    name = "wait_until_hour"
    broadcast = True
    needs_recipient = True  # the member's zone

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        assert step.wait_until_hour is not None
        if not 0 <= step.wait_until_hour.hour <= 23:
            checks.add(f"{path}.wait_until_hour.hour", "must be 0-23 (with preferred: the fallback hour)")
        if not 0 <= step.wait_until_hour.minute <= 59:
            checks.add(f"{path}.wait_until_hour.minute", "must be 0-59")

    async def run(self, step: Step, member: MemberRun) -> str:
        w = step.wait_until_hour
        assert w is not None
        until = await member.call(
            JourneyActivities.local_time,
            LocalTimeRequest(member.tenant_id, member.member_id, w.hour, w.minute, w.preferred),
        )
        await member.sleep_until(until)
        return ""

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        w = step.wait_until_hour
        assert w is not None
        hour = local_time.hour_for(w.hour, batch.preferred_hour(due.member_id) if w.preferred else None)
        until = local_time.next_local_time(due.due_time, tz, hour, w.minute)
        batch.go(due.member_id, due.position + 1, until)
