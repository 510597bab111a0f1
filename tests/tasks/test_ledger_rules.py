"""Ledger rules over gRPC against real PostgreSQL: calendar expiry (UTC month and year ends, decided
by when the points become available), redeeming coupons, virtual items and lotteries, and growth
net of reversals.

Expiry runs on the clocked server and on globex, so `ExpirePoints` never touches acme's lots,
which many tests share; the assertions read the test's own member, never the run's global counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tasks.v1 import levels_pb2, points_pb2, rewards_pb2, tasks_service_pb2

from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import failure
from tests.tasks.conftest import Clock
from tests.tasks.points_helpers import ORDER, TASK, all_entries, balance, earn, spend
from tests.tasks.test_levels import level
from tests.tasks.test_rewards import Kind, create, redeem, reward_id

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

UTC = dt.UTC
MONTH_END = points_pb2.EXPIRY_POLICY_END_OF_MONTH
YEAR_END = points_pb2.EXPIRY_POLICY_END_OF_YEAR
REDEMPTION = points_pb2.REASON_REDEMPTION
EXPIRY = points_pb2.REASON_EXPIRY
REVERSAL = points_pb2.REASON_ORDER_REVERSAL
FULFILLED = rewards_pb2.REDEMPTION_OUTCOME_FULFILLED
LAST_MICROSECOND = dt.timedelta(microseconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def when(stamp: Any) -> dt.datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(UTC)  # type: ignore[no-any-return]


@pytest.fixture
def moved(clock: Clock) -> Iterator[Clock]:
    """The clocked server's clock, put back where it was after the test (these tests jump to
    chosen calendar instants, which other tests of the session do not expect)."""
    saved = clock.now()
    yield clock
    clock.set(saved)


async def expire(stub: TasksStub) -> tasks_service_pb2.ExpirePointsResponse:
    """Expires globex's due lots as of the clocked server's now."""
    return await stub.ExpirePoints(tasks_service_pb2.ExpirePointsRequest(), metadata=GLOBEX)


async def entries(stub: TasksStub, member_id: str) -> list[tuple[int, int, str]]:
    """(reason, delta, reference) of the member's globex entries, newest first."""
    return [(e.reason, e.delta, e.reference) for e in await all_entries(stub, member_id, metadata=GLOBEX)]


async def held(stub: TasksStub, member_id: str) -> tuple[int, int, bool]:
    """(available, pending, has a next expiry) of the member's globex balance."""
    now = await balance(stub, member_id, metadata=GLOBEX)
    return now.available, now.pending, now.HasField("next_expire_time")


# --- calendar expiry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "window", "month_end", "year_end"),
    [
        # Earned an hour before the year ends: both policies end at the next instant of midnight.
        (utc(2026, 12, 31, 23), 0, utc(2027, 1, 1), utc(2027, 1, 1)),
        # The same moment with a one-day return window: available in January 2027, which decides.
        (utc(2026, 12, 31, 23), 1, utc(2027, 2, 1), utc(2028, 1, 1)),
        # A 30-day window moves mid-January points into February.
        (utc(2027, 1, 15, 12), 30, utc(2027, 3, 1), utc(2028, 1, 1)),
        # 07:30 on 1 February in Shanghai is still 31 January in UTC: the UTC calendar decides.
        (
            dt.datetime(2027, 2, 1, 7, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))),
            0,
            utc(2027, 2, 1),
            utc(2028, 1, 1),
        ),
        # A leap February ends on the 29th.
        (utc(2028, 2, 29, 12), 0, utc(2028, 3, 1), utc(2029, 1, 1)),
        # The last microsecond of November is November.
        (utc(2027, 12, 1) - LAST_MICROSECOND, 0, utc(2027, 12, 1), utc(2028, 1, 1)),
    ],
)
async def test_month_and_year_ends_are_the_first_utc_instant_after_the_month_of_availability(
    clocked_stub: TasksStub,
    moved: Clock,
    members: Members,
    now: dt.datetime,
    window: int,
    month_end: dt.datetime,
    year_end: dt.datetime,
) -> None:
    """An END_OF_MONTH or END_OF_YEAR entry expires at the first instant of the UTC month (year)
    after the one in which its points become available (services/tasks/points/ledger.py Expiry), so they
    count through the month's last microsecond; order points held for a return window take the
    month in which the window ends, not the one they were earned in."""
    moved.set(now)
    member = await members.new()
    reason = ORDER if window else TASK
    for policy, expected in ((MONTH_END, month_end), (YEAR_END, year_end)):
        entry = await earn(
            clocked_stub, member, 10, reason=reason, reference=unique("o"), policy=policy, window=window
        )
        assert when(entry.available_time) == now + dt.timedelta(days=window)
        assert when(entry.expire_time) == expected
        assert entry.expire_time.nanos == 0


