"""The feed's contract: each payload kind tagging writes comes back from ReadFeed as the typed
message of its kind with the fields that were recorded, and the consumers' reader
(runtime.tagging_feed) turns it into the matching value."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from memberops.tagging.v1 import facts_pb2, feed_pb2, member_pb2, tagging_service_pb2, tags_pb2

from runtime import checks, tagging_feed
from runtime.db import Database
from services.tagging import feed_store
from services.tagging.domain import FeedKind
from services.tagging.evaluation import Tagger
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.facts_helpers import (
    PAID,
    a_refund,
    an_event,
    an_order,
    new_member,
    record_events,
    record_order,
    record_refund,
    stamp,
)
from tests.tagging.rule_builders import ALWAYS, Fn, Op, agg, cond
from tests.tagging.test_catalog import create, dimension, frequency
from tests.tagging.test_feed import feed_end, read_all
from tests.tagging.test_import import import_members
from tests.tagging.test_operator_tags import add, operator_dimension, remove

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def tag_changes(entries: list[feed_pb2.FeedEntry], member_id: str, name: str) -> list[feed_pb2.FeedEntry]:
    return [e for e in of(entries, member_id, feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED) if e.subject_id == name]


def of(entries: list[feed_pb2.FeedEntry], member_id: str, kind: int) -> list[feed_pb2.FeedEntry]:
    return [e for e in entries if e.member_id == member_id and e.kind == kind]


async def test_member_changes_carry_the_revision(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    member = member_pb2.Member(member_id=member_id)
    member.profile.city = "Ningbo"
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    entries = of((await read_all(tagging_stub, start))[0], member_id, feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED)
    assert [e.WhichOneof("payload") for e in entries] == ["member_changed", "member_changed"]
    assert [e.member_changed.revision for e in entries] == [1, 2]
    read = [tagging_feed.read_entry(e) for e in entries]
    changes = [r.payload for r in read if isinstance(r.payload, tagging_feed.MemberChanged)]
    assert [(c.revision, c.occur_time is not None) for c in changes] == [(1, True), (2, True)]
    assert [r.kind for r in read] == [tagging_feed.FeedKind.MEMBER_CHANGED] * 2
    assert [isinstance(r.payload, tagging_feed.MemberChanged) and r.payload.registered for r in read] == [
        True,
        False,
    ]


async def test_orders_carry_the_order_with_its_lines_and_number(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    sent = an_order(member_id)
    await record_order(tagging_stub, sent)
    (entry,) = of(
        (await read_all(tagging_stub, start))[0], member_id, feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED
    )
    assert entry.WhichOneof("payload") == "order_recorded"
    assert entry.order_recorded.order == sent
    assert entry.order_recorded.member_order_number == 1
    assert tagging_feed.read_entry(entry).payload == tagging_feed.OrderRecorded(
        order_id=sent.order_id,
        member_order_number=1,
        paid_time=PAID,
        amount_minor=25_800,
        store="tmall",
        payment_method="alipay",
        lines=(
            tagging_feed.OrderLine("1", "sku-1", "skincare", "acme", 2, 9_900),
            tagging_feed.OrderLine("2", "sku-2", "makeup", "acme", 3, 2_000),
        ),
    )


async def test_refunds_carry_the_refund_and_where_its_order_stands(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    order = await record_order(tagging_stub, an_order(member_id))
    start = await feed_end(tagging_stub)
    sent = a_refund(order.order_id, lines=[facts_pb2.RefundLine(line_id="1", quantity=1)], amount_minor=9_900)
    await record_refund(tagging_stub, sent)
    (entry,) = of(
        (await read_all(tagging_stub, start))[0], member_id, feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED
    )
    assert entry.WhichOneof("payload") == "refund_recorded"
    refund = entry.refund_recorded.refund
    assert (refund.refund_id, refund.order_id, refund.member_id, refund.amount_minor) == (
        sent.refund_id,
        order.order_id,
        member_id,
        9_900,
    )
    assert refund.refund_time == sent.refund_time
    assert list(refund.lines) == list(sent.lines)
    assert entry.refund_recorded.order_standing == feed_pb2.OrderStanding(
        amount_minor=25_800, refunded_amount_minor=9_900, refunded_in_full=False
    )
    assert tagging_feed.read_entry(entry).payload == tagging_feed.RefundRecorded(
        refund_id=sent.refund_id,
        order_id=order.order_id,
        refund_time=PAID + dt.timedelta(days=2),
        amount_minor=9_900,
        lines=(tagging_feed.RefundLine("1", 1),),
        order_standing=tagging_feed.OrderStanding(25_800, 9_900, False),
    )


async def test_events_carry_the_behaviour_event(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    sent = [
        an_event(member_id),
        an_event(member_id, kind=facts_pb2.EVENT_KIND_SEARCH, query="sun cream", brand="acme", sku=""),
    ]
    await record_events(tagging_stub, sent)
    entries = of((await read_all(tagging_stub, start))[0], member_id, feed_pb2.FEED_ENTRY_KIND_EVENT_RECORDED)
    assert [e.WhichOneof("payload") for e in entries] == ["event_recorded", "event_recorded"]
    assert sorted((e.event_recorded for e in entries), key=lambda e: e.event_id) == sorted(
        sent, key=lambda e: e.event_id
    )
    read = {r.subject_id: r.payload for r in map(tagging_feed.read_entry, entries)}
    assert read[sent[1].event_id] == tagging_feed.EventRecorded(
        event_id=sent[1].event_id,
        kind=tagging_feed.EventKind.SEARCH,
        occur_time=PAID - dt.timedelta(hours=3),
        sku="",
        category="skincare",
        brand="acme",
        query="sun cream",
        channel="app",
    )


async def test_tag_changes_carry_dimension_value_change_and_who(tagging_stub: Stub) -> None:
    name = dimension()
    version = (await create(tagging_stub, operator_dimension(name))).version
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    await add(tagging_stub, name, "vip_hotline", [member_id])
    await remove(tagging_stub, name, "vip_hotline", [member_id])
    # Real-time dimensions other tests defined may tag the member too: not this test's subject.
    entries = [
        e
        for e in of((await read_all(tagging_stub, start))[0], member_id, feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED)
        if e.subject_id == name
    ]
    assert [e.WhichOneof("payload") for e in entries] == ["tag_changed", "tag_changed"]
    # An operator's change happened when it was set (checked in the next test); the rest as sent.
    assert all(e.tag_changed.HasField("occur_time") for e in entries)
    for e in entries:
        e.tag_changed.ClearField("occur_time")
    assert [e.tag_changed for e in entries] == [
        feed_pb2.TagChanged(
            dimension=name,
            value="vip_hotline",
            change=feed_pb2.TAG_CHANGE_ADDED,
            definition_version=version,
            operator="alice@ops",
            reason="called the hotline",
        ),
        feed_pb2.TagChanged(
            dimension=name,
            value="vip_hotline",
            change=feed_pb2.TAG_CHANGE_REMOVED,
            definition_version=version,
            operator="bob@ops",
            reason="resolved",
        ),
    ]
    assert [tagging_feed.read_entry(e).payload for e in entries] == [
        tagging_feed.TagChanged(
            name, "vip_hotline", tagging_feed.TagChange.ADDED, version, "alice@ops", "called the hotline"
        ),
        tagging_feed.TagChanged(
            name, "vip_hotline", tagging_feed.TagChange.REMOVED, version, "bob@ops", "resolved"
        ),
    ]


async def test_entries_written_before_a_field_existed_read_as_unset(tagging_stub: Stub, db: Database) -> None:
    """Orders before tagging numbered them and refunds before it reported the order's standing."""
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    async with db.transaction(TENANT_ACME) as conn:
        await feed_store.append_feed(
            conn,
            TENANT_ACME,
            FeedKind.ORDER_RECORDED,
            member_id,
            "o-old",
            {"order_id": "o-old", "amount_minor": 5},
        )
        await feed_store.append_feed(
            conn,
            TENANT_ACME,
            FeedKind.REFUND_RECORDED,
            member_id,
            "r-old",
            {"order_id": "o-old", "amount_minor": 5},
        )
    order, refund = [
        tagging_feed.read_entry(e).payload
        for e in (await read_all(tagging_stub, start))[0]
        if e.member_id == member_id and e.subject_id in ("o-old", "r-old")
    ]
    assert isinstance(order, tagging_feed.OrderRecorded) and isinstance(refund, tagging_feed.RefundRecorded)
    assert (order.order_id, order.amount_minor, order.member_order_number, order.paid_time) == (
        "o-old",
        5,
        0,
        None,
    )
    assert (refund.order_id, refund.amount_minor, refund.order_standing) == ("o-old", 5, None)


