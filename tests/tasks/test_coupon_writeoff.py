"""Coupon write-off from tagging's feed, end to end: an order recorded with tagging carries its
coupon codes; the tasks follower marks the member's coupons used at the order's paid time, records
a violation for each code its rules refuse (the order stands), restores the coupons of an order
refunded in full, and writes off imported history alike. ListCouponViolations reads the
violations."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.coupons import writeoff
from services.tasks.feed.follower import FeedFollower
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import create, issue
from tests.tasks.feed_helpers import followed, refund
from tests.tasks.task_helpers import stamp

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

State = coupons_pb2.CouponState
ListRequest = tasks_service_pb2.ListCouponViolationsRequest
Reason = coupons_pb2.CouponViolationReason
AVAILABLE, USED, EXPIRED = State.COUPON_STATE_AVAILABLE, State.COUPON_STATE_USED, State.COUPON_STATE_EXPIRED
UNKNOWN = Reason.COUPON_VIOLATION_REASON_UNKNOWN_CODE
ALREADY_USED = Reason.COUPON_VIOLATION_REASON_ALREADY_USED
NOT_VALID = Reason.COUPON_VIOLATION_REASON_NOT_VALID_AT_PAID_TIME
OTHER_MEMBER = Reason.COUPON_VIOLATION_REASON_OTHER_MEMBER
BELOW = Reason.COUPON_VIOLATION_REASON_BELOW_THRESHOLD
# (sku, category, quantity, unit price in minor units)
Line = tuple[str, str, int, int]
SHOES, BAGS = ("sku-shoe", "shoes", 1, 3000), ("sku-bag", "bags", 1, 6000)


def an_order(
    member_id: str, codes: Sequence[str], lines: Sequence[Line] = (BAGS,), paid: dt.datetime | None = None
) -> facts_pb2.Order:
    return facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=stamp(paid or dt.datetime.now(dt.UTC)),
        amount_minor=sum(q * p for _, _, q, p in lines),
        lines=[
            facts_pb2.OrderLine(line_id=str(i), sku=sku, category=category, quantity=q, unit_price_minor=p)
            for i, (sku, category, q, p) in enumerate(lines)
        ],
        coupon_codes=list(codes),
    )


async def record(tagging: TaggingStub, order: facts_pb2.Order) -> str:
    await tagging.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=INITECH)
    return order.order_id


async def order(tagging: TaggingStub, member_id: str, codes: Sequence[str], **fields: Any) -> str:
    return await record(tagging, an_order(member_id, codes, **fields))


async def coupon(stub: TasksStub, code: str) -> coupons_pb2.Coupon:
    return await stub.GetCoupon(tasks_service_pb2.GetCouponRequest(name=f"coupons/{code}"), metadata=INITECH)


async def violations(stub: TasksStub, **filters: Any) -> list[tuple[str, str, str, int]]:
    """(order, member, code, reason) of every violation matching `filters`, newest first."""
    found: list[tuple[str, str, str, int]] = []
    token = ""
    while True:
        request = tasks_service_pb2.ListCouponViolationsRequest(page_token=token, **filters)
        page = await stub.ListCouponViolations(request, metadata=INITECH)
        found += [(v.order_id, v.member_id, v.code, v.reason) for v in page.violations]
        token = page.next_page_token
        if not token:
            return found


async def a_coupon(stub: TasksStub, member_id: str, **template: Any) -> coupons_pb2.Coupon:
    """A new coupon of the member: 10.00 off from 50.00 eligible, valid 30 days from now."""
    made = await create(stub, metadata=INITECH, **template)
    return await issue(stub, made.template_id, member_id, metadata=INITECH)


async def follow_until_state(
    follower: FeedFollower, stub: TasksStub, code: str, state: int
) -> coupons_pb2.Coupon:
    found: list[coupons_pb2.Coupon] = []

    async def reached() -> bool:
        found[:] = [await coupon(stub, code)]
        return found[0].state == state

    await followed(follower, reached)
    return found[0]


async def follow_until_violation(follower: FeedFollower, stub: TasksStub, order_id: str) -> list[Any]:
    found: list[Any] = []

    async def recorded() -> bool:
        found[:] = await violations(stub, order_id=order_id)
        return bool(found)

    await followed(follower, recorded)
    return found


async def test_a_code_of_the_members_coupon_is_used_at_the_paid_time(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member = await members.new(INITECH)
    campaign = unique("campaign")
    made = await create(tasks_stub, metadata=INITECH)
    held = await issue(tasks_stub, made.template_id, member, campaign=campaign, arm="a", metadata=INITECH)
    paid = dt.datetime.now(dt.UTC)
    used_on = await order(tagging_stub, member, [held.code], paid=paid)
    used = await follow_until_state(follower, tasks_stub, held.code, USED)
    assert (used.order_id, used.use_time.ToDatetime(dt.UTC)) == (used_on, paid)
    assert await violations(tasks_stub, order_id=used_on) == []
    stats = await tasks_stub.GetCouponStats(
        tasks_service_pb2.GetCouponStatsRequest(campaign=campaign), metadata=INITECH
    )
    assert [(a.arm, a.issued, a.used, a.order_amount_minor) for a in stats.arms] == [("a", 1, 1, 6000)]


async def test_each_refused_code_is_a_violation_and_the_order_stands(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member, other = await members.new(INITECH), await members.new(INITECH)
    mine = await a_coupon(tasks_stub, member)
    theirs = await a_coupon(tasks_stub, other)
    small = await a_coupon(tasks_stub, member)
    unknown = unique("NOPE")
    first = await order(tagging_stub, member, [mine.code])
    await follow_until_state(follower, tasks_stub, mine.code, USED)
    # Already used, another member's, unknown, and below the threshold (one 30.00 line of 50.00).
    again = await order(tagging_stub, member, [mine.code, theirs.code, unknown])
    below = await order(tagging_stub, member, [small.code], lines=[SHOES])
    await follow_until_violation(follower, tasks_stub, below)
    assert sorted(await violations(tasks_stub, member_id=member)) == sorted(
        [
            (again, member, mine.code, ALREADY_USED),
            (again, member, theirs.code, OTHER_MEMBER),
            (again, member, unknown, UNKNOWN),
            (below, member, small.code, BELOW),
        ]
    )
    # Refused codes leave their coupons as they were; the orders stand in tagging.
    assert (await coupon(tasks_stub, mine.code)).order_id == first
    assert (await coupon(tasks_stub, theirs.code)).state == AVAILABLE
    assert (await coupon(tasks_stub, small.code)).state == AVAILABLE
    listed = await tagging_stub.ListMemberOrders(
        tagging_service_pb2.ListMemberOrdersRequest(member=f"members/{member}"), metadata=INITECH
    )
    assert {again, below} <= {o.order.order_id for o in listed.orders}


async def test_only_the_coupons_categories_count_towards_its_threshold(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member = await members.new(INITECH)
    shoes_only = await a_coupon(tasks_stub, member, categories=["shoes"])
    by_sku = await a_coupon(tasks_stub, member, skus=["sku-shoe"], threshold_minor=5000)
    # 90.00 in all, but only 30.00 of shoes; then no shoes at all.
    short = await order(tagging_stub, member, [shoes_only.code], lines=[SHOES, BAGS])
    none = await order(tagging_stub, member, [by_sku.code], lines=[BAGS, ("sku-bag", "bags", 2, 6000)])
    await follow_until_violation(follower, tasks_stub, none)
    assert await violations(tasks_stub, order_id=short) == [(short, member, shoes_only.code, BELOW)]
    assert await violations(tasks_stub, order_id=none) == [(none, member, by_sku.code, BELOW)]
    # Two pairs of shoes: 60.00 eligible.
    two_pairs = ("sku-shoe", "shoes", 2, 3000)
    enough = await order(tagging_stub, member, [shoes_only.code], lines=[two_pairs, BAGS])
    used = await follow_until_state(follower, tasks_stub, shoes_only.code, USED)
    assert used.order_id == enough


async def test_validity_is_judged_at_the_paid_time_however_late_the_order_arrives(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members, db: Database
) -> None:
    member = await members.new(INITECH)
    early, late, expired = [await a_coupon(tasks_stub, member) for _ in range(3)]
    now = dt.datetime.now(dt.UTC)
    # A coupon valid from now: an order paid an hour before is outside its validity.
    before = await order(tagging_stub, member, [early.code], paid=now - dt.timedelta(hours=1))
    # Coupons valid last week only (their validity moved back, as if issued then).
    week_ago = now - dt.timedelta(days=7)
    async with db.transaction(TENANT_INITECH) as conn:
        await conn.execute(
            "UPDATE tasks.coupons SET valid_from = $2, valid_until = $3 WHERE code = ANY($1::text[])",
            [late.code, expired.code],
            week_ago - dt.timedelta(days=2),
            week_ago,
        )
    assert (await coupon(tasks_stub, late.code)).state == EXPIRED
    # Paid while it was valid and reported only now: used, no violation. Paid after: a violation.
    in_time = await order(tagging_stub, member, [late.code], paid=week_ago - dt.timedelta(days=1))
    after = await order(tagging_stub, member, [expired.code], paid=week_ago + dt.timedelta(hours=1))
    used = await follow_until_state(follower, tasks_stub, late.code, USED)
    assert used.order_id == in_time
    await follow_until_violation(follower, tasks_stub, after)
    assert await violations(tasks_stub, order_id=before) == [(before, member, early.code, NOT_VALID)]
    assert await violations(tasks_stub, order_id=after) == [(after, member, expired.code, NOT_VALID)]
    assert await violations(tasks_stub, order_id=in_time) == []
    assert (await coupon(tasks_stub, early.code)).state == AVAILABLE


async def test_a_full_refund_restores_the_coupons_a_partial_one_does_not(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members, db: Database
) -> None:
    member = await members.new(INITECH)
    kept, restored = await a_coupon(tasks_stub, member), await a_coupon(tasks_stub, member)
    partly = await order(tagging_stub, member, [kept.code], lines=[BAGS, SHOES])
    wholly = await order(tagging_stub, member, [restored.code])
    await follow_until_state(follower, tasks_stub, restored.code, USED)
    await refund(tagging_stub, partly, {"1": 1}, 3000)
    await refund(tagging_stub, wholly, {"0": 1}, 6000)
    back = await follow_until_state(follower, tasks_stub, restored.code, AVAILABLE)
    assert (back.order_id, back.HasField("use_time")) == ("", False)
    assert (await coupon(tasks_stub, kept.code)).order_id == partly
    # Usable again; restored past its validity, it reads expired.
    again = await order(tagging_stub, member, [restored.code])
    assert (await follow_until_state(follower, tasks_stub, restored.code, USED)).order_id == again
    await refund(tagging_stub, again, {}, 6000)
    await follow_until_state(follower, tasks_stub, restored.code, AVAILABLE)
    async with db.transaction(TENANT_INITECH) as conn:
        await conn.execute(
            """UPDATE tasks.coupons SET valid_from = now() - interval '2 days',
                                        valid_until = now() - interval '1 day' WHERE code = $1""",
            restored.code,
        )
    assert (await coupon(tasks_stub, restored.code)).state == EXPIRED


async def _stream(
    orders: Sequence[facts_pb2.Order],
) -> AsyncIterator[tagging_service_pb2.ImportOrdersRequest]:
    yield tagging_service_pb2.ImportOrdersRequest(orders=list(orders))


async def test_imported_orders_use_their_coupons_too(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member = await members.new(INITECH)
    held = await a_coupon(tasks_stub, member)
    paid = dt.datetime.now(dt.UTC)
    # The import feeds a batch's orders by paid time: the first one paid uses the coupon.
    later = paid + dt.timedelta(milliseconds=1)
    history = [an_order(member, [held.code], paid=paid), an_order(member, [held.code], paid=later)]
    reply = await tagging_stub.ImportOrders(_stream(history), metadata=INITECH)
    assert reply.stored_count == 2
    used = await follow_until_state(follower, tasks_stub, held.code, USED)
    assert used.order_id == history[0].order_id
    assert await follow_until_violation(follower, tasks_stub, history[1].order_id) == [
        (history[1].order_id, member, held.code, ALREADY_USED)
    ]


async def test_two_concurrent_orders_with_one_code_use_it_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member = await members.new(INITECH)
    held = await a_coupon(tasks_stub, member)
    ids = await asyncio.gather(*(order(tagging_stub, member, [held.code]) for _ in range(2)))

    async def settled() -> bool:
        found = [v for i in ids for v in await violations(tasks_stub, order_id=i)]
        return len(found) == 1 and (await coupon(tasks_stub, held.code)).state == USED

    await followed(follower, settled)
    used = await coupon(tasks_stub, held.code)
    (loser,) = [i for i in ids if i != used.order_id]
    assert used.order_id in ids
    assert await violations(tasks_stub, order_id=loser) == [(loser, member, held.code, ALREADY_USED)]


async def test_concurrent_write_offs_of_one_code_in_separate_transactions_use_it_once(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    """The conditional update, not the follower's one-at-a-time rounds, keeps a coupon to one use:
    eight transactions write off orders naming one code at once."""
    member = await members.new(INITECH)
    held = await a_coupon(tasks_stub, member)
    now = dt.datetime.now(dt.UTC)

    async def write_off(i: int) -> writeoff.WrittenOff:
        used = writeoff.UsedOrder(unique(f"race{i}"), member, now, 6000, (), (held.code,))
        async with db.transaction(TENANT_INITECH) as conn:
            return await writeoff.write_off(conn, TENANT_INITECH, used)

    results = await asyncio.gather(*(write_off(i) for i in range(8)))
    assert sorted((r.used, r.violations) for r in results) == [(0, 1)] * 7 + [(1, 0)]
    assert (await coupon(tasks_stub, held.code)).state == USED


async def test_violations_are_listed_by_member_and_order_page_by_page(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member, other = await members.new(INITECH), await members.new(INITECH)
    codes = [unique("X") for _ in range(3)]
    first = await order(tagging_stub, member, codes[:2])
    second = await order(tagging_stub, member, codes[2:])
    theirs = await order(tagging_stub, other, codes[:1])
    await follow_until_violation(follower, tasks_stub, theirs)
    await follow_until_violation(follower, tasks_stub, second)
    listed = await violations(tasks_stub, member_id=member)
    assert sorted(listed) == sorted(
        [
            (first, member, codes[0], UNKNOWN),
            (first, member, codes[1], UNKNOWN),
            (second, member, codes[2], UNKNOWN),
        ]
    )
    assert listed[0][0] == second  # newest first
    # One a page, no loss or repeat; the order filter alone and with the member.
    pages: list[str] = []
    token = ""
    while True:
        request = tasks_service_pb2.ListCouponViolationsRequest(
            member_id=member, page_size=1, page_token=token
        )
        page = await tasks_stub.ListCouponViolations(request, metadata=INITECH)
        pages += [v.code for v in page.violations]
        token = page.next_page_token
        if not token:
            break
    assert pages == [v[2] for v in listed]
    assert await violations(tasks_stub, order_id=theirs) == [(theirs, other, codes[0], UNKNOWN)]
    assert await violations(tasks_stub, member_id=other, order_id=first) == []
    # A token serves only the filters it came from.
    request = tasks_service_pb2.ListCouponViolationsRequest(member_id=member, page_size=1)
    token = (await tasks_stub.ListCouponViolations(request, metadata=INITECH)).next_page_token
    await bad(
        tasks_stub.ListCouponViolations(
            tasks_service_pb2.ListCouponViolationsRequest(member_id=other, page_token=token), metadata=INITECH
        ),
        "page_token",
    )


async def test_bad_list_requests_name_their_field(tasks_stub: TasksStub) -> None:
    cases = {
        "member_id": ListRequest(member_id="no spaces"),
        "order_id": ListRequest(order_id="x" * 65),
        "page_size": ListRequest(page_size=1001),
        "page_token": ListRequest(page_token="not-a-token"),
    }
    for path, request in cases.items():
        await bad(tasks_stub.ListCouponViolations(request, metadata=INITECH), path)
    negative = ListRequest(page_size=-1)
    assert (await failure(tasks_stub.ListCouponViolations(negative, metadata=INITECH))).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_an_erased_members_violations_move_to_the_pseudonym(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, members: Members
) -> None:
    member = await members.new(INITECH)
    code = unique("GONE")
    refused = await order(tagging_stub, member, [code])
    await follow_until_violation(follower, tasks_stub, refused)
    pseudonym = unique("erased")
    erase = tasks_service_pb2.EraseMemberDataRequest(member_id=member, pseudonym=pseudonym)
    changed = (await tasks_stub.EraseMemberData(erase, metadata=INITECH)).changed_rows
    assert changed["coupon_violations"] == 1
    assert await violations(tasks_stub, member_id=member) == []
    assert await violations(tasks_stub, member_id=pseudonym) == [(refused, pseudonym, code, UNKNOWN)]
