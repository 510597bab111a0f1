"""ReadFeed: every fact once, in order, per tenant, and nothing skipped behind a held cursor."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2, feed_pb2, member_pb2, tagging_service_pb2
from opentelemetry.sdk.trace import TracerProvider

from runtime import outbox
from runtime.db import Database
from services.tagging import event_store, feed_store
from services.tagging.domain import BehaviorEvent, FeedKind
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique
from tests.grpc_helpers import bad, field_violations
from tests.tagging.facts_helpers import (
    a_refund,
    an_event,
    an_order,
    new_member,
    record_events,
    record_order,
    record_refund,
)
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


# The member whose changes mark how far the feed has settled (see `read_all`).
BARRIER = "feed-barrier"


async def read_all(
    stub: Stub, after: str = "", metadata: Any = ACME, limit: int = 7, *, settled: bool = True
) -> tuple[list[Any], str]:
    """Pages through the feed from `after` to its end; returns the entries and the end cursor.

    An entry is handed out only once its transaction has its position, a moment after it commits
    (runtime/outbox.py), so an entry committed just before the call may not be readable yet. With
    `settled` (the default), the call first writes a barrier (a change of member `feed-barrier`)
    and reads until the barrier's entry is there: every entry committed before the call was then
    given its position too. The barrier's entries are left out."""
    if not settled:
        return await _read_from(stub, after, metadata, limit)
    revision = await _barrier(stub, metadata)

    async def through_barrier() -> tuple[list[Any], str] | None:
        entries, cursor = await _read_from(stub, after, metadata, limit)
        if not any(_is_barrier(e, revision) for e in entries):
            return None
        return [e for e in entries if e.member_id != BARRIER], cursor

    return await eventually(through_barrier, f"the feed settled past barrier revision {revision}")


async def _read_from(stub: Stub, after: str, metadata: Any, limit: int) -> tuple[list[Any], str]:
    """Every entry the feed hands out now after `after`, and the cursor after the last."""
    entries: list[feed_pb2.FeedEntry] = []
    cursor = after
    while True:
        page = await stub.ReadFeed(
            tagging_service_pb2.ReadFeedRequest(after_cursor=cursor, limit=limit), metadata=metadata
        )
        entries.extend(page.entries)
        cursor = page.next_cursor
        if not page.entries:
            return entries, cursor


async def _barrier(stub: Stub, metadata: Any) -> int:
    """Changes the barrier member; returns its revision after the change."""
    member = member_pb2.Member(member_id=BARRIER)
    member.attributes.update({"barrier": uuid.uuid4().hex})
    reply = await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=metadata)
    return int(reply.revision)


def _is_barrier(entry: feed_pb2.FeedEntry, revision: int) -> bool:
    return (
        entry.member_id == BARRIER
        and entry.kind == feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
        and entry.member_changed.revision == revision
    )


async def feed_end(stub: Stub, metadata: Any = ACME) -> str:
    """Where a test starts reading what it writes: a cursor past every entry committed before the
    call. The feed's end (`skip_to_end`) is only its newest entry with a position: an entry
    committed just before, not given its position yet, lies beyond it and would be read as the
    test's own (a recompute's change read back by the next one's test, once in four full runs).
    So it reads on from there through a barrier, like `read_all`. (Paging from the beginning to
    find the end read the whole shared feed, a little more for each test.)"""
    reply = await stub.ReadFeed(tagging_service_pb2.ReadFeedRequest(skip_to_end=True), metadata=metadata)
    return (await read_all(stub, reply.next_cursor, metadata, limit=100))[1]