async def test_a_tag_change_is_dated_by_the_fact_that_made_it(tagging_stub: Stub, db: Database) -> None:
    """An order paid a month ago, recorded now, changes a real-time tag "a month ago"; an
    operator's tag happened when it was set. Consumers judge news by this time (issue 19)."""
    name = dimension()
    await create(tagging_stub, frequency(name))  # real-time: heavy / light / none
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    paid = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).replace(microsecond=0)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(paid)))
    entries = tag_changes((await read_all(tagging_stub, start))[0], member_id, name)
    assert [(e.tag_changed.value, e.tag_changed.change) for e in entries] == [
        ("none", feed_pb2.TAG_CHANGE_REMOVED),
        ("light", feed_pb2.TAG_CHANGE_ADDED),
    ]
    assert [e.tag_changed.occur_time.ToDatetime(tzinfo=dt.UTC) for e in entries] == [paid, paid]
    payloads = [tagging_feed.read_entry(e).payload for e in entries]
    assert [p.occur_time for p in payloads if isinstance(p, tagging_feed.TagChanged)] == [paid, paid]
    # The published view audience follows carries the same time.
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        times = await conn.fetch(
            """SELECT occur_time FROM tagging_read.feed WHERE member_id = $1 AND kind = $2""",
            member_id,
            int(FeedKind.TAG_CHANGED),
        )
    assert paid in [row["occur_time"] for row in times]

    operator = dimension()
    await create(tagging_stub, operator_dimension(operator))
    before = dt.datetime.now(dt.UTC)
    start = await feed_end(tagging_stub)
    await add(tagging_stub, operator, "vip_hotline", [member_id])
    after = dt.datetime.now(dt.UTC)
    (entry,) = tag_changes((await read_all(tagging_stub, start))[0], member_id, operator)
    assert before <= entry.tag_changed.occur_time.ToDatetime(tzinfo=dt.UTC) <= after


