"""Refunds recorded with tagging take back their share of what the order earned in points, from
tagging's feed, with no call from the backend: through gRPC against real PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memberops.tasks.v1 import points_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.feed.follower import FeedFollower
from services.tasks.points import ledger, ledger_store
from tests.conftest import INITECH, TENANT_INITECH
from tests.tasks.feed_helpers import drain, followed, order, refund
from tests.tasks.points_helpers import ORDER, ROLLING, all_entries, balance, earn, spend
from tests.tasks.task_helpers import member

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

REVERSAL = points_pb2.REASON_ORDER_REVERSAL


async def available(stub: TasksStub, member_id: str) -> int:
    return (await balance(stub, member_id, metadata=INITECH)).available


async def reversals(stub: TasksStub, member_id: str, order_id: str) -> list[tuple[str, int, int]]:
    """(note, delta, shortfall) of the order's reversals, oldest first. (Purchase tasks of other
    tests may pay the member for its orders, and take that back on refunds, so the tests read the
    order's own reversals rather than the balance.)"""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    return [
        (e.note, e.delta, e.shortfall)
        for e in reversed(entries)
        if e.reason == REVERSAL and e.reference == order_id
    ]


async def consistent(stub: TasksStub, member_id: str) -> None:
    """The entries add up to the balance, which is never negative."""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    assert sum(e.delta for e in entries) == await available(stub, member_id) >= 0


async def test_each_refund_takes_back_its_share_and_the_last_one_the_rest(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s1", "milk", "b", 2, 500), ("s2", "tea", "b", 1, 1000)])
    # The order's points expire first, so the spend below draws them before any other.
    await earn(tasks_stub, m, 200, reason=ORDER, reference=o, policy=ROLLING, days=1, metadata=INITECH)
    await earn(tasks_stub, m, 50, metadata=INITECH)

    # A quarter of the order's amount: a quarter of its points.
    first = await refund(tagging_stub, o, {"0": 1}, 500)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 1))
    await spend(tasks_stub, m, 70, metadata=INITECH)  # of the order's 150 left
    # Three quarters in all: 150 of 200, so 100 more, of which 80 are left and 20 were spent.
    second = await refund(tagging_stub, o, {"1": 1}, 1000)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 2))
    # The rest of the order: what is left of its 200, all of it spent already.
    third = await refund(tagging_stub, o, {"0": 1}, 500)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 3))
    assert await reversals(tasks_stub, m, o) == [
        (f"refund {first}", -50, 0),
        (f"refund {second}", -80, 20),
        (f"refund {third}", 0, 50),
    ]
    await consistent(tasks_stub, m)

    # Applying a refund again (a replayed feed entry) takes nothing more.
    again = ledger.Refunded(m, o, second, 2000, 1500, False)
    async with db.transaction(TENANT_INITECH) as conn:
        await ledger_store.lock_account(conn, TENANT_INITECH, m)
        assert await ledger.reverse_refund(conn, TENANT_INITECH, again) is None
    assert len(await reversals(tasks_stub, m, o)) == 3


async def test_a_whole_order_reversal_after_a_refund_takes_what_remains(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s1", "milk", "b", 3, 1000)])
    await earn(tasks_stub, m, 301, reason=ORDER, reference=o, metadata=INITECH)
    first = await refund(tagging_stub, o, {"0": 1}, 1000)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 1))
    request = tasks_service_pb2.ReverseOrderPointsRequest(member_id=m, order_id=o)
    whole = await tasks_stub.ReverseOrderPoints(request, metadata=INITECH)
    assert (whole.delta, whole.shortfall) == (-201, 0)
    # Once the order is reversed whole, its later refunds take nothing.
    await refund(tagging_stub, o, {"0": 2}, 2000)
    await drain(follower)
    assert await reversals(tasks_stub, m, o) == [(f"refund {first}", -100, 0), ("", -201, 0)]  # 301 / 3
    await consistent(tasks_stub, m)


async def test_an_order_with_a_refund_still_earns_and_later_refunds_count_it(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    """A refund's reversal leaves the order open (only a whole-order reversal closes it): points
    earned for it later count in what the next refund takes a share of."""
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s1", "milk", "b", 4, 1000)])
    await earn(tasks_stub, m, 100, reason=ORDER, reference=o, metadata=INITECH)
    first = await refund(tagging_stub, o, {"0": 1}, 1000)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 1))
    await earn(tasks_stub, m, 60, reason=ORDER, reference=o, metadata=INITECH)  # e.g. a bonus
    # Half refunded in all: half of the 160 earned, less the 25 taken before.
    second = await refund(tagging_stub, o, {"0": 1}, 1000)
    await followed(follower, lambda: _has_reversals(tasks_stub, m, o, 2))
    assert await reversals(tasks_stub, m, o) == [(f"refund {first}", -25, 0), (f"refund {second}", -55, 0)]
    await consistent(tasks_stub, m)


async def test_refunds_of_orders_that_earned_no_points_write_nothing(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    m = await member(tagging_stub, metadata=INITECH)
    o = await order(tagging_stub, m, [("s1", "milk", "b", 1, 1000)])
    other = await order(tagging_stub, m, [("s1", "milk", "b", 1, 1000)])
    await earn(tasks_stub, m, 80, reason=ORDER, reference=other, metadata=INITECH)
    await refund(tagging_stub, o, {"0": 1}, 1000)
    await drain(follower)
    assert await reversals(tasks_stub, m, o) == await reversals(tasks_stub, m, other) == []
    await consistent(tasks_stub, m)


def test_the_share_of_partial_refunds_adds_up_to_one_refund_of_their_sum() -> None:
    def claim(refunded: int, *, in_full: bool = False, amount: int = 3000) -> int:
        return ledger.refunds_claim(100, ledger.Refunded("m", "o", "r", amount, refunded, in_full))

    assert [claim(1000), claim(2000), claim(2999), claim(3000, in_full=True)] == [33, 66, 99, 100]
    # An order of no amount gives nothing back until every item is returned.
    assert (claim(0, amount=0), claim(0, amount=0, in_full=True)) == (0, 100)


async def _has_reversals(stub: TasksStub, member_id: str, order_id: str, count: int) -> bool:
    return len(await reversals(stub, member_id, order_id)) == count
