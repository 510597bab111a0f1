"""Task definitions and member calls the task tests share."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from memberops.tasks.v1 import tasks_pb2, tasks_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

DAY = dt.timedelta(days=1)


def stamp(at: dt.datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(at)
    return message


def date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def task_id() -> str:
    return unique("task")


def task(
    spec: str,
    message: Any,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    **fields: Any,
) -> tasks_pb2.Task:
    """A task of kind `spec` (the oneof field) valid from `start` (a year ago) to `end` (a year on)."""
    now = dt.datetime.now(dt.UTC)
    defaults: dict[str, Any] = {"task_id": task_id(), "reward_points": 10}
    if spec == "sign_in":
        defaults.pop("reward_points")
    built = tasks_pb2.Task(
        **{**defaults, **fields},
        start_time=stamp(start or now - 365 * DAY),
        end_time=stamp(end or now + 365 * DAY),
    )
    getattr(built, spec).CopyFrom(message)
    return built


def sign_in_task(
    rewards: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7), makeups: int = 0, **fields: Any
) -> tasks_pb2.Task:
    return task("sign_in", tasks_pb2.SignInSpec(streak_rewards=rewards, makeups_per_month=makeups), **fields)


def share_task(**fields: Any) -> tasks_pb2.Task:
    return task("share", tasks_pb2.ShareSpec(), **fields)


async def create(stub: TasksStub, definition: tasks_pb2.Task, metadata: Any = ACME) -> tasks_pb2.Task:
    return await stub.CreateTask(tasks_service_pb2.CreateTaskRequest(task=definition), metadata=metadata)


async def member(tagging: TaggingStub, metadata: Any = ACME, **profile: Any) -> str:
    """A new member, known to tagging (so the tasks service finds them)."""
    message = member_pb2.Member(member_id=unique(), profile=member_pb2.Profile(**profile))
    await tagging.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=message), metadata=metadata)
    return message.member_id


async def sign_in(
    stub: TasksStub,
    task_id: str,
    member_id: str,
    *,
    request_id: str | None = None,
    makeup: dt.date | None = None,
    metadata: Any = ACME,
) -> tasks_pb2.SignInRecord:
    request = tasks_service_pb2.SignInRequest(
        task=f"tasks/{task_id}",
        member_id=member_id,
        request_id=unique("req") if request_id is None else request_id,
    )
    if makeup is not None:
        request.makeup_day.CopyFrom(date(makeup))
    return await stub.SignIn(request, metadata=metadata)


async def share(
    stub: TasksStub,
    task_id: str,
    member_id: str,
    target: str,
    request_id: str | None = None,
    metadata: Any = ACME,
) -> tasks_pb2.ShareRecord:
    request = tasks_service_pb2.RecordShareRequest(
        task=f"tasks/{task_id}",
        member_id=member_id,
        target=target,
        request_id=unique("req") if request_id is None else request_id,
    )
    return await stub.RecordShare(request, metadata=metadata)


async def claim(
    stub: TasksStub, task_id: str, member_id: str, request_id: str | None = None, metadata: Any = ACME
) -> tasks_pb2.Completion:
    request = tasks_service_pb2.ClaimTaskRewardRequest(
        task=f"tasks/{task_id}",
        member_id=member_id,
        request_id=unique("req") if request_id is None else request_id,
    )
    return await stub.ClaimTaskReward(request, metadata=metadata)


async def streak(stub: TasksStub, task_id: str, member_id: str, metadata: Any = ACME) -> tasks_pb2.Streak:
    request = tasks_service_pb2.GetStreakRequest(task=f"tasks/{task_id}", member_id=member_id)
    return await stub.GetStreak(request, metadata=metadata)


async def member_tasks(
    stub: TasksStub, member_id: str, metadata: Any = ACME
) -> dict[str, tasks_pb2.MemberTask]:
    """Every open task of the member, by task id (all pages)."""
    found: dict[str, tasks_pb2.MemberTask] = {}
    token = ""
    while True:
        request = tasks_service_pb2.ListMemberTasksRequest(
            member_id=member_id, page_size=50, page_token=token
        )
        page = await stub.ListMemberTasks(request, metadata=metadata)
        found.update({item.task.task_id: item for item in page.member_tasks})
        token = page.next_page_token
        if not token:
            return found


async def get_task(stub: TasksStub, task_id: str, metadata: Any = ACME) -> tasks_pb2.Task:
    return await stub.GetTask(tasks_service_pb2.GetTaskRequest(name=f"tasks/{task_id}"), metadata=metadata)
