"""ImportOrders, ImportRefunds, ImportEvents: history in batches, idempotent by natural key, fed as
backfilled, with the touched members' real-time tags refreshed before the reply."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2, feed_pb2, tagging_service_pb2

from runtime.db import Database
from services.tagging import fact_imports
from services.tagging.domain import OrderInput, OrderLine
from services.tagging.fact_imports import stored_as_sent, wire_digest
from services.tagging.facts import content_hash, order_digest
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import (
    PAID,
    a_refund,
    an_event,
    an_order,
    new_member,
    record_order,
    stamp,
)
from tests.tagging.test_feed import feed_end, read_all
from tests.tagging.test_member_tags import tags_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

Reply = tagging_service_pb2.ImportFactsResponse


async def _stream(messages: Sequence[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def import_orders(stub: Stub, batches: Sequence[Sequence[facts_pb2.Order]]) -> Reply:
    requests = [tagging_service_pb2.ImportOrdersRequest(orders=b) for b in batches]
    return await stub.ImportOrders(_stream(requests), metadata=ACME, timeout=120)


async def import_refunds(stub: Stub, batches: Sequence[Sequence[facts_pb2.Refund]]) -> Reply:
    requests = [tagging_service_pb2.ImportRefundsRequest(refunds=b) for b in batches]
    return await stub.ImportRefunds(_stream(requests), metadata=ACME, timeout=120)


async def import_events(stub: Stub, batches: Sequence[Sequence[facts_pb2.BehaviorEvent]]) -> Reply:
    requests = [tagging_service_pb2.ImportEventsRequest(events=b) for b in batches]
    return await stub.ImportEvents(_stream(requests), metadata=ACME, timeout=120)


def counts(reply: Reply) -> tuple[int, int, int]:
    return reply.received_count, reply.stored_count, reply.unchanged_count


async def failed(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def stored_orders(db: Database, order_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """order_id -> (lines, refunded_amount_minor) of those stored."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT o.order_id, count(l.line_id) AS lines, o.refunded_amount_minor FROM tagging.orders o
               JOIN tagging.order_lines l USING (order_id) WHERE o.order_id = ANY($1::text[])
               GROUP BY o.order_id, o.refunded_amount_minor""",
            list(order_ids),
        )
    return {r["order_id"]: (r["lines"], r["refunded_amount_minor"]) for r in rows}


async def feed_entries(db: Database, subject_ids: Sequence[str]) -> list[tuple[int, str]]:
    """(kind, subject_id) of every feed entry about these facts, however settled."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT kind, subject_id FROM tagging.feed WHERE subject_id = ANY($1::text[]) ORDER BY txid, seq",
            list(subject_ids),
        )
    return [(r["kind"], r["subject_id"]) for r in rows]


def mine(entries: Sequence[feed_pb2.FeedEntry], members: Sequence[str]) -> list[feed_pb2.FeedEntry]:
    return [e for e in entries if e.member_id in members]


def orders_of(members: Sequence[str], per_member: int) -> list[facts_pb2.Order]:
    """`per_member` orders for each member, a day apart, before PAID."""
    return [
        an_order(m, paid_time=stamp(PAID - dt.timedelta(days=d))) for m in members for d in range(per_member)
    ]


def test_the_import_digest_is_record_orders() -> None:
    """An order recorded by RecordOrder imports as unchanged: both hash the same content alike."""
    order = OrderInput(
        "o-1",
        "m-1",
        dt.datetime(2026, 3, 4, 5, 6, 7, 891, tzinfo=dt.UTC),
        1234,
        (OrderLine("1", "sku", "çà", "b", 2, 500), OrderLine("2")),
        "store ✓",
        "alipay",
    )
    # Without coupon codes, the content as it was hashed before orders had them (so an order
    # recorded then retries as itself); with codes, RecordOrder's and the import's digests agree.
    before_codes = {k: v for k, v in dataclasses.asdict(order).items() if k != "coupon_codes"}
    canonical = json.dumps(before_codes, sort_keys=True, default=str, separators=(",", ":"))
    assert order_digest(order) == hashlib.sha256(canonical.encode()).hexdigest()
    coded = dataclasses.replace(order, coupon_codes=("B-2", "a_1"))
    assert order_digest(coded) == content_hash(coded) != order_digest(order)


