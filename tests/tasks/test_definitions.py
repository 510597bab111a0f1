"""Task definitions over gRPC: create, read, list, versioned updates, retirement, bad input."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from tests.audience import helpers as audience
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.task_helpers import DAY, create, get_task, share_task, sign_in_task, stamp, task

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


async def test_create_get_and_retry(tasks_stub: TasksStub) -> None:
    definition = sign_in_task(
        rewards=(5, 10, 20), makeups=2, display_name="Daily check-in", time_zone="Asia/Shanghai"
    )
    created = await create(tasks_stub, definition)
    assert created.name == f"tasks/{definition.task_id}"
    assert created.kind == tasks_pb2.TASK_KIND_SIGN_IN
    assert (created.version, created.state, created.budget_used) == (1, tasks_pb2.TASK_STATE_ACTIVE, 0)
    assert list(created.sign_in.streak_rewards) == [5, 10, 20]
    assert created.expiry_policy == points_pb2.EXPIRY_POLICY_NEVER
    assert await get_task(tasks_stub, definition.task_id) == created
    # The same content again is the same task; other content under the id is ALREADY_EXISTS.
    assert await create(tasks_stub, definition) == created
    other = tasks_pb2.Task()
    other.CopyFrom(definition)
    other.sign_in.streak_rewards.append(40)
    error = await failure(create(tasks_stub, other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_concurrent_creates_make_one_task(tasks_stub: TasksStub, db: Database) -> None:
    definition = share_task()
    results = await asyncio.gather(*(create(tasks_stub, definition) for _ in range(16)))
    assert len({r.create_time.ToNanoseconds() for r in results}) == 1
    async with db.transaction(TENANT_ACME) as conn:
        versions = await conn.fetchval(
            "SELECT count(*) FROM tasks.task_versions WHERE task_id = $1", definition.task_id
        )
    assert versions == 1


async def test_every_kind_round_trips(tasks_stub: TasksStub) -> None:
    specs = [
        ("invite", tasks_pb2.InviteSpec(trigger=tasks_pb2.INVITE_TRIGGER_FIRST_ORDER, invitee_points=5)),
        ("share", tasks_pb2.ShareSpec()),
        (
            "purchase",
            tasks_pb2.PurchaseSpec(
                measure=tasks_pb2.PURCHASE_MEASURE_ITEMS,
                target=10,
                brands=["acme"],
                skus=["s1", "s2"],
                window_days=90,
            ),
        ),
        (
            "profile",
            tasks_pb2.ProfileSpec(
                required_fields=[tasks_pb2.PROFILE_FIELD_CITY, tasks_pb2.PROFILE_FIELD_BIRTHDAY]
            ),
        ),
        ("visit", tasks_pb2.VisitSpec(page="campaign-618")),
        ("event", tasks_pb2.EventSpec(event_kind=facts_pb2.EVENT_KIND_CART, times=3, category="milk")),
    ]
    for spec, message in specs:
        definition = task(
            spec,
            message,
            expiry_policy=points_pb2.EXPIRY_POLICY_ROLLING_DAYS,
            expiry_days=30,
            budget_points=1000,
            claim_required=True,
        )
        created = await create(tasks_stub, definition)
        assert created.WhichOneof("spec") == spec
        assert getattr(created, spec) == message
        assert (created.expiry_days, created.budget_points, created.claim_required) == (30, 1000, True)


async def test_updates_are_versioned_and_guarded(tasks_stub: TasksStub) -> None:
    definition = share_task(budget_points=100)
    await create(tasks_stub, definition)
    changed = tasks_pb2.Task()
    changed.CopyFrom(definition)
    changed.reward_points = 25
    request = tasks_service_pb2.UpdateTaskRequest(task=changed, expected_version=1)
    # Copies of one update racing: one makes version 2, the others find it current.
    copies = await asyncio.gather(*(tasks_stub.UpdateTask(request, metadata=ACME) for _ in range(16)))
    assert {(copy.version, copy.reward_points) for copy in copies} == {(2, 25)}
    # A retry of the same update is harmless: the content is current, nothing changes.
    assert (await tasks_stub.UpdateTask(request, metadata=ACME)).version == 2
    # Another change against version 1 lost the race.
    changed.reward_points = 30
    racing = tasks_service_pb2.UpdateTaskRequest(task=changed, expected_version=1)
    stale = await failure(tasks_stub.UpdateTask(racing, metadata=ACME))
    assert stale.code() == grpc.StatusCode.ABORTED
    # The kind never changes.
    sign_in = sign_in_task(task_id=definition.task_id)
    await bad(
        tasks_stub.UpdateTask(tasks_service_pb2.UpdateTaskRequest(task=sign_in), metadata=ACME),
        "task.spec",
        "kind",
    )
    missing = share_task()
    error = await failure(
        tasks_stub.UpdateTask(tasks_service_pb2.UpdateTaskRequest(task=missing), metadata=ACME)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await get_task(tasks_stub, definition.task_id)).reward_points == 25


async def test_retire_is_final_and_listing_hides_retired(tasks_stub: TasksStub) -> None:
    definition = share_task()
    await create(tasks_stub, definition)
    name = f"tasks/{definition.task_id}"
    request = tasks_service_pb2.RetireTaskRequest(name=name)
    copies = await asyncio.gather(*(tasks_stub.RetireTask(request, metadata=ACME) for _ in range(16)))
    retired = copies[0]
    assert all(copy == retired for copy in copies)
    assert retired.state == tasks_pb2.TASK_STATE_RETIRED
    again = await tasks_stub.RetireTask(tasks_service_pb2.RetireTaskRequest(name=name), metadata=ACME)
    assert again == retired
    changed = tasks_pb2.Task()
    changed.CopyFrom(definition)
    changed.reward_points = 99
    error = await failure(
        tasks_stub.UpdateTask(tasks_service_pb2.UpdateTaskRequest(task=changed), metadata=ACME)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def listed(show_retired: bool) -> set[str]:
        ids: set[str] = set()
        token = ""
        while True:
            request = tasks_service_pb2.ListTasksRequest(
                page_size=3, page_token=token, show_retired=show_retired
            )
            page = await tasks_stub.ListTasks(request, metadata=ACME)
            ids.update(t.task_id for t in page.tasks)
            token = page.next_page_token
            if not token:
                return ids

    assert definition.task_id not in await listed(False)
    assert definition.task_id in await listed(True)


async def test_tasks_of_one_tenant_are_invisible_to_another(tasks_stub: TasksStub) -> None:
    definition = share_task()
    await create(tasks_stub, definition)
    error = await failure(get_task(tasks_stub, definition.task_id, metadata=GLOBEX))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_eligibility_audience_must_exist(tasks_stub: TasksStub, audience_stub: AudienceStub) -> None:
    missing = share_task(eligibility_audience=f"audiences/{unique('aud')}")
    await bad(create(tasks_stub, missing), "task.eligibility_audience", "does not exist")
    made = await audience.create(audience_stub, audience.in_batch(unique("batch")))
    created = await create(tasks_stub, share_task(eligibility_audience=f"audiences/{made.audience_id}"))
    assert created.eligibility_audience == f"audiences/{made.audience_id}"


NOW = dt.datetime.now(dt.UTC)
ITEMS, CITY = tasks_pb2.PURCHASE_MEASURE_ITEMS, tasks_pb2.PROFILE_FIELD_CITY


@pytest.mark.parametrize(
    ("definition", "path", "words"),
    [
        (share_task(task_id="Bad Id"), "task.task_id", "lower-case"),
        (share_task(reward_points=0), "task.reward_points", "positive"),
        (share_task(reward_points=-5), "task.reward_points", "positive"),
        (share_task(reward_points=10**12), "task.reward_points", "at most"),
        (share_task(end=NOW - 400 * DAY), "task.end_time", "after start_time"),
        (share_task(start=NOW, end=NOW + 4000 * DAY), "task.end_time", "3650"),
        (share_task(time_zone="Mars/Olympus"), "task.time_zone", "unknown time zone"),
        (share_task(budget_points=-1), "task.budget_points", "0 (no limit)"),
        (share_task(limits=tasks_pb2.TaskLimits(per_day=-1)), "task.limits.per_day", "0 (no limit)"),
        (share_task(expiry_policy=points_pb2.EXPIRY_POLICY_ROLLING_DAYS), "task.expiry_days", "1-3650"),
        (share_task(eligibility_audience="vip"), "task.eligibility_audience", "audiences/"),
        (sign_in_task(rewards=()), "task.sign_in.streak_rewards", "1-31"),
        (sign_in_task(rewards=(5, 0)), "task.sign_in.streak_rewards[1]", "positive"),
        (sign_in_task(reward_points=5), "task.reward_points", "streak_rewards"),
        (sign_in_task(limits=tasks_pb2.TaskLimits(per_day=2)), "task.limits.per_day", "once a day"),
        (sign_in_task(makeups=40), "task.sign_in.makeups_per_month", "0-31"),
        (task("invite", tasks_pb2.InviteSpec()), "task.invite.trigger", "INVITE_TRIGGER"),
        (task("purchase", tasks_pb2.PurchaseSpec(target=1)), "task.purchase.measure", "ITEMS"),
        (task("purchase", tasks_pb2.PurchaseSpec(measure=ITEMS, target=0)), "task.purchase.target", "1 to"),
        (
            task("purchase", tasks_pb2.PurchaseSpec(measure=ITEMS, target=1, window_days=-2)),
            "task.purchase.window_days",
            "0",
        ),
        (
            task("purchase", tasks_pb2.PurchaseSpec(measure=ITEMS, target=1, brands=[""])),
            "task.purchase.brands[0]",
            "1-64",
        ),
        (task("profile", tasks_pb2.ProfileSpec()), "task.profile.required_fields", "1-6"),
        (
            task("profile", tasks_pb2.ProfileSpec(required_fields=[CITY, CITY])),
            "task.profile.required_fields",
            "repeat",
        ),
        (
            task(
                "profile", tasks_pb2.ProfileSpec(required_fields=[CITY]), limits=tasks_pb2.TaskLimits(total=3)
            ),
            "task.limits",
            "once per member",
        ),
        (task("visit", tasks_pb2.VisitSpec()), "task.visit.page", "1-64"),
        (task("event", tasks_pb2.EventSpec(times=1)), "task.event.event_kind", "EventKind"),
        (
            task("event", tasks_pb2.EventSpec(event_kind=facts_pb2.EVENT_KIND_VIEW, times=0)),
            "task.event.times",
            "1-10,000",
        ),
        (tasks_pb2.Task(task_id="no-spec"), "task.spec", "exactly one"),
        (
            tasks_pb2.Task(task_id="no-times", share=tasks_pb2.ShareSpec(), reward_points=1),
            "task.start_time",
            "required",
        ),
    ],
)
async def test_bad_definitions_name_the_field_and_write_nothing(
    tasks_stub: TasksStub, db: Database, definition: tasks_pb2.Task, path: str, words: str
) -> None:
    await bad(create(tasks_stub, definition), path, words)
    async with db.transaction(TENANT_ACME) as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM tasks.task_definitions WHERE task_id = $1", definition.task_id
            )
            == 0
        )


async def test_bad_names(tasks_stub: TasksStub) -> None:
    await bad(
        tasks_stub.GetTask(tasks_service_pb2.GetTaskRequest(name="task-1"), metadata=ACME), "name", "tasks/"
    )
    missing = await failure(get_task(tasks_stub, unique("task")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    listing = tasks_service_pb2.ListTasksRequest(page_token="nonsense")
    await bad(tasks_stub.ListTasks(listing, metadata=ACME), "page_token", "token")
    expected = tasks_service_pb2.UpdateTaskRequest(task=share_task(), expected_version=-1)
    await bad(tasks_stub.UpdateTask(expected, metadata=ACME), "expected_version", "0 (any)")
    end = share_task()
    end.end_time.CopyFrom(stamp(NOW - 1000 * DAY))
    await bad(create(tasks_stub, end), "task.end_time", "after")