async def test_a_registration_happened_at_the_members_register_time(tagging_stub: Stub) -> None:
    """A member loaded with its history registered when it says it did; a later change is now."""
    registered = dt.datetime(2025, 3, 1, 8, 30, tzinfo=dt.UTC)
    member = member_pb2.Member(member_id=unique())
    member.profile.register_time.FromDatetime(registered)
    start = await feed_end(tagging_stub)
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    member.profile.city = "Ningbo"
    before = dt.datetime.now(dt.UTC)
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    entries = of(
        (await read_all(tagging_stub, start))[0], member.member_id, feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
    )
    read = [tagging_feed.read_entry(e).payload for e in entries]
    assert next(p.occur_time for p in read if isinstance(p, tagging_feed.MemberChanged)) == registered
    second = read[1]
    assert isinstance(second, tagging_feed.MemberChanged) and second.occur_time is not None
    assert second.occur_time >= before


def recency(name: str) -> tags_pb2.TagDefinition:
    """A scheduled tag: `recent` (an order in 30 days), `buyer` (an order ever), `none`."""
    count = Fn.AGGREGATE_FUNCTION_ORDER_COUNT
    return tags_pb2.TagDefinition(
        dimension=name,
        display_name="Recency",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(value="recent", rule=cond(agg(count, window_days=30), Op.OPERATOR_GE, 1)),
            tags_pb2.TagValue(value="buyer", rule=cond(agg(count), Op.OPERATOR_GE, 1)),
            tags_pb2.TagValue(value="none", rule=ALWAYS),
        ],
    )


async def test_a_recompute_dates_a_change_by_the_orders_it_learned_else_by_its_as_of(
    tagging_stub: Stub, db: Database
) -> None:
    """A scheduled tag's change happened when the orders tagging learned since the member's
    previous value were paid (history stays history), or at the recompute's as_of when time alone
    moved the member; a first value without orders, at the member's registration."""
    name = dimension()
    await create(tagging_stub, recency(name))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    registered = now - dt.timedelta(days=730)
    history, silent, recent = (unique() for _ in range(3))
    for member_id in (history, silent, recent):
        member = member_pb2.Member(member_id=member_id)
        member.profile.register_time.FromDatetime(registered)
        await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    await record_order(tagging_stub, an_order(history, paid_time=stamp(now - dt.timedelta(days=200))))
    await record_order(tagging_stub, an_order(recent, paid_time=stamp(now - dt.timedelta(days=20))))
    tagger = Tagger(db)
    members = {history, silent, recent}

    async def changes_after(as_of: dt.datetime) -> dict[tuple[str, str, int], dt.datetime]:
        return await recompute_changes(tagging_stub, tagger, name, as_of, members)

    added, removed = feed_pb2.TAG_CHANGE_ADDED, feed_pb2.TAG_CHANGE_REMOVED
    # As of after the orders were recorded, as a recompute runs after what it reads.
    first = dt.datetime.now(dt.UTC)
    assert await changes_after(first) == {
        (history, "buyer", added): now - dt.timedelta(days=200),
        (silent, "none", added): registered,
        (recent, "recent", added): now - dt.timedelta(days=20),
    }
    # An order of last year loaded since; and fifteen days later, time alone ages `recent`.
    await record_order(tagging_stub, an_order(silent, paid_time=stamp(now - dt.timedelta(days=300))))
    later = first + dt.timedelta(days=15)
    assert await changes_after(later) == {
        (silent, "none", removed): now - dt.timedelta(days=300),
        (silent, "buyer", added): now - dt.timedelta(days=300),
        (recent, "recent", removed): later,
        (recent, "buyer", added): later,
    }