async def test_imported_orders_are_stored_fed_as_backfilled_and_tagged(
    tagging_stub: Stub, db: Database
) -> None:
    start = await feed_end(tagging_stub)
    members = [await new_member(tagging_stub) for _ in range(3)]
    orders = orders_of(members, 2)
    reply = await import_orders(tagging_stub, [orders[:4], orders[4:]])
    assert counts(reply) == (6, 6, 0)
    assert await stored_orders(db, [o.order_id for o in orders]) == {o.order_id: (2, 0) for o in orders}
    # Tags are there when the reply is: the orders' categories; no refresh is left owed.
    for member_id in members:
        assert await tags_of(tagging_stub, member_id, "categories_bought") == ["makeup", "skincare"]
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        owed = await conn.fetchval(
            "SELECT count(*) FROM tagging.refresh_queue WHERE member_id = ANY($1::text[])", members
        )
    assert owed == 0

    # A live order beside them is news; the imported ones are history.
    live = await record_order(tagging_stub, an_order(members[0]))
    entries = mine((await read_all(tagging_stub, start))[0], members)
    recorded = [e for e in entries if e.kind == feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED]
    assert {e.subject_id: e.backfilled for e in recorded} == {
        **{o.order_id: True for o in orders},
        live.order_id: False,
    }
    numbers = {e.subject_id: e.order_recorded.member_order_number for e in recorded}
    for m in range(3):
        older, newer = orders[2 * m + 1], orders[2 * m]  # a day earlier is number 1
        assert (numbers[older.order_id], numbers[newer.order_id]) == (1, 2)
    assert numbers[live.order_id] == 3
    first = next(e for e in recorded if e.subject_id == orders[0].order_id)
    assert first.order_recorded.order == _as_fed(orders[0])
    # The tag changes the import made are history too, dated by the facts.
    changes = [
        e
        for e in entries
        if e.kind == feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED and e.tag_changed.dimension == "categories_bought"
    ]
    assert len(changes) == 6
    assert all(e.backfilled for e in changes)
    assert {e.tag_changed.occur_time.ToDatetime(dt.UTC) for e in changes} == {PAID - dt.timedelta(days=1)}


def _as_fed(order: facts_pb2.Order) -> facts_pb2.Order:
    """The order as an OrderRecorded entry carries it (no name or record time)."""
    fed = facts_pb2.Order()
    fed.CopyFrom(order)
    return fed


async def test_a_resent_batch_or_stream_changes_nothing(tagging_stub: Stub, db: Database) -> None:
    members = [await new_member(tagging_stub) for _ in range(2)]
    orders = orders_of(members, 3)
    batches = [orders[:2], orders[2:]]
    assert counts(await import_orders(tagging_stub, batches)) == (6, 6, 0)
    before = await feed_entries(db, [*members, *(o.order_id for o in orders)])
    tags_before = [await tags_of(tagging_stub, m, "categories_bought") for m in members]

    assert counts(await import_orders(tagging_stub, [batches[1]])) == (4, 0, 4)
    assert counts(await import_orders(tagging_stub, batches)) == (6, 0, 6)
    # An order recorded one by one before imports as unchanged too.
    single = an_order(members[0])
    await record_order(tagging_stub, single)
    assert counts(await import_orders(tagging_stub, [[single]])) == (1, 0, 1)

    after = await feed_entries(db, [*members, *(o.order_id for o in orders)])
    assert after == before
    assert [await tags_of(tagging_stub, m, "categories_bought") for m in members] == tags_before


