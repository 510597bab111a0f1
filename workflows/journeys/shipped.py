"""The journeys MemberOps ships, as plain definitions (no code of their own): the worker stores them
for every configured tenant that has no version of them yet, and a tenant changes one by storing a
new version.

New-customer and win-back give real coupons (an issue_coupon step before the send that shows the
code). Coupon thresholds follow the seeds' subsidy rule: a member's threshold sits at their own
spending power (the `average_order_amount` band), so each band is asked for an order it can reach;
the coupon templates carry those bands (`tag_thresholds`), and each coupon the threshold of its
member's band when it was issued. The templates (SHIPPED_COUPON_TEMPLATES) are created for every
tenant by `python -m workflows.dispatcher` (as `make up` runs it), before anything is activated.
"""

from __future__ import annotations

import dataclasses

from memberops.audience.v1 import audience_pb2
from memberops.tasks.v1 import coupons_pb2

from workflows.journeys.definition import (
    AudienceEntry,
    Broadcast,
    ChannelPolicy,
    Entry,
    EventMatch,
    Goal,
    IssueCoupon,
    JourneyDefinition,
    QuietHours,
    Send,
    Step,
    Template,
    Wait,
    WaitUntilHour,
    duration,
)

# Threshold (minor units) per average-order-amount band; members with none: 100 (10,000 minor).
COUPON_THRESHOLDS = coupons_pb2.TagThresholds(
    dimension="average_order_amount",
    thresholds={"lt_100": 5_000, "100_200": 10_000, "200_500": 20_000, "500_plus": 50_000},
)


def _coupon_template(
    template_id: str, name: str, off_minor: int, per_member: int
) -> coupons_pb2.CouponTemplate:
    return coupons_pb2.CouponTemplate(
        template_id=template_id,
        display_name=name,
        amount_off=coupons_pb2.AmountOff(amount_minor=off_minor),
        threshold_minor=10_000,
        tag_thresholds=COUPON_THRESHOLDS,
        # Long enough for the journey's own reminder, sent 7 days after the coupon.
        valid_days=14,
        per_member_limit=per_member,
    )


# New customers once each (the journey enrols a member once); win-back once per return.
NEW_CUSTOMER_COUPON = _coupon_template("new-customer-20-off", "New customer: 20 off", 2_000, 1)
WIN_BACK_COUPON = _coupon_template("win-back-30-off", "Win-back: 30 off", 3_000, 12)
SHIPPED_COUPON_TEMPLATES = (NEW_CUSTOMER_COUPON, WIN_BACK_COUPON)

NEW_CUSTOMER = JourneyDefinition(
    key="new-customer",
    name="New-customer nurturing",
    entry=Entry(event=EventMatch(kind="first_order")),
    steps=(
        Step(id="welcome", send=Send(template="welcome")),
        Step(id="wait-3d", wait=Wait(duration="3d")),
        # A second order before now has already ended the journey (the goal).
        Step(id="issue-coupon", issue_coupon=IssueCoupon(template=NEW_CUSTOMER_COUPON.template_id)),
        Step(id="coupon", send=Send(template="coupon")),
        Step(id="wait-7d", wait=Wait(duration="7d")),
        Step(id="reminder-hour", wait_until_hour=WaitUntilHour(hour=10)),
        Step(id="reminder", send=Send(template="reminder", channel="fallback")),
    ),
    templates={
        "welcome": Template(
            subject="Welcome, {nickname}",
            body="Hi {nickname}, thank you for your first order. Your member benefits start today.",
        ),
        "coupon": Template(
            subject="A coupon for your next order",
            body="Hi {nickname}, take {coupon_discount} off your next order of {coupon_threshold} or more "
            "with code {coupon_code}, valid until {coupon_valid_until}.",
        ),
        "reminder": Template(
            subject="Your coupon is waiting",
            body="Hi {nickname}, your coupon {coupon_code} for orders of {coupon_threshold} or more "
            "expires after {coupon_valid_until}.",
        ),
    },
    goal=Goal(event=EventMatch(kind="order"), attribution="14d"),
    holdout_percent=5,
    quiet_hours=QuietHours(start="21:00", end="09:00"),
    channels=ChannelPolicy(preferred="member", fallback=("app_push", "sms", "email", "wecom")),
)