async def registered_member(stub: Stub, registered: dt.datetime) -> str:
    member_id = unique()
    member = member_pb2.Member(member_id=member_id)
    member.profile.register_time.FromDatetime(registered)
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    return member_id


async def recompute_changes(
    stub: Stub, tagger: Tagger, name: str, as_of: dt.datetime, members: set[str]
) -> dict[tuple[str, str, int], dt.datetime]:
    """(member, value, change) -> occur_time of the members' changes a recompute at `as_of` writes."""
    start = await feed_end(stub)
    await tagger.recompute(TENANT_ACME, [name], as_of)
    return {
        (e.member_id, e.tag_changed.value, e.tag_changed.change): e.tag_changed.occur_time.ToDatetime(
            tzinfo=dt.UTC
        )
        for e in (await read_all(stub, start))[0]
        if e.member_id in members and e.subject_id == name
    }


ADDED, REMOVED = feed_pb2.TAG_CHANGE_ADDED, feed_pb2.TAG_CHANGE_REMOVED


async def test_time_alone_ages_a_member_whose_late_order_kept_its_value(
    tagging_stub: Stub, db: Database
) -> None:
    """A recompute dates a change by facts it had not seen only when they caused it: a repeat order
    loaded late that left the member `recent` does not date the aging, weeks later, that time
    alone caused (it happened at that recompute's as_of); an order placed after the previous
    recompute, neither."""
    name = dimension()
    await create(tagging_stub, recency(name))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    late, fresh = [await registered_member(tagging_stub, now - dt.timedelta(days=730)) for _ in range(2)]
    for member_id in (late, fresh):
        await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - dt.timedelta(days=20))))
    tagger = Tagger(db)
    await tagger.recompute(TENANT_ACME, [name], now - dt.timedelta(days=5))
    # `late`: a repeat order paid before that recompute's as_of, loaded after it; `fresh`: one
    # paid after it. Both stay `recent`.
    await record_order(tagging_stub, an_order(late, paid_time=stamp(now - dt.timedelta(days=10))))
    await record_order(tagging_stub, an_order(fresh, paid_time=stamp(now - dt.timedelta(days=2))))
    assert await recompute_changes(tagging_stub, tagger, name, now, {late, fresh}) == {}
    later = now + dt.timedelta(days=40)
    assert await recompute_changes(tagging_stub, tagger, name, later, {late, fresh}) == {
        (late, "recent", REMOVED): later,
        (late, "buyer", ADDED): later,
        (fresh, "recent", REMOVED): later,
        (fresh, "buyer", ADDED): later,
    }


async def test_a_late_order_that_changed_the_value_is_history_whatever_came_between(
    tagging_stub: Stub, db: Database
) -> None:
    """Loaded after the last recompute, a year-old order that would have changed the member then
    dates the change by its paid time, also when the recompute that finds it runs weeks later."""
    name = dimension()
    await create(tagging_stub, recency(name))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    member_id = await registered_member(tagging_stub, now - dt.timedelta(days=730))
    tagger = Tagger(db)
    await tagger.recompute(TENANT_ACME, [name], now)
    paid = now - dt.timedelta(days=400)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(paid)))
    later = now + dt.timedelta(days=20)
    assert await recompute_changes(tagging_stub, tagger, name, later, {member_id}) == {
        (member_id, "none", REMOVED): paid,
        (member_id, "buyer", ADDED): paid,
    }


