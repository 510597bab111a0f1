"""`send`: a message through the channel policy, exactly once per member and step (the message
log). Deferred sends (quiet hours, the daily cap, rate windows) wait and try again, never drop."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import CHANNEL_CHOICES, Step, coupon_fields_used
from workflows.journeys.payloads import SendRequest
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient


class Send(StepKind):
    name = "send"
    broadcast = True
    treats = True
    needs_recipient = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        send = step.send
        assert send is not None
        template = checks.definition.templates.get(send.template)
        if template is None:
            checks.add(f"{path}.send.template", f"names no template of this journey ({send.template!r})")
        elif coupon_fields_used(template) and not _after_issue(step, checks):
            checks.add(
                f"{path}.send.template",
                f"template {send.template!r} shows {', '.join(coupon_fields_used(template))}: "
                "an issue_coupon step must come before this send",
            )
        if send.channel not in CHANNEL_CHOICES:
            checks.add(f"{path}.send.channel", f"must be one of {', '.join(CHANNEL_CHOICES)}")

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.send is not None
        definition = member.definition
        request = SendRequest(
            tenant_id=member.tenant_id,
            journey_key=definition.key,
            journey_run=f"{workflow.info().workflow_id}#{member.entry_number}",
            member_id=member.member_id,
            step_id=step.id,
            template=definition.templates[step.send.template],
            channel=step.send.channel,
            channels=definition.channels,
            frequency_cap=definition.frequency_cap,
            quiet_hours=definition.quiet_hours,
            coupon=member.coupon,
        )
        while not member.ended:
            try:
                outcome = await member.call(JourneyActivities.send, request)
            except ActivityError:
                member.count(step.id, "failed")
                return ""
            if outcome.status != "deferred" or outcome.until is None:
                member.count(step.id, outcome.status)
                return ""
            # Deferred, never dropped: wait for the end of the quiet hours, the next local day or
            # the next rate window, then ask again (a pause holds the member there too).
            member.count(step.id, "deferred")
            member.deferred(outcome.detail)
            await member.sleep_until(outcome.until)
            await member.unpaused()
        return ""

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        batch.route(due, step, recipient, tz)


def _after_issue(step: Step, checks: Checks) -> bool:
    """Whether an issue_coupon step comes before `step` in the definition (a member whose path
    jumped past it has no coupon: its coupon sends are skipped, see sending.py)."""
    for earlier in checks.definition.steps:
        if earlier is step:
            return False
        if earlier.issue_coupon is not None:
            return True
    return False