async def test_month_end_points_count_until_the_month_ends_then_expire(
    clocked_stub: TasksStub, moved: Clock, members: Members
) -> None:
    """Points earned on 31 January are spendable until 1 February 00:00 UTC and not a microsecond
    longer; order points earned the same evening but held one day become available in February and
    so last until March. ExpirePoints then writes one expiry entry per lot, once."""
    moved.set(utc(2027, 1, 31, 22))
    member = await members.new(GLOBEX)
    january = await earn(clocked_stub, member, 40, policy=MONTH_END, metadata=GLOBEX)
    await earn(clocked_stub, member, 7, metadata=GLOBEX)
    order = unique("o")
    held_order = await earn(
        clocked_stub, member, 50, reason=ORDER, reference=order, policy=MONTH_END, window=1, metadata=GLOBEX
    )
    assert when(january.expire_time) == utc(2027, 2, 1)
    assert when(held_order.expire_time) == utc(2027, 3, 1)
    now = await balance(clocked_stub, member, within_days=1, metadata=GLOBEX)
    assert (now.available, now.pending, now.expiring) == (47, 50, 40)
    assert when(now.next_expire_time) == utc(2027, 2, 1)

    moved.set(utc(2027, 2, 1) - LAST_MICROSECOND)
    assert await held(clocked_stub, member) == (47, 50, True)

    moved.set(utc(2027, 2, 1))
    assert await held(clocked_stub, member) == (7, 50, False)
    short = await failure(spend(clocked_stub, member, 8, metadata=GLOBEX))
    assert short.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "7 available" in (short.details() or "")

    run = await expire(clocked_stub)
    assert run.expired_lots >= 1 and run.expired_points >= 40
    after = await entries(clocked_stub, member)
    assert after[0][:2] == (EXPIRY, -40) and after[0][2].startswith("lots/")
    assert [e[:2] for e in after[1:]] == [(ORDER, 50), (TASK, 7), (TASK, 40)]
    await expire(clocked_stub)
    assert await entries(clocked_stub, member) == after  # an emptied lot is not expired again
    assert await held(clocked_stub, member) == (7, 50, False)

    # The order's points arrive in February and expire with it.
    moved.set(utc(2027, 2, 1, 22))
    now = await balance(clocked_stub, member, metadata=GLOBEX)
    assert (now.available, now.pending) == (57, 0)
    assert when(now.next_expire_time) == utc(2027, 3, 1)
    moved.set(utc(2027, 3, 1) - LAST_MICROSECOND)
    assert await held(clocked_stub, member) == (57, 0, True)
    moved.set(utc(2027, 3, 1))
    assert await held(clocked_stub, member) == (7, 0, False)
    await expire(clocked_stub)
    last = await entries(clocked_stub, member)
    assert last[0][:2] == (EXPIRY, -50) and last[1:] == after
    assert sum(delta for _, delta, _ in last) == 7


