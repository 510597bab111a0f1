"""From feed entries to member events, and which journeys an event enters or wakes (no I/O).

Every event's id is its feed entry (`tagging:{cursor}`, `audience:{cursor}`): unique, and the same
each time the entry is read again, so a replayed entry enrols nobody twice and a run takes it once.

An event happened at its fact's own time (`occur_time`: an order's paid time, a tag change's or an
audience entry's time as its feed dates it), not when its entry was written: an event older than a
journey's `max_entry_delay` is history and enrols nobody (`too_old`). An entry an import marked
`backfilled` is history whatever its time: it enrols nobody and reaches no run or cohort.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from memberops.audience.v1 import audience_service_pb2
from memberops.tagging.v1 import feed_pb2

from runtime.tagging_feed import (
    MemberChanged,
    OrderRecorded,
    TagChange,
    TagChanged,
    read_payload,
)
from workflows.journeys.definition import EventMatch, JourneyDefinition, duration
from workflows.journeys.payloads import MemberEvent, matches

AUDIENCE_PREFIX = "audiences/"


@dataclass(frozen=True)
class FeedEvent:
    """A member event with where it came from: which feed, and when it was written there."""

    member_id: str
    event: MemberEvent
    feed: str
    time: dt.datetime
    # History an import loaded (tagging's `FeedEntry.backfilled`): no journey reacts to it.
    backfilled: bool = False
    # The trace context of the call that wrote the entry (tagging's `FeedEntry.traceparent`).
    traceparent: str = ""


def _time(stamp: object) -> dt.datetime:
    assert hasattr(stamp, "ToDatetime")
    value: dt.datetime = stamp.ToDatetime(tzinfo=dt.UTC)
    return value


# The kinds of event each kind of tagging entry can be.
ENTRY_EVENTS = {
    feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED: frozenset({"order", "first_order"}),
    feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED: frozenset({"registered"}),
    feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED: frozenset({"tag_added", "tag_removed"}),
}

_TAG_EVENTS = {TagChange.ADDED: "tag_added", TagChange.REMOVED: "tag_removed"}


def kinds(definitions: Sequence[JourneyDefinition]) -> frozenset[str]:
    """Every event kind the journeys enter on or wait for (an order wait takes first orders too)."""
    matches_ = [
        *(d.entry.event for d in definitions if d.entry.event is not None),
        *(EventMatch(kind="audience_entered") for d in definitions if d.entry.audience is not None),
        *(d.goal.event for d in definitions if d.goal is not None),
        *(m for d in definitions for m in d.exit_on),
        *(s.wait_for_event.event for d in definitions for s in d.steps if s.wait_for_event is not None),
    ]
    found = {m.kind for m in matches_}
    return frozenset(found | ({"first_order"} if "order" in found else set()))


def tagging_event(entry: feed_pb2.FeedEntry, wanted: frozenset[str] | None = None) -> FeedEvent | None:
    """Orders (the member's first one is `first_order`), registrations (a member's first stored
    revision) and tag changes; other entries are not events a journey takes. With `wanted`, entries
    that can be none of those kinds are not even parsed."""
    if wanted is not None and not ENTRY_EVENTS.get(entry.kind, frozenset()) & wanted:
        return None
    payload = read_payload(entry)
    event_id = f"tagging:{entry.cursor}"
    time = _time(entry.create_time)
    event: MemberEvent | None = None
    if isinstance(payload, OrderRecorded):
        # Entries written before tagging numbered orders have no number: they count as orders.
        event = MemberEvent(
            kind="first_order" if payload.member_order_number == 1 else "order",
            subject_id=entry.subject_id,
            amount_minor=payload.amount_minor,
            occur_time=payload.paid_time or time,
            event_id=event_id,
        )
    elif isinstance(payload, MemberChanged) and payload.registered:
        event = MemberEvent(kind="registered", occur_time=payload.occur_time or time, event_id=event_id)
    elif isinstance(payload, TagChanged) and payload.change in _TAG_EVENTS:
        # Entries written before tagging dated its changes happened when they were written.
        event = MemberEvent(
            kind=_TAG_EVENTS[payload.change],
            subject_id=payload.dimension,
            dimension=payload.dimension,
            value=payload.value,
            occur_time=payload.occur_time or time,
            event_id=event_id,
        )
    if event is None:
        return None
    return FeedEvent(entry.member_id, event, "tagging", time, entry.backfilled, entry.traceparent)


def audience_event(entry: audience_service_pb2.AudienceFeedEntry) -> FeedEvent | None:
    if entry.change == audience_service_pb2.AUDIENCE_CHANGE_ENTERED:
        kind = "audience_entered"
    elif entry.change == audience_service_pb2.AUDIENCE_CHANGE_EXITED:
        kind = "audience_exited"
    else:
        return None
    time = _time(entry.create_time)
    audience = entry.audience.removeprefix(AUDIENCE_PREFIX)
    event = MemberEvent(
        kind=kind,
        subject_id=audience,
        audience=audience,
        # Entries written before audience dated them happened when they were written.
        occur_time=_time(entry.occur_time) if entry.HasField("occur_time") else time,
        event_id=f"audience:{entry.cursor}",
    )
    return FeedEvent(entry.member_id, event, "audience", time, entry.backfilled)


def enters(definition: JourneyDefinition, event: MemberEvent) -> bool:
    """Whether the event enrols a member into the journey (broadcasts are not the dispatcher's)."""
    entry = definition.entry
    if entry.event is not None:
        return matches(entry.event, event)
    if entry.audience is not None:
        return event.kind == "audience_entered" and event.audience == entry.audience.audience
    return False


def too_old(definition: JourneyDefinition, event: MemberEvent, now: dt.datetime) -> bool:
    """Whether the event happened longer than the journey's `max_entry_delay` before `now`: it is
    history (an order loaded from last year, a tag change such an order made) and enrols nobody.
    An event without a time of its own is news."""
    return event.occur_time is not None and event.occur_time < now - duration(definition.max_entry_delay)


def wakes(definition: JourneyDefinition, event: MemberEvent) -> bool:
    """Whether a running member of the journey could take the event: its goal, an exit criterion,
    or what one of its steps waits for."""
    wanted = [
        *((definition.goal.event,) if definition.goal is not None else ()),
        *definition.exit_on,
        *(step.wait_for_event.event for step in definition.steps if step.wait_for_event is not None),
    ]
    return any(matches(match, event) for match in wanted)


def reaches_cohort(definition: JourneyDefinition, event: MemberEvent) -> bool:
    """Whether an open cohort of the journey (a broadcast) takes the event of one of its members:
    its goal or an exit criterion (a cohort waits for no event in its steps)."""
    wanted = [*((definition.goal.event,) if definition.goal is not None else ()), *definition.exit_on]
    return any(matches(match, event) for match in wanted)


def follows(definition: JourneyDefinition) -> bool:
    """Whether a dispatcher follows the journey: members enter it by an event or an audience."""
    return definition.entry.event is not None or definition.entry.audience is not None


def entry_time(entry: feed_pb2.FeedEntry | audience_service_pb2.AudienceFeedEntry) -> dt.datetime:
    return _time(entry.create_time)


def merge(
    tagging: Sequence[dt.datetime], tagging_full: bool, audience: Sequence[dt.datetime], audience_full: bool
) -> tuple[int, int]:
    """How many entries of each page (given their write times) to dispatch this round, so that the
    two feeds are taken in time order: while a page came full (more of that feed waits), entries
    of the other feed written after that page's last entry wait for the next round. The page that
    sets the limit is always taken whole, so every round makes progress. Returns the prefix
    lengths."""
    pages = [(tagging, tagging_full), (audience, audience_full)]
    limits = [(page[-1], i) for i, (page, full) in enumerate(pages) if full and page]
    if not limits:
        return len(tagging), len(audience)
    limit, whole = min(limits)

    def prefix(i: int) -> int:
        page = pages[i][0]
        if i == whole:
            return len(page)
        return next((n for n, time in enumerate(page) if time > limit), len(page))

    return prefix(0), prefix(1)
