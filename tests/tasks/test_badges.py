"""Badges over gRPC: defined by natural key, awarded once per member by a task's completion and by
sign-in streak milestones (a make-up that joins two runs too), listed, checked when a task names
them, erased with the member."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import grpc
from memberops.tasks.v1 import badges_pb2, tasks_pb2, tasks_service_pb2

from tests.conftest import ACME, unique
from tests.erasure_helpers import pseudonym
from tests.grpc_helpers import bad, failure
from tests.tasks.conftest import Clock
from tests.tasks.task_helpers import DAY, create, member, share, share_task, sign_in, sign_in_task

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def new_badge(stub: TasksStub, display_name: str = "签到达人", description: str = "") -> str:
    badge_id = unique("badge")
    request = tasks_service_pb2.CreateBadgeRequest(
        badge=badges_pb2.Badge(badge_id=badge_id, display_name=display_name, description=description)
    )
    created = await stub.CreateBadge(request, metadata=ACME)
    assert created.name == f"badges/{badge_id}"
    return created.name


async def held(stub: TasksStub, member_id: str) -> list[tuple[str, str]]:
    request = tasks_service_pb2.ListMemberBadgesRequest(member_id=member_id)
    answer = await stub.ListMemberBadges(request, metadata=ACME)
    return [(f"badges/{b.badge_id}", b.source) for b in answer.badges]


def milestones(*pairs: tuple[int, str]) -> list[tasks_pb2.StreakMilestone]:
    return [tasks_pb2.StreakMilestone(streak_days=days, badge=badge) for days, badge in pairs]


async def test_create_is_idempotent_by_natural_key_and_lists_in_pages(tasks_stub: TasksStub) -> None:
    name = await new_badge(tasks_stub, "Sharer", "shared ten products")
    badge_id = name.removeprefix("badges/")
    again = badges_pb2.Badge(badge_id=badge_id, display_name="Sharer", description="shared ten products")
    same = await tasks_stub.CreateBadge(tasks_service_pb2.CreateBadgeRequest(badge=again), metadata=ACME)
    assert (same.name, same.display_name) == (name, "Sharer")
    other = badges_pb2.Badge(badge_id=badge_id, display_name="Other")
    error = await failure(
        tasks_stub.CreateBadge(tasks_service_pb2.CreateBadgeRequest(badge=other), metadata=ACME)
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    seen: list[str] = []
    token = ""
    while True:
        request = tasks_service_pb2.ListBadgesRequest(page_size=2, page_token=token)
        page = await tasks_stub.ListBadges(request, metadata=ACME)
        assert len(page.badges) <= 2
        seen += [b.name for b in page.badges]
        token = page.next_page_token
        if not token:
            break
    assert name in seen and seen == sorted(seen)


async def test_bad_badges_and_bad_references_name_the_field(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    create_badge = tasks_stub.CreateBadge
    for badge, path in (
        (badges_pb2.Badge(badge_id="Bad Id", display_name="x"), "badge.badge_id"),
        (badges_pb2.Badge(badge_id=unique("b"), display_name=""), "badge.display_name"),
        (badges_pb2.Badge(badge_id=unique("b"), display_name="x" * 65), "badge.display_name"),
        (
            badges_pb2.Badge(badge_id=unique("b"), display_name="x", description="d" * 1025),
            "badge.description",
        ),
    ):
        await bad(create_badge(tasks_service_pb2.CreateBadgeRequest(badge=badge), metadata=ACME), path)
    await bad(
        tasks_stub.ListBadges(tasks_service_pb2.ListBadgesRequest(page_size=1001), metadata=ACME), "page_size"
    )
    await bad(
        tasks_stub.ListMemberBadges(tasks_service_pb2.ListMemberBadgesRequest(member_id=""), metadata=ACME),
        "member_id",
    )
    missing = f"badges/{unique('missing')}"
    await bad(create(tasks_stub, share_task(badge=missing)), "task.badge", "does not exist")
    await bad(create(tasks_stub, share_task(badge="shiny")), "task.badge", "badges/{badge_id}")
    existing = await new_badge(tasks_stub)
    task = sign_in_task()
    task.sign_in.milestones.extend(milestones((7, existing), (30, missing)))
    await bad(create(tasks_stub, task), "task.sign_in.milestones[1].badge", "does not exist")
    task = sign_in_task()
    task.sign_in.milestones.extend(milestones((1, existing), (7, existing), (7, existing)))
    await bad(create(tasks_stub, task), "task.sign_in.milestones[0].streak_days", "2-3650")
    await bad(create(tasks_stub, task), "task.sign_in.milestones[2].streak_days", "differ")
    # An update is checked the same way.
    task = share_task()
    await create(tasks_stub, task)
    task.badge = missing
    update = tasks_service_pb2.UpdateTaskRequest(task=task)
    await bad(tasks_stub.UpdateTask(update, metadata=ACME), "task.badge", "does not exist")


async def test_a_task_awards_its_badge_once_on_the_first_completion(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    badge = await new_badge(tasks_stub, "Sharer")
    definition = share_task(badge=badge)
    created = await create(tasks_stub, definition)
    assert created.badge == badge
    m = await member(tagging_stub)
    assert await held(tasks_stub, m) == []
    await asyncio.gather(*(share(tasks_stub, definition.task_id, m, f"t{i}") for i in range(4)))
    assert await held(tasks_stub, m) == [(badge, f"task {definition.task_id}")]
    answer = await tasks_stub.ListMemberBadges(
        tasks_service_pb2.ListMemberBadgesRequest(member_id=m), metadata=ACME
    )
    assert answer.badges[0].display_name == "Sharer" and answer.badges[0].member_id == m


async def test_a_completion_the_budget_refuses_awards_nothing(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    badge = await new_badge(tasks_stub)
    definition = share_task(badge=badge, reward_points=10, budget_points=5)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    error = await failure(share(tasks_stub, definition.task_id, m, "t"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await held(tasks_stub, m) == []


async def test_streak_milestones_award_their_badges_once(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(dt.datetime(2027, 3, 1, 9, tzinfo=dt.UTC))
    three, five = await new_badge(clocked_stub, "三天"), await new_badge(clocked_stub, "五天")
    definition = sign_in_task(start=clock.now() - DAY, end=clock.now() + 60 * DAY)
    definition.sign_in.milestones.extend(milestones((5, five), (3, three)))
    created = await create(clocked_stub, definition)
    assert [(m.streak_days, m.badge) for m in created.sign_in.milestones] == [(5, five), (3, three)]
    m = await member(tagging_stub)
    for _ in range(2):
        await sign_in(clocked_stub, definition.task_id, m)
        clock.advance(days=1)
    assert await held(clocked_stub, m) == []
    await sign_in(clocked_stub, definition.task_id, m)  # day 3
    assert await held(clocked_stub, m) == [(three, f"streak {definition.task_id} 3 days")]
    clock.advance(days=2)  # a day missed: the streak starts again
    for _ in range(4):
        await sign_in(clocked_stub, definition.task_id, m)
        clock.advance(days=1)
    await sign_in(clocked_stub, definition.task_id, m)  # day 5 of the second run
    assert await held(clocked_stub, m) == [
        (three, f"streak {definition.task_id} 3 days"),
        (five, f"streak {definition.task_id} 5 days"),
    ]


async def test_a_makeup_that_joins_two_runs_reaches_a_milestone(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, clock: Clock
) -> None:
    clock.set(dt.datetime(2027, 4, 1, 9, tzinfo=dt.UTC))
    badge = await new_badge(clocked_stub)
    definition = sign_in_task(makeups=1, start=clock.now() - DAY, end=clock.now() + 60 * DAY)
    definition.sign_in.milestones.extend(milestones((4, badge)))
    await create(clocked_stub, definition)
    m = await member(tagging_stub)
    for day in range(5):  # April 1, 2, then 4, 5 (April 3 missed)
        if day != 2:
            await sign_in(clocked_stub, definition.task_id, m)
        clock.advance(days=1)
    assert await held(clocked_stub, m) == []
    await sign_in(clocked_stub, definition.task_id, m, makeup=dt.date(2027, 4, 3))
    assert await held(clocked_stub, m) == [(badge, f"streak {definition.task_id} 4 days")]


async def test_erasure_moves_member_badges_to_the_pseudonym(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    badge = await new_badge(tasks_stub)
    definition = share_task(badge=badge)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    await share(tasks_stub, definition.task_id, m, "t")
    to = pseudonym()
    request = tasks_service_pb2.EraseMemberDataRequest(member_id=m, pseudonym=to)
    changed = dict((await tasks_stub.EraseMemberData(request, metadata=ACME)).changed_rows)
    assert changed["member_badges"] == 1
    assert await held(tasks_stub, m) == []
    assert [b for b, _ in await held(tasks_stub, to)] == [badge]
