"""Levels over gRPC: growth value (not the balance), upgrades at once, downgrades only after an
evaluation period and its grace, an evaluation safe to run twice, changes on the tasks feed.

Runs on globex, whose level policy each test sets first (evaluations cover a whole tenant).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
from memberops.tasks.v1 import levels_pb2, tasks_service_pb2

from services.tasks.levels import levels
from tests.conftest import GLOBEX, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.points_helpers import ORDER, earn, spend
from tests.tasks.task_helpers import stamp
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Clock, Members

UTC = dt.UTC


def tier(code: str, min_growth: int) -> levels_pb2.LevelTier:
    return levels_pb2.LevelTier(code=code, display_name=code.title(), min_growth=min_growth)


def policy(window_days: int = 365, grace_days: int = 7, **fields: Any) -> levels_pb2.LevelPolicy:
    tiers = fields.pop("tiers", [tier("bronze", 0), tier("silver", 1000), tier("gold", 5000)])
    return levels_pb2.LevelPolicy(
        tiers=tiers, window_days=window_days, evaluation_period_months=1, grace_days=grace_days, **fields
    )


async def set_policy(stub: TasksStub, message: levels_pb2.LevelPolicy) -> levels_pb2.LevelPolicy:
    request = tasks_service_pb2.UpdateLevelPolicyRequest(policy=message)
    return await stub.UpdateLevelPolicy(request, metadata=GLOBEX)


async def level(stub: TasksStub, member_id: str) -> levels_pb2.MemberLevel:
    return await stub.GetMemberLevel(
        tasks_service_pb2.GetMemberLevelRequest(member_id=member_id), metadata=GLOBEX
    )


async def evaluate(stub: TasksStub, as_of: dt.datetime) -> tasks_service_pb2.EvaluateLevelsResponse:
    """An evaluation as of a time `stub`'s clock has reached (an evaluation never runs ahead)."""
    request = tasks_service_pb2.EvaluateLevelsRequest(as_of=stamp(as_of))
    return await stub.EvaluateLevels(request, metadata=GLOBEX)


Change = tuple[str, str, bool, int]


async def feed(stub: TasksStub) -> list[tuple[str, Change]]:
    """The tasks feed as settled now: (member, (from, to, upgrade, growth))."""
    found: list[tuple[str, Change]] = []
    cursor = ""
    while True:
        request = tasks_service_pb2.ReadTasksFeedRequest(after_cursor=cursor, limit=50)
        page = await stub.ReadTasksFeed(request, metadata=GLOBEX)
        for e in page.entries:
            c = e.level_change
            found.append((e.member_id, (c.from_level, c.to_level, c.upgrade, c.growth)))
        if page.next_cursor == cursor:
            return found
        cursor = page.next_cursor


async def changes(stub: TasksStub, members: Members, member_id: str) -> list[Change]:
    """The member's level changes on the tasks feed, once every change committed so far is on it:
    a marker member's upgrade, committed after them, has to appear first (entries settle only
    when no older transaction still runs)."""
    marker = await members.new(GLOBEX, prefix="marker")
    await earn(stub, marker, 10_000, metadata=GLOBEX)

    async def settled() -> list[tuple[str, Any]]:
        entries = await feed(stub)
        return entries if marker in {m for m, _ in entries} else []

    entries = await eventually(settled, "did the tasks feed settle")
    return [change for m, change in entries if m == member_id]


def month_after(at: dt.datetime) -> dt.datetime:
    """The first instant of the UTC month after the one holding `at`."""
    first = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + dt.timedelta(days=32)).replace(day=1)