async def test_year_end_points_expire_at_the_first_instant_of_the_next_utc_year(
    clocked_stub: TasksStub, moved: Clock, members: Members
) -> None:
    """Points earned at 23:00 on New Year's Eve expire an hour later, what is left of them; order
    points of the same moment held one day belong to the next year and last all of it."""
    moved.set(utc(2026, 12, 31, 23))
    member = await members.new(GLOBEX)
    eve = await earn(clocked_stub, member, 30, policy=YEAR_END, metadata=GLOBEX)
    held_order = await earn(
        clocked_stub,
        member,
        60,
        reason=ORDER,
        reference=unique("o"),
        policy=YEAR_END,
        window=1,
        metadata=GLOBEX,
    )
    assert when(eve.expire_time) == utc(2027, 1, 1)
    assert when(held_order.expire_time) == utc(2028, 1, 1)
    moved.set(utc(2026, 12, 31, 23, 30))
    await spend(clocked_stub, member, 10, metadata=GLOBEX)
    assert await held(clocked_stub, member) == (20, 60, True)

    moved.set(utc(2027, 1, 1) - LAST_MICROSECOND)
    assert await held(clocked_stub, member) == (20, 60, True)
    moved.set(utc(2027, 1, 1))
    assert await held(clocked_stub, member) == (0, 60, False)
    await expire(clocked_stub)
    first = await entries(clocked_stub, member)
    assert [e[:2] for e in first] == [(EXPIRY, -20), (REDEMPTION, -10), (ORDER, 60), (TASK, 30)]

    moved.set(utc(2027, 1, 1, 23))
    now = await balance(clocked_stub, member, metadata=GLOBEX)
    assert (now.available, now.pending) == (60, 0)
    assert when(now.next_expire_time) == utc(2028, 1, 1)
    moved.set(utc(2028, 1, 1) - LAST_MICROSECOND)
    assert await held(clocked_stub, member) == (60, 0, True)
    moved.set(utc(2028, 1, 1))
    assert await held(clocked_stub, member) == (0, 0, False)
    await expire(clocked_stub)
    last = await entries(clocked_stub, member)
    assert last[0][:2] == (EXPIRY, -60) and last[1:] == first
    assert sum(delta for _, delta, _ in last) == 0


# --- rewards -------------------------------------------------------------------------------------


async def catalogued(stub: TasksStub, reward: str) -> rewards_pb2.Reward:
    """The reward as ListRewards shows it now (paging through acme's whole catalog)."""
    token = ""
    while True:
        request = tasks_service_pb2.ListRewardsRequest(page_size=100, page_token=token)
        page = await stub.ListRewards(request, metadata=ACME)
        for found in page.rewards:
            if found.reward_id == reward:
                return found
        token = page.next_page_token
        assert token, f"reward {reward} is not in the catalog"


async def attempt(stub: TasksStub, member: str, reward: str) -> rewards_pb2.Redemption | grpc.StatusCode:
    """The redemption, or the code it was refused with."""
    try:
        return await redeem(stub, member, reward)
    except grpc.aio.AioRpcError as error:
        return error.code()


async def test_a_coupon_spends_its_price_each_time_until_its_stock_is_gone(
    tasks_stub: TasksStub, members: Members
) -> None:
    """Each coupon redemption spends the price in an entry that says why (REDEMPTION, the reward
    as reference) and is the redemption's entry; once the stock is gone a redemption is refused
    and costs nothing."""
    coupon = await create(
        tasks_stub, reward_id=reward_id(), kind=Kind.REWARD_KIND_COUPON, price=30, initial_stock=2
    )
    assert (coupon.stock, coupon.unlimited) == (2, False)
    member = await members.new()
    await earn(tasks_stub, member, 100)
    made = [await redeem(tasks_stub, member, coupon.reward_id) for _ in range(2)]
    assert [(r.outcome, r.points, r.member_id) for r in made] == [(FULFILLED, 30, member)] * 2
    gone = await failure(redeem(tasks_stub, member, coupon.reward_id))
    assert gone.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    listed = await all_entries(tasks_stub, member)
    assert [(e.reason, e.delta, e.reference) for e in listed] == [
        (REDEMPTION, -30, f"rewards/{coupon.reward_id}"),
        (REDEMPTION, -30, f"rewards/{coupon.reward_id}"),
        (TASK, 100, "task-1"),
    ]
    assert [e.entry_id for e in listed[:2]] == [r.entry_id for r in reversed(made)]
    assert (await balance(tasks_stub, member)).available == 40
    assert (await catalogued(tasks_stub, coupon.reward_id)).stock == 0


