"""Feed entries as member events, and the order in which a round takes the two feeds (no servers)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from memberops.audience.v1 import audience_service_pb2
from memberops.tagging.v1 import feed_pb2

from workflows.dispatcher import events
from workflows.journeys.definition import Broadcast, Entry, EventMatch, Goal
from workflows.journeys.payloads import MemberEvent
from workflows.journeys.shipped import NEW_CUSTOMER, WIN_BACK, scaled

T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(moment: dt.datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def order_entry(cursor: str, number: int | None, amount: int = 9_800) -> feed_pb2.FeedEntry:
    entry = feed_pb2.FeedEntry(
        cursor=cursor,
        kind=feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED,
        member_id="m-1",
        subject_id=f"o-{cursor}",
        create_time=stamp(T0),
    )
    entry.order_recorded.order.amount_minor = amount
    if number:
        entry.order_recorded.member_order_number = number
    return entry


def test_orders_are_first_orders_by_their_number_and_carry_their_entry_as_id() -> None:
    first = events.tagging_event(order_entry("10-1", 1))
    second = events.tagging_event(order_entry("11-1", 2, 12_345))
    unnumbered = events.tagging_event(order_entry("12-1", None))
    assert first is not None and second is not None and unnumbered is not None
    assert (first.event.kind, first.event.event_id, first.event.subject_id) == (
        "first_order",
        "tagging:10-1",
        "o-10-1",
    )
    assert (second.event.kind, second.event.amount_minor) == ("order", 12_345)
    assert unnumbered.event.kind == "order"
    assert events.enters(NEW_CUSTOMER, first.event) and not events.enters(NEW_CUSTOMER, second.event)
    # Either order is new-customer's goal (a first order is an order too).
    assert events.wakes(NEW_CUSTOMER, first.event) and events.wakes(NEW_CUSTOMER, second.event)


def test_registrations_tag_changes_and_audience_changes() -> None:
    registered = feed_pb2.FeedEntry(
        cursor="1-1", kind=feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, member_id="m-1"
    )
    registered.member_changed.revision = 1
    changed = feed_pb2.FeedEntry(cursor="1-2", kind=feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, member_id="m-1")
    changed.member_changed.revision = 2
    tag = feed_pb2.FeedEntry(cursor="1-3", kind=feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED, member_id="m-1")
    tag.tag_changed.MergeFrom(
        feed_pb2.TagChanged(dimension="lifecycle", value="silent", change=feed_pb2.TAG_CHANGE_ADDED)
    )
    refund = feed_pb2.FeedEntry(cursor="1-4", kind=feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED, member_id="m-1")
    found = [events.tagging_event(e) for e in (registered, changed, tag, refund)]
    assert [None if f is None else f.event.kind for f in found] == ["registered", None, "tag_added", None]
    assert found[2] is not None and (found[2].event.dimension, found[2].event.value) == (
        "lifecycle",
        "silent",
    )
    entered = events.audience_event(
        audience_service_pb2.AudienceFeedEntry(
            cursor="7-1",
            change=audience_service_pb2.AUDIENCE_CHANGE_ENTERED,
            audience="audiences/win-back",
            member_id="m-1",
        )
    )
    assert entered is not None and entered.event.event_id == "audience:7-1"
    assert events.enters(WIN_BACK, entered.event) and not events.wakes(WIN_BACK, entered.event)


def test_a_full_page_holds_back_the_other_feeds_later_entries() -> None:
    # Tagging came full up to t=5: audience entries after t=5 wait for the next round.
    assert events.merge([at(1), at(3), at(5)], True, [at(2), at(6), at(7)], False) == (3, 1)
    # Neither page full: both are taken whole.
    assert events.merge([at(1), at(9)], False, [at(2), at(6)], False) == (2, 2)
    # Both full: the page that ends first sets the limit and is taken whole.
    assert events.merge([at(1), at(9)], True, [at(2), at(6)], True) == (1, 2)
    # A page whose times are not monotonic still makes progress when it sets the limit.
    assert events.merge([at(5), at(4)], True, [at(1)], False) == (2, 1)
    assert events.merge([], False, [at(1)], True) == (0, 1)


def test_an_event_happened_when_its_fact_did_else_when_its_entry_was_written() -> None:
    """Orders at their paid time; tag changes, registrations and audience changes at the time their
    feed gives them; entries written before the feeds dated them, at their write time."""
    paid = order_entry("1-1", 1)
    paid.order_recorded.order.paid_time.CopyFrom(stamp(at(-86_400 * 200)))
    tag = feed_pb2.FeedEntry(
        cursor="2-1", kind=feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED, member_id="m-1", create_time=stamp(T0)
    )
    tag.tag_changed.dimension, tag.tag_changed.value = "lifecycle", "silent"
    tag.tag_changed.change = feed_pb2.TAG_CHANGE_ADDED
    undated_tag = feed_pb2.FeedEntry()
    undated_tag.CopyFrom(tag)
    tag.tag_changed.occur_time.CopyFrom(stamp(at(-3_600)))
    registered = feed_pb2.FeedEntry(
        cursor="3-1", kind=feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, member_id="m-1", create_time=stamp(T0)
    )
    registered.member_changed.revision = 1
    undated_registration = feed_pb2.FeedEntry()
    undated_registration.CopyFrom(registered)
    registered.member_changed.occur_time.CopyFrom(stamp(at(-86_400 * 400)))
    happened = [
        found.event.occur_time if (found := events.tagging_event(entry)) is not None else None
        for entry in (paid, tag, undated_tag, registered, undated_registration)
    ]
    assert happened == [at(-86_400 * 200), at(-3_600), T0, at(-86_400 * 400), T0]

    entered = audience_service_pb2.AudienceFeedEntry(
        cursor="4-1",
        change=audience_service_pb2.AUDIENCE_CHANGE_ENTERED,
        audience="audiences/win-back",
        member_id="m-1",
        create_time=stamp(T0),
    )
    undated = events.audience_event(entered)
    entered.occur_time.CopyFrom(stamp(at(-60)))
    dated = events.audience_event(entered)
    assert undated is not None and dated is not None
    assert (undated.event.occur_time, dated.event.occur_time) == (T0, at(-60))
    # The feeds are merged by write time, whatever the facts' own times.
    assert dated.time == T0


def test_an_event_older_than_the_max_entry_delay_is_history() -> None:
    """New-customer's max_entry_delay is a day: an order paid two days ago enrols nobody, one paid
    an hour ago does; an event without a time of its own is news."""
    assert NEW_CUSTOMER.max_entry_delay == "1d"

    def order(paid: dt.datetime | None) -> MemberEvent:
        return MemberEvent(kind="first_order", occur_time=paid, event_id="tagging:1-1")

    assert events.too_old(NEW_CUSTOMER, order(at(-2 * 86_400)), T0)
    assert not events.too_old(NEW_CUSTOMER, order(at(-3_600)), T0)
    assert not events.too_old(NEW_CUSTOMER, order(at(-86_400)), T0)  # exactly the delay: still news
    assert not events.too_old(NEW_CUSTOMER, order(None), T0)
    strict = dataclasses.replace(NEW_CUSTOMER, max_entry_delay="10m")
    assert events.too_old(strict, order(at(-3_600)), T0)


def test_scaled_journeys_keep_the_max_entry_delay() -> None:
    """How late a fact may arrive is real time, not journey time: scaling leaves it."""
    assert scaled(NEW_CUSTOMER, 1440).max_entry_delay == NEW_CUSTOMER.max_entry_delay == "1d"
    assert scaled(NEW_CUSTOMER, 1440).goal == Goal(event=EventMatch(kind="order"), attribution="840s")


def test_a_cohort_takes_its_goal_and_exit_criteria_and_nothing_it_only_waits_for() -> None:
    """A broadcast's cohort applies goals and exit criteria only: those are what the dispatcher
    signals to it; its kinds are parsed from the feed like a followed journey's."""
    definition = dataclasses.replace(
        NEW_CUSTOMER,
        entry=Entry(broadcast=Broadcast(audience="vip")),
        steps=(),
        goal=Goal(event=EventMatch(kind="order", min_amount_minor=5_000), attribution="3d"),
        exit_on=(EventMatch(kind="tag_added", dimension="lifecycle", values=("churned",)),),
    )
    order = MemberEvent(kind="first_order", amount_minor=9_800, event_id="tagging:1-1")
    small = dataclasses.replace(order, amount_minor=100)
    churned = MemberEvent(kind="tag_added", dimension="lifecycle", value="churned", event_id="tagging:1-2")
    silent = dataclasses.replace(churned, value="silent")
    registered = MemberEvent(kind="registered", event_id="tagging:1-3")
    taken = [events.reaches_cohort(definition, e) for e in (order, small, churned, silent, registered)]
    assert taken == [True, False, True, False, False]
    assert events.kinds([definition]) == {"order", "first_order", "tag_added"}
    assert not events.follows(definition)
    assert not events.reaches_cohort(dataclasses.replace(definition, goal=None, exit_on=()), order)
