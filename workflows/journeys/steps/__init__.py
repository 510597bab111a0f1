"""Step kinds, each defined once: validation, member execution and batch execution (see `base`).

`of(step)` is the kind of a step; `KINDS` every kind by name, in the order of the `Step` fields.
"""

from __future__ import annotations

from workflows.journeys.definition import Step
from workflows.journeys.steps.add_tag import AddTag
from workflows.journeys.steps.award import Award
from workflows.journeys.steps.base import BatchRun, Checks, MemberRun, StepKind
from workflows.journeys.steps.branch import Branch
from workflows.journeys.steps.exit import Exit
from workflows.journeys.steps.issue_coupon import IssueCoupon
from workflows.journeys.steps.send import Send
from workflows.journeys.steps.split import Split
from workflows.journeys.steps.wait import Wait
from workflows.journeys.steps.wait_for_event import WaitForEvent
from workflows.journeys.steps.wait_until_hour import WaitUntilHour

KINDS: dict[str, StepKind] = {
    kind.name: kind
    for kind in (
        Wait(),
        WaitUntilHour(),
        WaitForEvent(),
        Branch(),
        Split(),
        Send(),
        Award(),
        AddTag(),
        Exit(),
        IssueCoupon(),
    )
}


def of(step: Step) -> StepKind:
    """The kind of a step whose one kind field is set (a validated definition's steps are)."""
    return KINDS[step.kind]


__all__ = ["KINDS", "BatchRun", "Checks", "MemberRun", "StepKind", "of"]