@pytest.mark.parametrize("kind", [Kind.REWARD_KIND_VIRTUAL_ITEM, Kind.REWARD_KIND_COUPON])
async def test_an_unlimited_reward_is_redeemed_as_often_as_points_allow(
    tasks_stub: TasksStub, members: Members, kind: int
) -> None:
    """A coupon or virtual item created without a stock is unlimited: 30 concurrent redemptions by
    five members (more than any stock of one would allow to one member) all succeed, each spending
    the price; the next one is refused for points, never for stock, and the catalog still says
    unlimited."""
    item = await create(tasks_stub, reward_id=reward_id(), kind=kind, price=10)
    assert (item.stock, item.unlimited, item.initial_stock) == (0, True, 0)
    buyers = await members.many(5)
    await asyncio.gather(*(earn(tasks_stub, m, 60) for m in buyers))
    made = await asyncio.gather(*(redeem(tasks_stub, m, item.reward_id) for m in buyers for _ in range(6)))
    assert Counter((r.member_id, r.outcome, r.points) for r in made) == {
        (m, FULFILLED, 10): 6 for m in buyers
    }
    assert len({r.entry_id for r in made}) == 30

    for m in buyers:
        listed = await all_entries(tasks_stub, m)
        spent = [(e.reason, e.delta, e.reference) for e in listed if e.delta < 0]
        assert spent == [(REDEMPTION, -10, f"rewards/{item.reward_id}")] * 6
        assert {e.entry_id for e in listed if e.delta < 0} == {r.entry_id for r in made if r.member_id == m}
        assert (await balance(tasks_stub, m)).available == 0
    broke = await failure(redeem(tasks_stub, buyers[0], item.reward_id))
    assert broke.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await catalogued(tasks_stub, item.reward_id)
    assert (after.stock, after.unlimited) == (0, True)


async def test_concurrent_lottery_draws_win_exactly_the_stock_and_refusals_cost_nothing(
    tasks_stub: TasksStub, members: Members
) -> None:
    """A lottery that always wins (10000 bp) with 5 prizes, drawn by 40 members at once: exactly
    5 win and pay; the other 35 find no prize left and are RESOURCE_EXHAUSTED (rewards.py refuses
    a draw once every prize is won, before any points are taken), so they pay nothing and have no
    redemption entry."""
    lottery = await create(
        tasks_stub,
        reward_id=reward_id(),
        kind=Kind.REWARD_KIND_LOTTERY,
        price=10,
        initial_stock=5,
        win_odds_bp=10_000,
    )
    drawers = await members.many(40)
    await asyncio.gather(*(earn(tasks_stub, m, 15) for m in drawers))
    outcomes = await asyncio.gather(*(attempt(tasks_stub, m, lottery.reward_id) for m in drawers))
    won = {o.member_id: o for o in outcomes if isinstance(o, rewards_pb2.Redemption)}
    refused = [m for m, o in zip(drawers, outcomes, strict=True) if not isinstance(o, rewards_pb2.Redemption)]
    assert len(won) == 5 and len(refused) == 35
    assert {(o.outcome, o.points) for o in won.values()} == {(FULFILLED, 10)}
    assert Counter(o for o in outcomes if not isinstance(o, rewards_pb2.Redemption)) == {
        grpc.StatusCode.RESOURCE_EXHAUSTED: 35
    }

    for m in drawers:
        listed = await all_entries(tasks_stub, m)
        if m in won:
            assert [(e.reason, e.delta, e.reference) for e in listed[:1]] == [
                (REDEMPTION, -10, f"rewards/{lottery.reward_id}")
            ]
            assert listed[0].entry_id == won[m].entry_id
            assert (await balance(tasks_stub, m)).available == 5
        else:
            assert [(e.reason, e.delta) for e in listed] == [(TASK, 15)]
            assert (await balance(tasks_stub, m)).available == 15
    assert (await catalogued(tasks_stub, lottery.reward_id)).stock == 0


# --- growth and reversals ------------------------------------------------------------------------