async def test_growth_not_the_balance_decides_and_upgrades_are_at_once(
    tasks_stub: TasksStub, members: Members
) -> None:
    await set_policy(tasks_stub, policy())
    m = await members.new(GLOBEX)
    assert (await level(tasks_stub, m)).level == "bronze"
    await earn(tasks_stub, m, 600, metadata=GLOBEX)
    before = await level(tasks_stub, m)
    assert (before.level, before.growth, before.next_level, before.growth_to_next) == (
        "bronze",
        600,
        "silver",
        400,
    )
    await earn(tasks_stub, m, 500, reason=ORDER, reference=unique("o"), metadata=GLOBEX)
    now = await level(tasks_stub, m)
    assert (now.level, now.growth, now.next_level) == ("silver", 1100, "gold")
    assert now.HasField("since_time")
    assert await changes(tasks_stub, members, m) == [("bronze", "silver", True, 1100)]
    # Spending leaves growth and level alone; so does an operator's correction.
    await spend(tasks_stub, m, 1000, metadata=GLOBEX)
    adjust = tasks_service_pb2.AdjustPointsRequest(
        member_id=m, delta=10_000, operator="ops", note="goodwill", request_id=unique("req")
    )
    await tasks_stub.AdjustPoints(adjust, metadata=GLOBEX)
    after = await level(tasks_stub, m)
    assert (after.level, after.growth) == ("silver", 1100)
    assert await changes(tasks_stub, members, m) == [("bronze", "silver", True, 1100)]


async def test_downgrades_wait_for_the_period_end_and_its_grace_and_apply_once(
    tasks_stub: TasksStub, clocked_stub: TasksStub, clock: Clock, members: Members
) -> None:
    # A one-day window: growth earned now is gone from it by the next period's end.
    await set_policy(tasks_stub, policy(window_days=1, grace_days=7))
    m = await members.new(GLOBEX)
    earned_at = dt.datetime.now(UTC)
    await earn(tasks_stub, m, 1200, metadata=GLOBEX)
    assert (await level(tasks_stub, m)).level == "silver"
    next_month = month_after(earned_at)

    # Inside the grace after the next period's end, and before it: no downgrade yet.
    for as_of in (next_month - dt.timedelta(hours=1), next_month + dt.timedelta(days=3)):
        clock.set(as_of)
        early = await evaluate(clocked_stub, as_of)
        assert early.downgraded == 0
        assert (await level(tasks_stub, m)).level == "silver"

    # The grace has passed: the member held silver through the period's end and growth a week
    # after it supports bronze.
    # Evaluations racing each other (a job started twice) apply it once, as the feed shows below.
    late = next_month + dt.timedelta(days=8)
    clock.set(late)
    runs = await asyncio.gather(*(evaluate(clocked_stub, late) for _ in range(8)))
    assert {run.period_end_time.ToDatetime(UTC) for run in runs} == {next_month}
    assert sum(run.downgraded for run in runs) >= 1
    assert (await level(tasks_stub, m)).level == "bronze"
    again = await evaluate(clocked_stub, late)
    assert (again.upgraded, again.downgraded) == (0, 0)
    assert await changes(tasks_stub, members, m) == [
        ("bronze", "silver", True, 1200),
        ("silver", "bronze", False, 0),
    ]


async def test_a_member_below_their_level_sees_when_it_would_drop(
    tasks_stub: TasksStub, members: Members
) -> None:
    await set_policy(tasks_stub, policy(tiers=[tier("bronze", 0), tier("silver", 100), tier("gold", 5000)]))
    m = await members.new(GLOBEX)
    await earn(tasks_stub, m, 150, metadata=GLOBEX)
    assert (await level(tasks_stub, m)).level == "silver"
    # Raising the threshold leaves the member at silver until a review, with a date for it.
    await set_policy(tasks_stub, policy())
    now = await level(tasks_stub, m)
    assert (now.level, now.qualified_level, now.growth_to_next) == ("silver", "bronze", 4850)
    review = now.review_time.ToDatetime(UTC)
    today = dt.datetime.now(UTC)
    assert today < review <= month_after(today) + dt.timedelta(days=7, minutes=1)