async def test_every_fact_appears_once_in_order(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    order = await record_order(tagging_stub, an_order(member_id))
    refund = await record_refund(tagging_stub, a_refund(order.order_id))
    events = [an_event(member_id), an_event(member_id)]
    await record_events(tagging_stub, events)
    await record_events(tagging_stub, events)  # duplicates add nothing
    await record_order(tagging_stub, an_order(member_id, order.order_id))  # nor does a retried order

    entries, _ = await read_all(tagging_stub, start, limit=2)
    # Tag changes the facts cause (real-time dimensions other tests defined) are not this test's subject.
    mine = [
        (e.kind, e.subject_id)
        for e in entries
        if e.member_id == member_id and e.kind != feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED
    ]
    assert mine[:3] == [
        (feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED, ""),
        (feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED, order.order_id),
        (feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED, refund.refund_id),
    ]
    assert sorted(mine[3:]) == sorted((feed_pb2.FEED_ENTRY_KIND_EVENT_RECORDED, e.event_id) for e in events)
    assert len({e.cursor for e in entries}) == len(entries)
    order_entry = next(e for e in entries if e.subject_id == order.order_id)
    assert order_entry.order_recorded.order.amount_minor == 25_800
    assert [line.category for line in order_entry.order_recorded.order.lines] == ["skincare", "makeup"]


async def test_refund_entries_say_where_their_order_stands(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    paid = await record_order(tagging_stub, an_order(member_id))
    line = facts_pb2.RefundLine
    partial = a_refund(paid.order_id, lines=[line(line_id="1", quantity=1)], amount_minor=9_900)
    refunds = [partial, a_refund(paid.order_id)]  # then the rest
    # An order of no amount is refunded in full once every item is back.
    free = await record_order(tagging_stub, an_order(member_id, amount_minor=0))
    refunds += [
        a_refund(free.order_id, lines=[line(line_id="1", quantity=2), line(line_id="2", quantity=2)]),
        a_refund(free.order_id, lines=[line(line_id="2", quantity=1)]),
    ]
    for refund in refunds:
        await record_refund(tagging_stub, refund)
    entries, _ = await read_all(tagging_stub, start)
    standing = {
        e.subject_id: (
            e.refund_recorded.order_standing.amount_minor,
            e.refund_recorded.order_standing.refunded_amount_minor,
            e.refund_recorded.order_standing.refunded_in_full,
        )
        for e in entries
        if e.kind == feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED
    }
    assert [standing[r.refund_id] for r in refunds] == [
        (25_800, 9_900, False),
        (25_800, 25_800, True),
        (0, 0, False),
        (0, 0, True),
    ]


async def test_an_unchanged_member_adds_no_entry(tagging_stub: Stub) -> None:
    member = member_pb2.Member(member_id=await new_member(tagging_stub))
    start = await feed_end(tagging_stub)
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    assert [e for e in (await read_all(tagging_stub, start))[0] if e.member_id == member.member_id] == []
    member.profile.city = "Ningbo"
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    (entry,) = [
        e
        for e in (await read_all(tagging_stub, start))[0]
        if e.member_id == member.member_id and e.kind == feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
    ]
    assert entry.kind == feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
    assert entry.member_changed.revision == 2


async def test_tenants_read_only_their_own_feed(tagging_stub: Stub) -> None:
    acme_member = await new_member(tagging_stub)
    entries, _ = await read_all(tagging_stub, metadata=GLOBEX, limit=1000)
    assert acme_member not in {e.member_id for e in entries}


async def test_an_open_transaction_holds_back_only_its_own_entries(tagging_stub: Stub, db: Database) -> None:
    """A transaction that started writing first and commits last holds back nothing but itself: an
    order recorded while it is open is handed out while it is open (read_all's barrier, committed
    after it, is read too). Its own entry comes once it commits, after the order, to a reader going
    on from where it was, once."""
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    async with db.transaction(TENANT_ACME) as slow:
        await feed_store.append_feed(slow, TENANT_ACME, FeedKind.MEMBER_CHANGED, member_id, "slow", {})
        order = await record_order(tagging_stub, an_order(member_id))  # commits while `slow` is open

        def ours(entries: list[Any]) -> list[str]:
            subjects = {"slow", order.order_id}
            return [e.subject_id for e in entries if e.member_id == member_id and e.subject_id in subjects]

        handed_out, held = await read_all(tagging_stub, start)
        assert ours(handed_out) == [order.order_id]
    later, _ = await read_all(tagging_stub, held)
    assert ours(later) == ["slow"]
    assert ours((await read_all(tagging_stub, start))[0]) == [order.order_id, "slow"]


async def test_an_order_entry_numbers_the_members_orders(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    start = await feed_end(tagging_stub)
    first = await record_order(tagging_stub, an_order(member_id))
    await record_order(tagging_stub, an_order(member_id, first.order_id))  # a retry adds no entry
    second = await record_order(tagging_stub, an_order(member_id))
    other = await record_order(tagging_stub, an_order(await new_member(tagging_stub)))
    entries, _ = await read_all(tagging_stub, start)
    numbers = {
        e.subject_id: e.order_recorded.member_order_number
        for e in entries
        if e.kind == feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED
    }
    assert numbers == {first.order_id: 1, second.order_id: 2, other.order_id: 1}


async def test_skip_to_end_gives_the_newest_cursor_and_loses_nothing_after_it(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    # The newest settled entry, between two reads of the whole feed (an entry may settle at any
    # moment while the suite's services run, so the three need not be equal).
    _, before = await read_all(tagging_stub, await feed_end(tagging_stub), limit=1000, settled=False)
    skipped = await tagging_stub.ReadFeed(
        tagging_service_pb2.ReadFeedRequest(after_cursor="", skip_to_end=True), metadata=ACME
    )
    _, after = await read_all(tagging_stub, skipped.next_cursor, limit=1000, settled=False)
    assert list(skipped.entries) == []
    positions = [outbox.parse_cursor(c) or (0, 0) for c in (before, skipped.next_cursor, after)]
    assert positions == sorted(positions)
    order = await record_order(tagging_stub, an_order(member_id))
    entries, _ = await read_all(tagging_stub, skipped.next_cursor)
    assert order.order_id in [e.subject_id for e in entries if e.member_id == member_id]
    assert all(e.cursor != skipped.next_cursor for e in entries)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_cursor": "not-a-cursor"}, "after_cursor"),
        ({"after_cursor": "12"}, "after_cursor"),
        ({"limit": -1}, "limit"),
        ({"limit": 1001}, "limit"),
    ],
)
async def test_bad_cursor_or_limit_is_invalid_argument(
    tagging_stub: Stub, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.ReadFeed(tagging_service_pb2.ReadFeedRequest(**request_fields), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def test_a_kinds_filter_reads_those_kinds_and_moves_past_the_rest(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    order = await record_order(tagging_stub, an_order(member_id))
    await record_events(tagging_stub, [an_event(member_id)])
    await record_refund(tagging_stub, a_refund(order.order_id))
    await record_events(tagging_stub, [an_event(member_id)])
    everything, end = await read_all(tagging_stub, start)
    wanted = [feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED, feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED]

    filtered: list[feed_pb2.FeedEntry] = []
    cursor = start
    while True:
        request = tagging_service_pb2.ReadFeedRequest(after_cursor=cursor, limit=1, kinds=wanted)
        page = await tagging_stub.ReadFeed(request, metadata=ACME)
        filtered.extend(page.entries)
        if page.next_cursor == cursor:
            break
        cursor = page.next_cursor
    assert [e.cursor for e in filtered] == [e.cursor for e in everything if e.kind in wanted]
    assert {e.subject_id for e in filtered} >= {order.order_id}
    # Past the last match the cursor moved on to the end, over the entries of other kinds.
    assert outbox.parse_cursor(cursor) >= outbox.parse_cursor(end) > outbox.parse_cursor(filtered[-1].cursor)  # type: ignore[operator]
    unspecified = tagging_service_pb2.ReadFeedRequest(kinds=[feed_pb2.FEED_ENTRY_KIND_UNSPECIFIED])
    await bad(tagging_stub.ReadFeed(unspecified, metadata=ACME), "kinds", "FeedEntryKind")


async def test_an_event_entry_keeps_the_trace_of_the_call_that_recorded_it(
    tagging_stub: Stub, db: Database
) -> None:
    """A journey an event starts continues the recording call's trace (docs/operations.md, Traces):
    the event's feed entry keeps the context current when it was written, and none outside a span."""
    member_id = await new_member(tagging_stub)
    tracer = TracerProvider().get_tracer("tests")  # not the global provider: nothing else is traced
    traced, untraced = unique("e"), unique("e")
    now = dt.datetime.now(dt.UTC)
    async with db.transaction(TENANT_ACME) as conn:
        with tracer.start_as_current_span("RecordEvents") as span:
            await event_store.insert_events(conn, TENANT_ACME, [BehaviorEvent(traced, member_id, 1, now)])
        await event_store.insert_events(conn, TENANT_ACME, [BehaviorEvent(untraced, member_id, 1, now)])
        rows = await conn.fetch(
            "SELECT subject_id, traceparent FROM tagging.feed WHERE subject_id = ANY($1::text[])",
            [traced, untraced],
        )
    context = span.get_span_context()
    assert {row["subject_id"]: row["traceparent"] for row in rows} == {
        traced: f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}",
        untraced: None,
    }