async def level_policy(stub: TasksStub) -> levels_pb2.LevelPolicy:
    """Globex's level policy as other tests left it (these tests only read it)."""
    return await stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=GLOBEX)


def rank_for(policy: levels_pb2.LevelPolicy, growth: int) -> int:
    return max(i for i, t in enumerate(policy.tiers) if t.min_growth <= growth)


async def reverse(stub: TasksStub, member_id: str, order_id: str) -> points_pb2.LedgerEntry:
    request = tasks_service_pb2.ReverseOrderPointsRequest(member_id=member_id, order_id=order_id)
    return await stub.ReverseOrderPoints(request, metadata=GLOBEX)


async def test_a_reversal_takes_the_order_out_of_growth_but_spending_does_not(
    tasks_stub: TasksStub, members: Members
) -> None:
    """Growth is earnings net of reversals: task points plus an order's (still pending) points,
    less the order's reversal, is the task points alone; the spend in between changes nothing. The
    level raised by the order stays (downgrades wait for an evaluation), now at risk."""
    policy = await level_policy(tasks_stub)
    member = await members.new(GLOBEX)
    order = unique("o")
    await earn(tasks_stub, member, 400, metadata=GLOBEX)
    await earn(tasks_stub, member, 700, reason=ORDER, reference=order, window=14, metadata=GLOBEX)
    assert (await level(tasks_stub, member)).growth == 1100
    await spend(tasks_stub, member, 300, metadata=GLOBEX)
    assert (await level(tasks_stub, member)).growth == 1100

    reversal = await reverse(tasks_stub, member, order)
    assert (reversal.reason, reversal.delta, reversal.shortfall, reversal.reference) == (
        REVERSAL,
        -700,
        0,
        order,
    )
    after = await level(tasks_stub, member)
    peak, now = rank_for(policy, 1100), rank_for(policy, 400)
    following = policy.tiers[peak + 1] if peak + 1 < len(policy.tiers) else None
    assert (after.growth, after.level) == (400, policy.tiers[peak].code)
    assert after.next_level == (following.code if following else "")
    assert after.growth_to_next == (following.min_growth - 400 if following else 0)
    assert after.qualified_level == (policy.tiers[now].code if now < peak else "")
    balance_now = await balance(tasks_stub, member, metadata=GLOBEX)
    assert (balance_now.available, balance_now.pending) == (100, 0)
    # A second reversal returns the first and takes nothing more out of growth.
    assert await reverse(tasks_stub, member, order) == reversal
    assert (await level(tasks_stub, member)).growth == 400


async def test_spending_an_orders_points_before_its_reversal_does_not_keep_their_growth(
    tasks_stub: TasksStub, members: Members
) -> None:
    """Two members earn the same order points and have the order reversed; one spent most of the
    points first. Spending does not count in growth, and the order was taken back whole (what was
    spent is the reversal's shortfall), so both must be left with the same growth: none."""
    kept, spent = await members.new(GLOBEX), await members.new(GLOBEX)
    orders = {kept: unique("o"), spent: unique("o")}
    for m in (kept, spent):
        await earn(tasks_stub, m, 1500, reason=ORDER, reference=orders[m], metadata=GLOBEX)
    await spend(tasks_stub, spent, 1000, metadata=GLOBEX)
    plain, after_spending = (
        await reverse(tasks_stub, kept, orders[kept]),
        await reverse(tasks_stub, spent, orders[spent]),
    )
    assert (plain.delta, plain.shortfall) == (-1500, 0)
    assert (after_spending.delta, after_spending.shortfall) == (-500, 1000)
    assert (await level(tasks_stub, kept)).growth == 0
    assert (await level(tasks_stub, spent)).growth == 0
    # Nor does it keep a place on the leaderboard.
    request = tasks_service_pb2.GetLeaderboardRequest(period=tasks_service_pb2.LEADERBOARD_PERIOD_WEEK)
    for m in (kept, spent):
        request.member_id = m
        assert (await tasks_stub.GetLeaderboard(request, metadata=GLOBEX)).member.rank == 0