def test_orders_stored_as_sent_are_those_whose_wire_digest_is_stored() -> None:
    a, b = an_order("m-1", "o-a"), an_order("m-1", "o-b")
    other_b = an_order("m-1", "o-b", store="jd")
    ids = ["o-a", "o-b", "o-b", "o-a", "o-c"]
    digests = [wire_digest(m) for m in (a, b, other_b, a, an_order("m-1", "o-c"))]
    stored = {"o-a": wire_digest(a), "o-b": wire_digest(b)}
    # o-a twice alike is stored as sent; o-b beside other content goes the full way, as does o-c.
    assert stored_as_sent(ids, digests, stored) == {0, 3}
    assert wire_digest(a) == wire_digest(an_order("m-1", "o-a")) != wire_digest(b)


async def test_a_resent_order_is_known_by_its_wire_form(tagging_stub: Stub, db: Database) -> None:
    """A re-sent order whose wire form an import stored is unchanged without its content being
    compared again; another wire form of the same content is compared by content."""
    member_id = await new_member(tagging_stub)
    order, other = an_order(member_id), an_order(member_id)
    assert counts(await import_orders(tagging_stub, [[order, other]])) == (2, 2, 0)
    async with db.transaction(TENANT_ACME) as conn:
        # Only a comparison by content would notice this.
        await conn.execute("UPDATE tagging.orders SET content_hash = 'x' WHERE order_id = $1", order.order_id)
    assert counts(await import_orders(tagging_stub, [[order, other]])) == (2, 0, 2)
    named = facts_pb2.Order()
    named.CopyFrom(order)
    named.name = f"orders/{order.order_id}"  # output only: the same order, other bytes
    error = await failed(import_orders(tagging_stub, [[named]]), grpc.StatusCode.ALREADY_EXISTS)
    assert "requests[0].orders[0].order_id" in (error.details() or "")
    named.CopyFrom(other)
    named.name = f"orders/{other.order_id}"
    assert counts(await import_orders(tagging_stub, [[named]])) == (1, 0, 1)
    # Orders stored as sent are not validated again, but a bad one beside them rejects the batch.
    bad = an_order(member_id, amount_minor=-1)
    error = await failed(import_orders(tagging_stub, [[other, bad]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].orders[1].amount_minor"]
    assert set(await stored_orders(db, [bad.order_id])) == set()


async def test_a_bad_order_rejects_its_batch_only(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    good = orders_of([member_id], 2)
    bad = [an_order(member_id), an_order(member_id, amount_minor=-1, store="x" * 65)]
    error = await failed(import_orders(tagging_stub, [good, bad]), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(field_violations(error)) == {
        "requests[1].orders[1].amount_minor",
        "requests[1].orders[1].store",
    }
    assert set(await stored_orders(db, [o.order_id for o in good + bad])) == {o.order_id for o in good}


async def test_a_bad_paid_time_and_a_bad_line_are_named(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    late = an_order(member_id, paid_time=stamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=3)))
    no_lines = an_order(member_id, lines=[])
    bad_line = an_order(member_id)
    bad_line.lines[1].quantity = 0
    unpaid = an_order(member_id, paid_time=None)
    error = await failed(
        import_orders(tagging_stub, [[an_order(member_id), late, no_lines, bad_line, unpaid]]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(field_violations(error)) == {
        "requests[0].orders[1].paid_time",
        "requests[0].orders[2].lines",
        "requests[0].orders[3].lines[1].quantity",
        "requests[0].orders[4].paid_time",
    }


async def test_an_unknown_member_rejects_its_batch(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    stranger = unique("stranger")
    before, after = [an_order(member_id)], [an_order(member_id)]
    batch = [an_order(member_id), an_order(member_id), an_order(stranger)]
    # The batch after the bad one is read (and prepared) while the bad one is stored: never stored.
    error = await failed(
        import_orders(tagging_stub, [before, batch, after]), grpc.StatusCode.INVALID_ARGUMENT
    )
    violations = field_violations(error)
    assert list(violations) == ["requests[1].orders[2].member_id"]
    assert stranger in violations["requests[1].orders[2].member_id"]
    ids = [o.order_id for o in before + batch + after]
    assert set(await stored_orders(db, ids)) == {before[0].order_id}


async def test_an_order_id_with_other_content_already_exists(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    order = an_order(member_id)
    await import_orders(tagging_stub, [[order]])
    changed = an_order(member_id, order.order_id, amount_minor=1)
    fresh = an_order(member_id)
    error = await failed(import_orders(tagging_stub, [[fresh, changed]]), grpc.StatusCode.ALREADY_EXISTS)
    assert "requests[0].orders[1].order_id" in (error.details() or "")
    assert set(await stored_orders(db, [fresh.order_id])) == set()


async def test_an_order_twice_in_a_batch_counts_once_unless_it_differs(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    order = an_order(member_id)
    assert counts(await import_orders(tagging_stub, [[order, order]])) == (2, 1, 1)
    other = an_order(member_id)
    differs = an_order(member_id, other.order_id, store="jd")
    error = await failed(import_orders(tagging_stub, [[other, differs]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].orders[1].order_id"]


async def test_concurrent_identical_streams_store_each_order_once(tagging_stub: Stub, db: Database) -> None:
    members = [await new_member(tagging_stub) for _ in range(20)]
    orders = orders_of(members, 10)
    batches = [orders[i : i + 50] for i in range(0, len(orders), 50)]
    replies = await asyncio.gather(*(import_orders(tagging_stub, batches) for _ in range(3)))
    assert sum(r.stored_count for r in replies) == len(orders)
    assert all(r.received_count == len(orders) for r in replies)
    assert all(r.stored_count + r.unchanged_count == len(orders) for r in replies)
    fed = await feed_entries(db, [o.order_id for o in orders])
    assert sorted(fed) == sorted((2, o.order_id) for o in orders)
    for member_id in members[:3]:
        assert await tags_of(tagging_stub, member_id, "categories_bought") == ["makeup", "skincare"]


async def test_imported_refunds_take_off_their_orders(tagging_stub: Stub, db: Database) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    whole, partial = an_order(member_id), an_order(member_id)
    await import_orders(tagging_stub, [[whole, partial]])
    refunds = [
        a_refund(whole.order_id),  # the whole order
        a_refund(partial.order_id, amount_minor=2_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=1)]),
        a_refund(partial.order_id, amount_minor=4_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=2)]),
    ]
    assert counts(await import_refunds(tagging_stub, [refunds[:1], refunds[1:]])) == (3, 3, 0)
    assert await stored_orders(db, [whole.order_id, partial.order_id]) == {
        whole.order_id: (2, 25_800),
        partial.order_id: (2, 6_000),
    }
    # Makeup came back in full: only skincare is still bought (skincare's whole order went back).
    assert await tags_of(tagging_stub, member_id, "categories_bought") == ["skincare"]
    assert counts(await import_refunds(tagging_stub, [refunds])) == (3, 0, 3)

    entries = mine((await read_all(tagging_stub, start))[0], [member_id])
    fed = {e.subject_id: e for e in entries if e.kind == feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED}
    assert set(fed) == {r.refund_id for r in refunds}
    assert all(e.backfilled for e in fed.values())
    assert fed[refunds[0].refund_id].refund_recorded.order_standing.refunded_in_full
    standing = fed[refunds[2].refund_id].refund_recorded.order_standing
    assert (standing.refunded_amount_minor, standing.refunded_in_full) == (6_000, False)


async def test_a_refund_beyond_its_order_rejects_its_batch(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    order = an_order(member_id)
    await import_orders(tagging_stub, [[order]])
    first = a_refund(
        order.order_id, amount_minor=20_000, lines=[facts_pb2.RefundLine(line_id="1", quantity=1)]
    )
    beyond = a_refund(
        order.order_id, amount_minor=6_000, lines=[facts_pb2.RefundLine(line_id="1", quantity=1)]
    )
    error = await failed(import_refunds(tagging_stub, [[first, beyond]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].refunds[1].amount_minor"]
    too_many = a_refund(order.order_id, amount_minor=1, lines=[facts_pb2.RefundLine(line_id="1", quantity=3)])
    unknown = a_refund(unique("o"))
    error = await failed(
        import_refunds(tagging_stub, [[first], [too_many], [unknown]]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(field_violations(error)) == ["requests[1].refunds[0].lines[0].quantity"]
    assert await stored_orders(db, [order.order_id]) == {order.order_id: (2, 20_000)}
    error = await failed(import_refunds(tagging_stub, [[unknown]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].refunds[0].order_id"]
    changed = a_refund(order.order_id, first.refund_id, amount_minor=1)
    error = await failed(import_refunds(tagging_stub, [[changed]]), grpc.StatusCode.ALREADY_EXISTS)
    assert "requests[0].refunds[0].refund_id" in (error.details() or "")


async def test_imported_events_are_backfilled_and_refresh_interest(tagging_stub: Stub, db: Database) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    yesterday = stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    events = [an_event(member_id, occur_time=yesterday, category=c) for c in ("skincare", "makeup")]
    assert counts(await import_events(tagging_stub, [events[:1], events])) == (3, 2, 1)
    assert await tags_of(tagging_stub, member_id, "interest") == ["makeup", "skincare"]
    assert counts(await import_events(tagging_stub, [events])) == (2, 0, 2)
    entries = mine((await read_all(tagging_stub, start))[0], [member_id])
    fed = [e for e in entries if e.kind == feed_pb2.FEED_ENTRY_KIND_EVENT_RECORDED]
    assert sorted(e.subject_id for e in fed) == sorted(e.event_id for e in events)
    interest = [e for e in entries if e.tag_changed.dimension == "interest"]
    assert len(interest) == 2
    assert all(e.backfilled for e in fed + interest)

    stranger = an_event(unique("stranger"))
    error = await failed(import_events(tagging_stub, [[stranger]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].events[0].member_id"]
    bad = an_event(member_id, kind=facts_pb2.EVENT_KIND_UNSPECIFIED)
    error = await failed(
        import_events(tagging_stub, [[an_event(member_id), bad]]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(field_violations(error)) == ["requests[0].events[1].kind"]


async def test_a_batch_must_hold_one_to_ten_thousand_facts(tagging_stub: Stub) -> None:
    error = await failed(import_orders(tagging_stub, [[]]), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(field_violations(error)) == ["requests[0].orders"]
    assert counts(await import_orders(tagging_stub, [])) == (0, 0, 0)


def _bought(member_id: str, category: str, days_ago: int) -> facts_pb2.Order:
    line = facts_pb2.OrderLine(line_id="1", sku="sku-1", category=category, quantity=1, unit_price_minor=100)
    return an_order(
        member_id, paid_time=stamp(PAID - dt.timedelta(days=days_ago)), amount_minor=100, lines=[line]
    )


async def test_a_long_stream_refreshes_its_members_on_the_way(
    tagging_stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream past REFRESH_AFTER_SECONDS refreshes the members its committed batches touched
    beside the later batches (before their queue rows reach the sweeper's grace); each refresh
    dates its changes by the facts it saw. Once the refresh after batch 0 is due, the next one
    waits for it, so batch 3 is stored only after batch 0's members were refreshed."""
    monkeypatch.setattr(fact_imports, "REFRESH_AFTER_SECONDS", 0.0)
    start = await feed_end(tagging_stub)
    member_id, other = await new_member(tagging_stub), await new_member(tagging_stub)
    batches = [
        [_bought(member_id, "skincare", 10)],
        [_bought(other, "bath", 5)],
        [_bought(other, "tools", 4)],
        [_bought(member_id, "makeup", 1)],
    ]
    assert counts(await import_orders(tagging_stub, batches)) == (4, 4, 0)
    assert await tags_of(tagging_stub, member_id, "categories_bought") == ["makeup", "skincare"]
    entries = mine((await read_all(tagging_stub, start))[0], [member_id])
    changes = {
        e.tag_changed.value: e.tag_changed.occur_time.ToDatetime(dt.UTC)
        for e in entries
        if e.kind == feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED and e.tag_changed.dimension == "categories_bought"
    }
    # Refreshed once at the end, both would be dated by the member's earliest order of the stream.
    assert changes == {"skincare": PAID - dt.timedelta(days=10), "makeup": PAID - dt.timedelta(days=1)}
