"""Leaderboards by points earned in a week or month: top N, ties sharing a rank, a member's place.

The tenant is shared with other tests, so the members here earn far more than any other test's
(hundreds of millions, in earnings of at most 100,000,000) and hold the top places alone.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from memberops.tasks.v1 import tasks_service_pb2

from services.tasks.points.leaderboards import Period, period_bounds
from tests.conftest import ACME
from tests.grpc_helpers import bad
from tests.tasks.points_helpers import ORDER, earn, spend

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

WEEK = tasks_service_pb2.LEADERBOARD_PERIOD_WEEK
MONTH = tasks_service_pb2.LEADERBOARD_PERIOD_MONTH
BIG = 100_000_000


async def board(stub: TasksStub, **fields: Any) -> tasks_service_pb2.Leaderboard:
    return await stub.GetLeaderboard(tasks_service_pb2.GetLeaderboardRequest(**fields), metadata=ACME)


async def test_ties_share_a_rank_and_spending_moves_nobody(tasks_stub: TasksStub, members: Members) -> None:
    first, tied, third, reversed_, outsider = [await members.new(prefix="lb") for _ in range(5)]
    for member_id, earnings in ((first, 9), (tied, 9), (third, 8), (reversed_, 10)):
        for _ in range(earnings):
            await earn(tasks_stub, member_id, BIG)
    await spend(tasks_stub, first, BIG)  # spending does not lower what was earned
    # An order's points taken back by its reversal do not count.
    await earn(tasks_stub, reversed_, BIG, reason=ORDER, reference="order-lb")
    await tasks_stub.ReverseOrderPoints(
        tasks_service_pb2.ReverseOrderPointsRequest(member_id=reversed_, order_id="order-lb"),
        metadata=ACME,
    )

    reply = await board(tasks_stub, period=WEEK, top_n=3, member_id=third)
    top = [(p.member_id, p.points, p.rank) for p in reply.top]
    # Ranks 1, 2, 2: the third place is taken by the tie, so `third` ranks 4th, below the top 3.
    assert top == [(reversed_, 10 * BIG, 1), *sorted([(first, 9 * BIG, 2), (tied, 9 * BIG, 2)])]
    assert (reply.member.member_id, reply.member.points, reply.member.rank) == (third, 8 * BIG, 4)

    nobody = await board(tasks_stub, period=MONTH, member_id=outsider)
    assert (nobody.member.points, nobody.member.rank) == (0, 0)
    assert nobody.top[0].member_id == reversed_


async def test_a_past_period_has_none_of_this_weeks_points(tasks_stub: TasksStub, members: Members) -> None:
    member_id = await members.new(prefix="lb")
    await earn(tasks_stub, member_id, 7)
    last_month = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    stamp = tasks_service_pb2.GetLeaderboardRequest().at
    stamp.FromDatetime(last_month)
    reply = await board(tasks_stub, period=WEEK, at=stamp, member_id=member_id)
    assert reply.member.rank == 0
    assert reply.end_time.ToDatetime(dt.UTC) <= dt.datetime.now(dt.UTC) - dt.timedelta(days=33)


PERIODS = [
    # Sunday 20:00 UTC is Monday 04:00 in Shanghai: already the next week there.
    ("2026-11-22T20:00Z", "Asia/Shanghai", Period.WEEK, "2026-11-22T16:00Z", "2026-11-29T16:00Z"),
    ("2026-11-22T20:00Z", "UTC", Period.WEEK, "2026-11-16T00:00Z", "2026-11-23T00:00Z"),
    ("2026-12-31T23:30Z", "UTC", Period.MONTH, "2026-12-01T00:00Z", "2027-01-01T00:00Z"),
    # New York moves from EST to EDT on 8 March: the month starts at 05:00 UTC, ends at 04:00.
    ("2026-03-08T12:00Z", "America/New_York", Period.MONTH, "2026-03-01T05:00Z", "2026-04-01T04:00Z"),
]  # fmt: skip


@pytest.mark.parametrize(("at", "zone", "period", "start", "end"), PERIODS)
async def test_a_boards_period_is_taken_in_the_zone_asked(
    tasks_stub: TasksStub, at: str, zone: str, period: Period, start: str, end: str
) -> None:
    moment = tasks_service_pb2.GetLeaderboardRequest().at
    moment.FromDatetime(dt.datetime.fromisoformat(at))
    reply = await board(tasks_stub, period=int(period), at=moment, time_zone=zone)
    assert (reply.start_time.ToDatetime(dt.UTC), reply.end_time.ToDatetime(dt.UTC)) == (
        dt.datetime.fromisoformat(start),
        dt.datetime.fromisoformat(end),
    )


@pytest.mark.parametrize(("at", "zone", "period", "start", "end"), PERIODS)
def test_periods_are_calendar_weeks_and_months_in_the_zone(
    at: str, zone: str, period: Period, start: str, end: str
) -> None:
    got = period_bounds(period, dt.datetime.fromisoformat(at), ZoneInfo(zone))
    assert got == (dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "period"),
        ({"period": WEEK, "top_n": 101}, "top_n"),
        ({"period": WEEK, "top_n": -1}, "top_n"),
        ({"period": WEEK, "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"period": WEEK, "member_id": "x" * 129}, "member_id"),
    ],
)
async def test_bad_leaderboard_requests_name_the_field(
    tasks_stub: TasksStub, fields: dict[str, Any], field: str
) -> None:
    await bad(
        tasks_stub.GetLeaderboard(tasks_service_pb2.GetLeaderboardRequest(**fields), metadata=ACME), field
    )
