"""`split`: arms by percent, drawn from the member's bucket of (journey, step), so a member takes
the same arm in a member journey, in a cohort, and in a retried batch.

Runs recorded before the `split-by-bucket` patch drew `workflow.random()`; their replays still do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from temporalio import workflow

from runtime.buckets import BUCKETS, bucket
from workflows.journeys.activities import JourneyActivities
from workflows.journeys.definition import NAME, SplitArm, Step
from workflows.journeys.payloads import SplitRequest
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient

# Patch (see `workflow.patched`): member journeys split by bucket and record their arm.
SPLIT_BY_BUCKET = "split-by-bucket"


def split_salt(journey_key: str, step_id: str) -> str:
    return f"split:{journey_key}:{step_id}"


def split_arm(journey_key: str, step: Step, member_id: str) -> SplitArm:
    """The member's arm: arms own consecutive runs of the 10,000 buckets, `percent` hundredths
    each, in their order (a valid split's percents add up to 100, so every bucket has an arm)."""
    assert step.split is not None
    point, low = bucket(split_salt(journey_key, step.id), member_id), 0
    for arm in step.split.arms:
        low += arm.percent * BUCKETS // 100
        if point < low:
            return arm
    return step.split.arms[-1]


def recorded(step_id: str, arm: str) -> str:
    """How a member's arm is recorded (enrolments.split_arms, cohort_members.split_arms)."""
    return f"{step_id}:{arm}"


class Split(StepKind):
    name = "split"
    broadcast = True

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        split, at = step.split, f"{path}.split"
        assert split is not None
        if len(split.arms) < 2:
            checks.add(f"{at}.arms", "a split has at least two arms")
        names: set[str] = set()
        for j, arm in enumerate(split.arms):
            if not NAME.match(arm.name) or arm.name in names:
                checks.add(f"{at}.arms[{j}].name", "must be a unique name such as a or reminder_first")
            names.add(arm.name)
            if not 1 <= arm.percent <= 99:
                checks.add(f"{at}.arms[{j}].percent", "must be 1-99")
            checks.target(f"{at}.arms[{j}].next", arm.next)
        if split.arms and sum(arm.percent for arm in split.arms) != 100:
            checks.add(f"{at}.arms", "percents must add up to 100")

    async def run(self, step: Step, member: MemberRun) -> str:
        assert step.split is not None
        if workflow.patched(SPLIT_BY_BUCKET):
            arm = split_arm(member.definition.key, step, member.member_id)
            await member.call(
                JourneyActivities.record_split,
                SplitRequest(member.tenant_id, member.enrolment_id, recorded(step.id, arm.name)),
            )
            member.count(step.id, f"arm:{arm.name}")
            return arm.next
        draw = workflow.random().randint(1, 100)
        for old in step.split.arms:
            draw -= old.percent
            if draw <= 0:
                member.count(step.id, f"arm:{old.name}")
                return old.next
        return ""

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        arm = split_arm(batch.definition.key, step, due.member_id)
        batch.count(step.id, f"arm:{arm.name}")
        batch.go(
            due.member_id, batch.index(arm.next, due.position), due.due_time, recorded(step.id, arm.name)
        )
