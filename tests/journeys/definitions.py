"""Journey definitions for the service tests: one that sets every field of the dataclasses."""

from __future__ import annotations

import dataclasses

from workflows.journeys.definition import (
    AddTag,
    Award,
    Branch,
    ChannelPolicy,
    Condition,
    Entry,
    EventMatch,
    Exit,
    Goal,
    JourneyDefinition,
    QuietHours,
    Reentry,
    Send,
    Split,
    SplitArm,
    Step,
    TagCondition,
    TagField,
    Template,
    Wait,
    WaitForEvent,
    WaitUntilHour,
)

# Every field set to a value other than its default (valid, for a triggered journey).
EVERY_FIELD = JourneyDefinition(
    key="every-field",
    name="Every field",
    entry=Entry(event=EventMatch(kind="tag_added", dimension="lifecycle", values=("active", "silent"))),
    steps=(
        Step(id="wait-1d", wait=Wait(duration="1d12h")),
        Step(id="hour", wait_until_hour=WaitUntilHour(hour=20, minute=30, preferred=True)),
        Step(
            id="order",
            wait_for_event=WaitForEvent(
                event=EventMatch(kind="order", min_amount_minor=5000),
                timeout="3d",
                on_event="done",
                on_timeout="vip",
            ),
        ),
        Step(
            id="vip",
            branch=Branch(
                condition=Condition(tag=TagCondition(dimension="rfm_segment", values=("important_value",))),
                if_true="split",
                if_false="points",
            ),
        ),
        Step(
            id="split",
            split=Split(arms=(SplitArm("a", 30, next="points"), SplitArm("b", 70, next="tagged"))),
        ),
        Step(id="audience", branch=Branch(condition=Condition(audience="win-back"))),
        Step(id="points", award=Award(points=100, expiry_days=30)),
        Step(id="tagged", add_tag=AddTag(dimension="campaign", value="spring")),
        Step(id="hello", send=Send(template="hello", channel="sms")),
        Step(id="done", exit=Exit(reason="converted early")),
    ),
    templates={
        "hello": Template(
            body="Hi {nickname} from {city}, spend {threshold}",
            subject="Hello {nickname}",
            tag_fields=(
                TagField(
                    name="threshold",
                    dimension="average_order_amount",
                    texts={"lt_100": "50", "500_plus": "500"},
                    default="100",
                ),
            ),
        ),
        "bye": Template(body="Bye"),
    },
    goal=Goal(event=EventMatch(kind="first_order", min_amount_minor=100), attribution="21d"),
    exit_on=(
        EventMatch(kind="audience_exited", audience="win-back"),
        EventMatch(kind="tag_removed", dimension="x"),
    ),
    holdout_percent=10,
    reentry=Reentry(policy="after_exit", cooldown="30d"),
    frequency_cap=5,
    quiet_hours=QuietHours(start="22:00", end="08:00"),
    channels=ChannelPolicy(preferred="email", fallback=()),
    max_entry_delay="2h",
)


def keyed(definition: JourneyDefinition, key: str) -> JourneyDefinition:
    return dataclasses.replace(definition, key=key)