async def test_policy_updates_keep_codes_and_are_versioned(tasks_stub: TasksStub) -> None:
    base = await set_policy(tasks_stub, policy())
    same = await set_policy(tasks_stub, policy())
    assert same.version == base.version
    richer = policy(
        tiers=[tier("bronze", 0), tier("silver", 1000), tier("gold", 5000), tier("platinum", 20_000)]
    )
    copies = await asyncio.gather(*(set_policy(tasks_stub, richer) for _ in range(8)))
    grown = copies[0]
    assert all(copy == grown for copy in copies)
    assert (grown.version, [t.code for t in grown.tiers][-1]) == (base.version + 1, "platinum")
    stale = tasks_service_pb2.UpdateLevelPolicyRequest(policy=policy(), expected_version=base.version)
    assert (
        await failure(tasks_stub.UpdateLevelPolicy(stale, metadata=GLOBEX))
    ).code() == grpc.StatusCode.ABORTED
    dropped = policy(tiers=[tier("bronze", 0), tier("gold", 5000)])
    await bad(set_policy(tasks_stub, dropped), "policy.tiers", "keep every current code")
    await bad(
        set_policy(tasks_stub, policy(tiers=[tier("bronze", 10), tier("silver", 20)])),
        "policy.tiers[0].min_growth",
        "0",
    )
    await bad(
        set_policy(tasks_stub, policy(tiers=[tier("bronze", 0), tier("silver", 1000), tier("gold", 900)])),
        "policy.tiers[2].min_growth",
        "above",
    )
    await bad(set_policy(tasks_stub, policy(window_days=0)), "policy.window_days", "1-3650")
    await bad(set_policy(tasks_stub, policy(grace_days=400)), "policy.grace_days", "0-365")
    await bad(set_policy(tasks_stub, policy(time_zone="Nowhere/City")), "policy.time_zone", "unknown")
    wrong_period = policy()
    wrong_period.evaluation_period_months = 5
    await bad(set_policy(tasks_stub, wrong_period), "policy.evaluation_period_months", "1, 2, 3")
    await bad(
        tasks_stub.GetMemberLevel(tasks_service_pb2.GetMemberLevelRequest(), metadata=GLOBEX), "member_id"
    )
    await bad(
        tasks_stub.ReadTasksFeed(tasks_service_pb2.ReadTasksFeedRequest(after_cursor="x"), metadata=GLOBEX),
        "after_cursor",
    )
    await set_policy(tasks_stub, richer)
    assert (
        await tasks_stub.GetLevelPolicy(tasks_service_pb2.GetLevelPolicyRequest(), metadata=GLOBEX)
    ) == grown


def test_review_decisions() -> None:
    """The downgrade rule on plain values: only a level held through the period end is reviewed,
    and growth at the evaluation lifts the decision."""
    end = dt.datetime(2027, 2, 1, tzinfo=UTC)
    before, after = end - dt.timedelta(days=3), end + dt.timedelta(days=2)
    assert levels.decide(held=2, since=before, period_end=end, at_review=0, now=0) == 0
    assert levels.decide(held=2, since=before, period_end=end, at_review=1, now=0) == 1
    assert levels.decide(held=2, since=before, period_end=end, at_review=0, now=2) == 2  # earned back
    assert levels.decide(held=2, since=after, period_end=end, at_review=0, now=0) == 2  # raised after the end
    quarterly = levels.Policy(levels.DEFAULT_POLICY.tiers, 365, 3, 10, "Asia/Shanghai")
    # Quarters start Jan 1, Apr 1, … in Shanghai (16:00 UTC the day before); the grace is 10 days.
    at = dt.datetime(2027, 4, 10, 12, tzinfo=UTC)
    assert levels.review_boundary(quarterly, at) == dt.datetime(2026, 12, 31, 16, tzinfo=UTC)
    at = dt.datetime(2027, 4, 10, 17, tzinfo=UTC)
    assert levels.review_boundary(quarterly, at) == dt.datetime(2027, 3, 31, 16, tzinfo=UTC)
