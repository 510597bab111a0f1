"""What a step kind is: how it is validated, what it does for one member (the journey workflow)
and what it does for a batch of members (a cohort's plan), side by side in one class, so the two
shapes of a journey cannot drift apart.

The member side runs inside the workflow sandbox: it decides only from its arguments, the
workflow's clock and activity results (through `MemberRun`). The batch side is plain Python in an
activity, deciding for one due member at a time what the batch writes set-based (through
`BatchRun`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar
from zoneinfo import ZoneInfo

from temporalio.exceptions import ActivityError

from runtime.errors import Violations
from workflows.journeys.definition import EventMatch, JourneyDefinition, Step
from workflows.journeys.payloads import IssuedCoupon

if TYPE_CHECKING:
    from workflows.journeys.cohort.store import Due
    from workflows.journeys.sending import Recipient

_I = TypeVar("_I")
_O = TypeVar("_O")


@dataclass(frozen=True)
class Checks:
    """What a step's validation reports to: the definition, its violations, and `target`, which
    checks that a jump (field path, step id) goes to a later step."""

    definition: JourneyDefinition
    violations: Violations
    target: Callable[[str, str], None]

    def add(self, path: str, message: str) -> None:
        self.violations.add(path, message)


class MemberRun(Protocol):
    """The member workflow, as a step sees it."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def member_id(self) -> str: ...
    @property
    def definition(self) -> JourneyDefinition: ...
    @property
    def ended(self) -> bool:
        """The member converted or exited (a wait wakes up, a send stops trying)."""

    @property
    def enrolment_id(self) -> int: ...
    @property
    def entry_number(self) -> int: ...
    @property
    def split_arms(self) -> tuple[str, ...]:
        """The split arms the member took so far (`{step id}:{arm}`), in the order taken."""

    @property
    def coupon(self) -> IssuedCoupon | None:
        """The latest coupon an issue_coupon step gave the member in this run."""

    def keep_coupon(self, coupon: IssuedCoupon) -> None: ...

    async def call(self, method: Callable[[Any, _I], Awaitable[_O]], request: _I) -> _O: ...
    def count(self, step_id: str, what: str) -> None: ...
    async def sleep_until(self, until: dt.datetime) -> None: ...
    async def event_until(self, match: EventMatch, until: dt.datetime) -> bool:
        """Whether an event matching `match` comes (from now on) before `until`."""

    async def unpaused(self) -> None:
        """Returns once the member is not paused (or has left)."""

    def deferred(self, reason: str) -> None: ...
    def leave(self, detail: str) -> None:
        """Ends the walk through the steps, as the last step would: the member is still measured
        for its goal until the window ends (treated and holdout alike)."""


class BatchRun(Protocol):
    """A cohort batch's plan, as a step sees it."""

    @property
    def definition(self) -> JourneyDefinition: ...
    @property
    def now(self) -> dt.datetime: ...

    def count(self, step_id: str, what: str, n: int = 1) -> None: ...
    def go(self, member: str, position: int, due: dt.datetime, split_arm: str = "") -> None: ...
    def index(self, target: str, position: int) -> int: ...
    def leave(self, member: str) -> None:
        """Past the last step now (an exit step): measured for the goal like any member."""

    def tag(self, position: int, member: str) -> None: ...
    def route(self, due: Due, step: Step, recipient: Recipient, tz: ZoneInfo) -> None: ...
    def preferred_hour(self, member: str) -> int | None: ...


async def treat(
    member: MemberRun, step_id: str, method: Callable[[Any, _I], Awaitable[_O]], request: _I
) -> str:
    """An award or tag for the member: `done`, or `failed` once the call's retries gave up."""
    try:
        await member.call(method, request)
    except ActivityError:
        member.count(step_id, "failed")
        return ""
    member.count(step_id, "done")
    return ""


class StepKind:
    """One kind of step. `broadcast`: it has a batch form (a broadcast may use it); `treats`: it
    acts on the member (send, award, tag, coupon), so holdout members pass it untreated, counted
    `held_out`, in both shapes."""

    name: ClassVar[str]
    broadcast: ClassVar[bool] = False
    treats: ClassVar[bool] = False
    # Members at such a step need their contact data (zone, channels) read for the batch.
    needs_recipient: ClassVar[bool] = False

    def validate(self, step: Step, path: str, checks: Checks) -> None:
        raise NotImplementedError

    async def run(self, step: Step, member: MemberRun) -> str:
        """Runs the step for one member; the id of the step to go to, or '' for the next one."""
        raise NotImplementedError

    def plan(self, step: Step, batch: BatchRun, due: Due, recipient: Recipient, tz: ZoneInfo) -> None:
        """What the batch does with one due member at the step (only kinds with `broadcast`)."""
        raise NotImplementedError(f"a broadcast has no {self.name} step")