async def test_time_alone_ages_a_member_whose_repeat_order_came_late(
    tagging_stub: Stub, db: Database
) -> None:
    """The review's case: a repeat order loaded after the recompute that set `recent` kept it;
    the aging, 35 days without an order later, is time's: at the recompute's as_of."""
    name = dimension()
    await create(tagging_stub, recency(name))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    member_id = await registered_member(tagging_stub, now - dt.timedelta(days=730))
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - dt.timedelta(days=20))))
    tagger = Tagger(db)
    await tagger.recompute(TENANT_ACME, [name], dt.datetime.now(dt.UTC))
    # A repeat order, still "recent": the value does not change.
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - dt.timedelta(days=10))))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=25)
    assert await recompute_changes(tagging_stub, tagger, name, later, {member_id}) == {
        (member_id, "recent", REMOVED): later,
        (member_id, "buyer", ADDED): later,
    }


async def test_an_imported_member_without_register_time_registered_before_any_fact(
    tagging_stub: Stub, db: Database
) -> None:
    """ImportMembers loads existing customers: one without a register_time registered at
    checks.EARLIEST (the earliest time a fact may carry), and so did the first tags a real-time
    refresh or the next recompute gives it; a sign-up through UpsertMember without one registered
    now (review B item 13)."""
    realtime, scheduled = dimension(), dimension()
    await create(tagging_stub, frequency(realtime))
    await create(tagging_stub, recency(scheduled))
    tagger = Tagger(db)
    await tagger.recompute(TENANT_ACME, [scheduled], dt.datetime.now(dt.UTC))
    imported, signed_up = unique(), unique()
    start = await feed_end(tagging_stub)
    before = dt.datetime.now(dt.UTC)
    await import_members(tagging_stub, [[member_pb2.Member(member_id=imported)]])
    await tagging_stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=signed_up)), metadata=ACME
    )
    await tagger.recompute(TENANT_ACME, [scheduled], dt.datetime.now(dt.UTC))
    entries = (await read_all(tagging_stub, start))[0]

    def happened(member_id: str) -> dict[str, dt.datetime]:
        """subject -> occur_time of the member's registration ("") and tag changes (dimension)."""
        times: dict[str, dt.datetime] = {}
        for e in entries:
            if e.member_id == member_id and e.kind == feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED:
                payload = tagging_feed.read_entry(e).payload
                assert isinstance(payload, tagging_feed.MemberChanged) and payload.occur_time is not None
                times[""] = payload.occur_time
            elif e.member_id == member_id and e.subject_id in (realtime, scheduled):
                times[e.subject_id] = e.tag_changed.occur_time.ToDatetime(tzinfo=dt.UTC)
        return times

    assert happened(imported) == dict.fromkeys(("", realtime, scheduled), checks.EARLIEST)
    signed = happened(signed_up)
    assert signed.keys() == {"", realtime, scheduled}
    assert all(time >= before for time in signed.values())


def engagement(name: str) -> tags_pb2.TagDefinition:
    """A scheduled tag over behaviour: `engaged` (an event in 30 days), `seen` (one ever), `none`."""
    count = Fn.AGGREGATE_FUNCTION_EVENT_COUNT
    return tags_pb2.TagDefinition(
        dimension=name,
        display_name="Engagement",
        category=tags_pb2.TAG_CATEGORY_BEHAVIOUR,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(value="engaged", rule=cond(agg(count, window_days=30), Op.OPERATOR_GE, 1)),
            tags_pb2.TagValue(value="seen", rule=cond(agg(count), Op.OPERATOR_GE, 1)),
            tags_pb2.TagValue(value="none", rule=ALWAYS),
        ],
    )


async def test_late_behaviour_dates_a_change_only_when_it_caused_it(tagging_stub: Stub, db: Database) -> None:
    """Behaviour events like orders: a year-old event loaded late dates the change it made by its
    own time; a late event that left the member `engaged` does not date the aging time made."""
    name = dimension()
    await create(tagging_stub, engagement(name))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    history, active = [await registered_member(tagging_stub, now - dt.timedelta(days=730)) for _ in range(2)]
    await record_events(tagging_stub, [an_event(active, occur_time=stamp(now - dt.timedelta(days=20)))])
    tagger = Tagger(db)
    await tagger.recompute(TENANT_ACME, [name], now)
    seen = now - dt.timedelta(days=365)
    await record_events(
        tagging_stub,
        [
            an_event(history, occur_time=stamp(seen)),
            an_event(active, occur_time=stamp(now - dt.timedelta(days=10))),
        ],
    )
    later = now + dt.timedelta(days=40)
    assert await recompute_changes(tagging_stub, tagger, name, later, {history, active}) == {
        (history, "none", REMOVED): seen,
        (history, "seen", ADDED): seen,
        (active, "engaged", REMOVED): later,
        (active, "seen", ADDED): later,
    }