# Members enter the dynamic audience `win-back`: RFM `important_win_back` or `important_retention`,
# or lifecycle `silent` (WIN_BACK_AUDIENCE below; `make up` creates it for each tenant lacking it).
WIN_BACK = JourneyDefinition(
    key="win-back",
    name="Win-back",
    entry=Entry(audience=AudienceEntry(audience="win-back")),
    steps=(
        Step(id="offer-hour", wait_until_hour=WaitUntilHour(hour=10)),
        Step(id="issue-offer", issue_coupon=IssueCoupon(template=WIN_BACK_COUPON.template_id)),
        Step(id="offer", send=Send(template="offer", channel="preferred")),
        Step(id="wait-5d", wait=Wait(duration="5d")),
        # Escalate: the next channel of the fallback order, SMS before e-mail.
        Step(id="escalate", send=Send(template="last_call", channel="fallback")),
        Step(id="wait-7d", wait=Wait(duration="7d")),
    ),
    templates={
        "offer": Template(
            subject="We miss you, {nickname}",
            body="Hi {nickname}, come back for {coupon_discount} off any order of {coupon_threshold} or "
            "more with code {coupon_code}, valid until {coupon_valid_until}.",
        ),
        "last_call": Template(
            subject="Last days for your {coupon_discount} off",
            body="Hi {nickname}, your code {coupon_code} for {coupon_discount} off orders of "
            "{coupon_threshold} or more ends after {coupon_valid_until}.",
        ),
    },
    goal=Goal(event=EventMatch(kind="order"), attribution="21d"),
    holdout_percent=10,
    quiet_hours=QuietHours(start="21:00", end="09:00"),
    channels=ChannelPolicy(preferred="app_push", fallback=("sms", "email", "wecom")),
)

# A broadcast: every member of a snapshot of the audience `announcement` (created by the operator,
# see docs/journeys.md), in one cohort workflow. Quiet hours defer each member to 09:00 in their zone.
ANNOUNCEMENT = JourneyDefinition(
    key="announcement",
    name="Announcement",
    entry=Entry(broadcast=Broadcast(audience="announcement")),
    steps=(
        Step(id="announce", send=Send(template="announce", channel="preferred")),
        Step(id="wait-2d", wait=Wait(duration="2d")),
        Step(id="reminder", send=Send(template="reminder", channel="fallback")),
    ),
    templates={
        "announce": Template(
            subject="News for you, {nickname}", body="Hi {nickname}, our spring sale starts today."
        ),
        "reminder": Template(
            subject="Two days left", body="Hi {nickname}, the spring sale ends in two days."
        ),
    },
    goal=Goal(event=EventMatch(kind="order"), attribution="7d"),
    holdout_percent=5,
    quiet_hours=QuietHours(start="21:00", end="09:00"),
)

SHIPPED: tuple[JourneyDefinition, ...] = (NEW_CUSTOMER, WIN_BACK, ANNOUNCEMENT)


def _tag(dimension: str, *values: str) -> audience_pb2.AudienceRule:
    return audience_pb2.AudienceRule(
        tag=audience_pb2.TagCondition(dimension=dimension, match=audience_pb2.TAG_MATCH_ANY_OF, values=values)
    )


# The audience win-back enters from (dynamic: members enter and leave as their tags change).
WIN_BACK_AUDIENCE = audience_pb2.Audience(
    audience_id="win-back",
    display_name="Win-back",
    description="RFM important win-back or important retention, or lifecycle silent (shipped).",
    dynamic=True,
    rule=audience_pb2.AudienceRule(
        any=audience_pb2.AudienceRuleList(
            rules=[
                _tag("rfm_segment", "important_win_back", "important_retention"),
                _tag("lifecycle", "silent"),
            ]
        )
    ),
)


def scaled(definition: JourneyDefinition, factor: int) -> JourneyDefinition:
    """The journey with every duration (waits, timeouts, the attribution window, the re-entry
    cooldown) divided by `factor` (at least one second each), for trying journeys end to end: with
    `factor` 1440 a day lasts a minute. Member-local clock times mean nothing at such a scale, so a
    wait until a local hour becomes a wait of one scaled hour and quiet hours are dropped. The max
    entry delay is not scaled: it is how late a fact may reach MemberOps (the backend's delivery),
    real time that no journey clock changes; scaled, the demo's order of the day (paid at midnight)
    would be history within seconds."""
    if factor <= 1:
        return definition

    def shorter(text: str) -> str:
        return f"{max(1, int(duration(text).total_seconds()) // factor)}s" if text else text

    def step(s: Step) -> Step:
        if s.wait is not None:
            return dataclasses.replace(s, wait=Wait(duration=shorter(s.wait.duration)))
        if s.wait_until_hour is not None:
            return dataclasses.replace(s, wait_until_hour=None, wait=Wait(duration=shorter("1h")))
        if s.wait_for_event is not None:
            wait = dataclasses.replace(s.wait_for_event, timeout=shorter(s.wait_for_event.timeout))
            return dataclasses.replace(s, wait_for_event=wait)
        return s

    goal = definition.goal
    return dataclasses.replace(
        definition,
        steps=tuple(step(s) for s in definition.steps),
        goal=None if goal is None else dataclasses.replace(goal, attribution=shorter(goal.attribution)),
        reentry=dataclasses.replace(definition.reentry, cooldown=shorter(definition.reentry.cooldown)),
        quiet_hours=None,
    )
