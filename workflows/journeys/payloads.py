"""Inputs and results of the journey workflow and its activities (Temporal-serialisable dataclasses)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from workflows.journeys.definition import (
    AddTag,
    Award,
    ChannelPolicy,
    Condition,
    EventMatch,
    IssueCoupon,
    JourneyDefinition,
    QuietHours,
    Template,
)


@dataclass(frozen=True)
class JourneyInput:
    """What starts one member's journey: `temporal workflow start --input` takes this as JSON."""

    tenant_id: str
    journey_key: str
    member_id: str
    # 0: the live version when the workflow starts (the version it read is kept for the run); another
    # version is refused unless it is the live one.
    version: int = 0
    # The event that enrolled the member (`MemberEvent.event_id`, set by the dispatcher): it
    # enrols the member once, and signalled again it is not an event of this run.
    entry_event_id: str = ""
    # When the entry fact happened (the entry event's occur_time, set by the dispatcher): the goal
    # window and enrolments.enter_time start at min(now, entry_time), so an order placed between
    # the fact and a late enrolment still converts. None: the workflow's start.
    entry_time: dt.datetime | None = None


@dataclass(frozen=True)
class LoadRequest:
    tenant_id: str
    journey_key: str
    version: int


@dataclass(frozen=True)
class LoadedDefinition:
    version: int
    definition: JourneyDefinition


@dataclass(frozen=True)
class EnrolRequest:
    tenant_id: str
    journey_key: str
    version: int
    member_id: str
    workflow_id: str
    run_id: str
    holdout_percent: int
    entry_event_id: str = ""


@dataclass(frozen=True)
class Enrolment:
    accepted: bool
    enrolment_id: int = 0
    entry_number: int = 0
    holdout: bool = False
    reason: str = ""


@dataclass(frozen=True)
class EnterRequest:
    """Loads the definition version and enrols the member, in one activity."""

    tenant_id: str
    journey_key: str
    version: int
    member_id: str
    workflow_id: str
    run_id: str
    entry_event_id: str = ""
    # When the entry fact happened (JourneyInput.entry_time): the enrolment's enter_time is
    # min(now, entry_time), the start of the goal's window the workflow keeps too.
    entry_time: dt.datetime | None = None


@dataclass(frozen=True)
class Entered:
    version: int
    definition: JourneyDefinition
    enrolment: Enrolment


@dataclass(frozen=True)
class MemberRef:
    tenant_id: str
    member_id: str


@dataclass(frozen=True)
class LocalTimeRequest:
    tenant_id: str
    member_id: str
    hour: int
    minute: int
    # The member's `preferred_send_hour` tag decides the hour; `hour` for members without one.
    preferred: bool = False


@dataclass(frozen=True)
class SplitRequest:
    """Records the arm a split gave the member (`{step id}:{arm}`) on its enrolment, once."""

    tenant_id: str
    enrolment_id: int
    split_arm: str


@dataclass(frozen=True)
class ConditionRequest:
    tenant_id: str
    member_id: str
    condition: Condition


@dataclass(frozen=True)
class IssuedCoupon:
    """What an issue_coupon step got: a coupon (its code and the terms later sends show), or why
    the tasks service refused one (`refused`: out of stock, the member at the template's limit, a
    retired template), which the journey counts and goes on from."""

    code: str = ""
    # The member's own threshold and the discount, in minor units; `discount` as a message shows
    # it (`20`, `15%`, `free shipping`).
    threshold_minor: int = 0
    discount: str = ""
    valid_until: dt.datetime | None = None
    refused: str = ""


@dataclass(frozen=True)
class IssueCouponRequest:
    tenant_id: str
    journey_key: str
    enrolment_id: int
    member_id: str
    step_id: str
    issue_coupon: IssueCoupon
    # The member's report arm (`treated`, or its split arms so far, see steps/issue_coupon.py).
    arm: str


@dataclass(frozen=True)
class SendRequest:
    tenant_id: str
    journey_key: str
    # `{workflow id}#{entry number}`: with member and step, the message log's key.
    journey_run: str
    member_id: str
    step_id: str
    template: Template
    channel: str
    channels: ChannelPolicy
    frequency_cap: int
    quiet_hours: QuietHours | None = None
    # The enrolment's latest issued coupon, for the template's coupon fields (None: none issued).
    coupon: IssuedCoupon | None = None


@dataclass(frozen=True)
class SendOutcome:
    """sent | skipped (opted out, unreachable, no channel configured) | deferred (until `until`:
    quiet hours, frequency cap, rate limit) | failed (rejected for good) | unknown (the provider may
    have it; never sent again)."""

    status: str
    channel: str = ""
    detail: str = ""
    until: dt.datetime | None = None


@dataclass(frozen=True)
class AwardRequest:
    tenant_id: str
    journey_key: str
    enrolment_id: int
    member_id: str
    step_id: str
    award: Award


@dataclass(frozen=True)
class TagRequest:
    tenant_id: str
    journey_key: str
    member_id: str
    step_id: str
    add_tag: AddTag


@dataclass(frozen=True)
class FinishRequest:
    tenant_id: str
    enrolment_id: int
    state: str
    convert_time: dt.datetime | None
    gmv_minor: int
    # For the journey report: the arms the member's splits gave it (`{step id}:{arm}`) and its
    # funnel per step ({"welcome": {"entered": 1, "sent": 1}}, counters that are not zero).
    split_arms: tuple[str, ...] = ()
    step_figures: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberEvent:
    """An event of the member, signalled to their journey (by the dispatcher, or by an operator)."""

    kind: str
    subject_id: str = ""
    dimension: str = ""
    value: str = ""
    audience: str = ""
    amount_minor: int = 0
    occur_time: dt.datetime | None = None
    # Unique per event (the dispatcher uses the feed entry: `tagging:{cursor}`): a run takes an
    # event id once, so a replayed feed entry changes nothing. Empty: no deduplication.
    event_id: str = ""


def matches(match: EventMatch, event: MemberEvent) -> bool:
    """Whether `event` is one `match` describes (a first order is an order too)."""
    kinds = {match.kind} | ({"first_order"} if match.kind == "order" else set())
    if event.kind not in kinds or event.amount_minor < match.min_amount_minor:
        return False
    if match.kind.startswith("tag_"):
        return event.dimension == match.dimension and (not match.values or event.value in match.values)
    if match.kind.startswith("audience_"):
        return event.audience == match.audience
    return True


@dataclass(frozen=True)
class StepFigures:
    step_id: str
    entered: int = 0
    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    failed: int = 0
    # The provider may have it (see the message log); never sent again.
    unknown: int = 0
    # Send, award or tag steps a holdout member passed without being treated.
    held_out: int = 0
    # Awards and tags made.
    done: int = 0
    # The arm a split step sent the member down.
    arm: str = ""


@dataclass(frozen=True)
class Funnel:
    """What the `funnel` query and the workflow's result report for one member."""

    journey_key: str
    version: int
    member_id: str
    # enrolling | not_enrolled | active | paused | completed | converted | exited | stopped
    state: str
    arm: str = ""
    current_step: str = ""
    steps: tuple[StepFigures, ...] = ()
    converted: bool = False
    gmv_minor: int = 0
    enter_time: dt.datetime | None = None
    convert_time: dt.datetime | None = None
    detail: str = ""
    deferrals: dict[str, int] = field(default_factory=dict)
