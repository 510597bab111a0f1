"""Times in requests: a timestamp Python cannot hold, or one outside 2000-2100, is INVALID_ARGUMENT
naming the field (never INTERNAL); a run's `as_of` is never in the future of the service's clock,
so it cannot expire points or downgrade members ahead of time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tasks.v1 import tasks_pb2
from memberops.tasks.v1 import tasks_service_pb2 as pb

from tests.conftest import ACME, GLOBEX
from tests.grpc_helpers import bad
from tests.tasks.points_helpers import ROLLING, balance, earn
from tests.tasks.task_helpers import DAY, share_task, stamp

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Clock, Members

UTC = dt.UTC
YEAR_1 = -62_135_596_800
YEAR_9999 = 253_402_300_799

# (timestamp, words of the violation wherever a time is expected)
BAD_STAMPS: list[tuple[Timestamp, str]] = [
    (Timestamp(seconds=1_800_000_000, nanos=2_000_000_000), "valid timestamp"),
    (Timestamp(seconds=1_800_000_000, nanos=-1), "valid timestamp"),
    (Timestamp(seconds=2**62), "valid timestamp"),
    (Timestamp(seconds=-(2**62)), "valid timestamp"),
    (Timestamp(seconds=YEAR_1), "2000-01-01"),
    (Timestamp(seconds=YEAR_9999), ""),
]
STAMP_IDS = ["nanos-2e9", "nanos-minus-1", "seconds-2^62", "seconds-minus-2^62", "year-1", "year-9999"]


def _task_with(name: str, value: Timestamp) -> tasks_pb2.Task:
    definition = share_task()
    getattr(definition, name).CopyFrom(value)
    return definition


Call = Callable[["TasksStub", Timestamp], Awaitable[Any]]
CALLS: list[tuple[str, Call]] = [
    ("as_of", lambda s, t: s.ExpirePoints(pb.ExpirePointsRequest(as_of=t), metadata=ACME)),
    ("as_of", lambda s, t: s.EvaluateLevels(pb.EvaluateLevelsRequest(as_of=t), metadata=GLOBEX)),
    (
        "at",
        lambda s, t: s.GetLeaderboard(
            pb.GetLeaderboardRequest(period=pb.LEADERBOARD_PERIOD_WEEK, at=t), metadata=ACME
        ),
    ),
    (
        "task.start_time",
        lambda s, t: s.CreateTask(pb.CreateTaskRequest(task=_task_with("start_time", t)), metadata=ACME),
    ),
    (
        "task.end_time",
        lambda s, t: s.CreateTask(pb.CreateTaskRequest(task=_task_with("end_time", t)), metadata=ACME),
    ),
    (
        "task.start_time",
        lambda s, t: s.UpdateTask(pb.UpdateTaskRequest(task=_task_with("start_time", t)), metadata=ACME),
    ),
    (
        "task.end_time",
        lambda s, t: s.UpdateTask(pb.UpdateTaskRequest(task=_task_with("end_time", t)), metadata=ACME),
    ),
]
CALL_IDS = [
    "ExpirePoints",
    "EvaluateLevels",
    "GetLeaderboard",
    "CreateTask.start",
    "CreateTask.end",
    "UpdateTask.start",
    "UpdateTask.end",
]


@pytest.mark.parametrize(("path", "call"), CALLS, ids=CALL_IDS)
@pytest.mark.parametrize(("value", "words"), BAD_STAMPS, ids=STAMP_IDS)
async def test_a_time_out_of_range_is_invalid_argument(
    tasks_stub: TasksStub, path: str, call: Call, value: Timestamp, words: str
) -> None:
    await bad(call(tasks_stub, value), path, words)


@pytest.mark.parametrize(
    ("start", "end", "path", "words"),
    [
        (
            dt.datetime(1999, 12, 31, tzinfo=UTC),
            dt.datetime(2000, 2, 1, tzinfo=UTC),
            "task.start_time",
            "2000",
        ),
        (dt.datetime(2099, 6, 1, tzinfo=UTC), dt.datetime(2100, 1, 2, tzinfo=UTC), "task.end_time", "2100"),
        (dt.datetime(2101, 1, 1, tzinfo=UTC), dt.datetime(2101, 2, 1, tzinfo=UTC), "task.start_time", "2100"),
    ],
)
async def test_a_task_runs_between_2000_and_2100(
    tasks_stub: TasksStub, start: dt.datetime, end: dt.datetime, path: str, words: str
) -> None:
    definition = share_task(start=start, end=end)
    await bad(tasks_stub.CreateTask(pb.CreateTaskRequest(task=definition), metadata=ACME), path, words)


async def test_a_leaderboard_of_a_period_to_come_is_empty_not_an_error(tasks_stub: TasksStub) -> None:
    at = stamp(dt.datetime(2099, 12, 31, 23, tzinfo=UTC))
    reply = await tasks_stub.GetLeaderboard(
        pb.GetLeaderboardRequest(period=pb.LEADERBOARD_PERIOD_MONTH, at=at), metadata=ACME
    )
    assert list(reply.top) == []
    assert reply.end_time.ToDatetime(UTC) == dt.datetime(2100, 1, 1, tzinfo=UTC)


async def test_points_are_not_expired_ahead_of_time(tasks_stub: TasksStub, members: Members) -> None:
    member = await members.new(GLOBEX)
    await earn(tasks_stub, member, 30, policy=ROLLING, days=1, metadata=GLOBEX)
    for ahead in (dt.datetime(2099, 1, 1, tzinfo=UTC), dt.datetime.now(UTC) + 2 * DAY):
        request = pb.ExpirePointsRequest(as_of=stamp(ahead))
        await bad(tasks_stub.ExpirePoints(request, metadata=GLOBEX), "as_of", "future")
    assert (await balance(tasks_stub, member, metadata=GLOBEX)).available == 30


async def test_levels_are_not_evaluated_ahead_of_time(tasks_stub: TasksStub) -> None:
    request = pb.EvaluateLevelsRequest(as_of=stamp(dt.datetime(2099, 1, 1, tzinfo=UTC)))
    await bad(tasks_stub.EvaluateLevels(request, metadata=GLOBEX), "as_of", "future")


async def test_the_future_is_the_services_clocks(
    tasks_stub: TasksStub, clocked_stub: TasksStub, clock: Clock
) -> None:
    """A server whose clock reads a month ago refuses what one reading now accepts; a few minutes
    ahead of its clock (skew between the caller's and ours) is accepted."""
    real = dt.datetime.now(UTC)
    clock.set(real - 30 * DAY)
    try:
        past = stamp(real - 29 * DAY)
        await bad(clocked_stub.ExpirePoints(pb.ExpirePointsRequest(as_of=past), metadata=GLOBEX), "as_of")
        await bad(clocked_stub.EvaluateLevels(pb.EvaluateLevelsRequest(as_of=past), metadata=GLOBEX), "as_of")
        await tasks_stub.ExpirePoints(pb.ExpirePointsRequest(as_of=past), metadata=GLOBEX)
        skewed = stamp(real - 30 * DAY + dt.timedelta(minutes=4))
        await clocked_stub.ExpirePoints(pb.ExpirePointsRequest(as_of=skewed), metadata=GLOBEX)
        await clocked_stub.ExpirePoints(pb.ExpirePointsRequest(), metadata=GLOBEX)
    finally:
        clock.set(dt.datetime.now(UTC))
