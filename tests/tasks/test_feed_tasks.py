"""Tasks that learn from tagging's feed: purchases (and their refunds), events, visits, profiles and
invite triggers, applied once across failed rounds, replicas and retries.

Facts go to tagging only, as the backend sends them. Most tests use initech, whose feed the tests'
own follower applies round by round; one checks the service's background loop on acme.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.config import Settings
from runtime.db import Database
from runtime.errors import Unavailable
from services.tasks.feed.follower import FeedFollower
from services.tasks.peers import Peers
from tests.audience import helpers as audience
from tests.conftest import ACME, INITECH, TENANT_INITECH, unique
from tests.grpc_helpers import bad, failure
from tests.tasks import task_helpers
from tests.tasks.conftest import Clock
from tests.tasks.feed_helpers import drain, event, followed, order, refund, registered, until
from tests.tasks.points_helpers import all_entries, balance, spend
from tests.tasks.task_helpers import DAY, member, member_tasks, task

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

ITEMS, ORDERS, AMOUNT = (
    tasks_pb2.PURCHASE_MEASURE_ITEMS,
    tasks_pb2.PURCHASE_MEASURE_ORDERS,
    tasks_pb2.PURCHASE_MEASURE_AMOUNT,
)
REGISTER, FIRST_ORDER = tasks_pb2.INVITE_TRIGGER_REGISTER, tasks_pb2.INVITE_TRIGGER_FIRST_ORDER
CART, VIEW = facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_VIEW
PAID, REVERSED = tasks_pb2.COMPLETION_STATE_PAID, tasks_pb2.COMPLETION_STATE_REVERSED


# The tasks the running test created, retired when it ends (`_retire_created`).
_created: list[tuple[str, Any]] = []


async def create(stub: TasksStub, definition: tasks_pb2.Task, metadata: Any = ACME) -> tasks_pb2.Task:
    """task_helpers.create, remembering the task so it retires with the test."""
    made = await task_helpers.create(stub, definition, metadata=metadata)
    _created.append((definition.task_id, metadata))
    return made


@pytest.fixture(autouse=True)
async def _retire_created(tasks_stub: TasksStub) -> AsyncIterator[None]:
    """Initech and acme are every test file's tenants, and several tasks here count any order:
    left active, they would pay for (and on refunds take back from) other files' orders, which
    then see points no task of theirs gave. So each test's tasks retire when it ends."""
    yield
    while _created:
        task_id, metadata = _created.pop()
        retire = tasks_service_pb2.RetireTaskRequest(name=f"tasks/{task_id}")
        await tasks_stub.RetireTask(retire, metadata=metadata)


def purchase(measure: int, target: int, **fields: object) -> tasks_pb2.Task:
    spec_fields = {k: fields.pop(k) for k in ("categories", "brands", "skus", "window_days") if k in fields}
    return task("purchase", tasks_pb2.PurchaseSpec(measure=measure, target=target, **spec_fields), **fields)  # type: ignore[arg-type]


async def mine(
    stub: TasksStub, member_id: str, task_id: str, metadata: object = INITECH
) -> tasks_pb2.MemberTask:
    return (await member_tasks(stub, member_id, metadata=metadata))[task_id]


async def completions_of(db: Database, task_id: str, member_id: str) -> list[tuple[int, int]]:
    """(points, state) of the member's completions, oldest first."""
    async with db.transaction(TENANT_INITECH) as conn:
        rows = await conn.fetch(
            """SELECT points, state FROM tasks.completions WHERE task_id = $1 AND member_id = $2
               ORDER BY completion_id""",
            task_id,
            member_id,
        )
    return [(r["points"], r["state"]) for r in rows]


async def test_a_purchase_task_completed_then_refunded_leaves_a_consistent_ledger(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    definition = purchase(ITEMS, 3, brands=["acme"], reward_points=50, budget_points=1000)
    await create(tasks_stub, definition, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH)
    first = await order(tagging_stub, m, [("s1", "milk", "acme", 2, 500), ("s2", "milk", "other", 5, 100)])
    await followed(follower, lambda: _progress_is(tasks_stub, m, definition.task_id, 2))
    await order(tagging_stub, m, [("s1", "milk", "acme", 1, 500)])
    await followed(follower, lambda: _balance_is(tasks_stub, m, 50))
    assert await completions_of(db, definition.task_id, m) == [(50, PAID)]
    await spend(tasks_stub, m, 30, metadata=INITECH)

    # Returning one acme item of the first order: 2 items, below the target, so the completion goes.
    await refund(tagging_stub, first, {"0": 1}, 500)
    await followed(follower, lambda: _progress_is(tasks_stub, m, definition.task_id, 2))
    assert await completions_of(db, definition.task_id, m) == [(50, REVERSED)]
    entries = await all_entries(tasks_stub, m, metadata=INITECH)
    reversal = entries[0]
    assert (reversal.reason, reversal.delta, reversal.shortfall) == (points_pb2.REASON_TASK_REVERSAL, -20, 30)
    assert reversal.reference == definition.task_id
    after = await balance(tasks_stub, m, metadata=INITECH)
    assert after.available == 0
    assert sum(e.delta for e in entries) == after.available
    # Returning the other brand changes nothing; buying again completes anew.
    await refund(tagging_stub, first, {"1": 5}, 500)
    await order(tagging_stub, m, [("s9", "tea", "acme", 1, 100)])
    await followed(follower, lambda: _balance_is(tasks_stub, m, 50))
    assert await completions_of(db, definition.task_id, m) == [(50, REVERSED), (50, PAID)]
    got = await tasks_stub.GetTask(
        tasks_service_pb2.GetTaskRequest(name=f"tasks/{definition.task_id}"), metadata=INITECH
    )
    assert got.budget_used == 50 + 30  # the second completion, and the 30 spent before the reversal


async def test_amounts_orders_and_an_enrolment_window(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    spend_task = purchase(AMOUNT, 10_000, reward_points=7)
    orders_task = purchase(ORDERS, 2, categories=["tea"], window_days=30, reward_points=9)
    for definition in (spend_task, orders_task):
        await create(tasks_stub, definition, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH)
    # Before enrolment: counts for the amount task, not for the enrolment task.
    await order(tagging_stub, m, [("t1", "tea", "b", 1, 6_000)], amount=5_500)
    await followed(follower, lambda: _progress_is(tasks_stub, m, spend_task.task_id, 5_500))
    assert (await mine(tasks_stub, m, orders_task.task_id)).state == tasks_pb2.MEMBER_TASK_STATE_NOT_ENROLLED
    enrol = tasks_service_pb2.EnrolTaskRequest(task=f"tasks/{orders_task.task_id}", member_id=m)
    await tasks_stub.EnrolTask(enrol, metadata=INITECH)
    await order(tagging_stub, m, [("t1", "tea", "b", 1, 3_000), ("c1", "coffee", "b", 1, 2_000)])
    await order(tagging_stub, m, [("c1", "coffee", "b", 1, 2_000)])
    await followed(follower, lambda: _balance_is(tasks_stub, m, 7))  # 10,500 spent
    listed = await mine(tasks_stub, m, orders_task.task_id)
    assert (listed.progress, listed.target, listed.completions) == (1, 2, 0)  # one tea order since enrolling
    await order(tagging_stub, m, [("t2", "tea", "b", 2, 100)])
    await followed(follower, lambda: _balance_is(tasks_stub, m, 16))
    assert (await mine(tasks_stub, m, orders_task.task_id)).completions == 1


async def test_events_visits_and_profiles_complete_from_the_feed(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    carts = task("event", tasks_pb2.EventSpec(event_kind=CART, times=2, category="milk"), reward_points=3)
    visit = task("visit", tasks_pb2.VisitSpec(page="campaign-618"), reward_points=4)
    profile = task(
        "profile",
        tasks_pb2.ProfileSpec(
            required_fields=[tasks_pb2.PROFILE_FIELD_CITY, tasks_pb2.PROFILE_FIELD_NICKNAME]
        ),
        reward_points=5,
    )
    for definition in (carts, visit, profile):
        await create(tasks_stub, definition, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH, city="Hangzhou")
    for _ in range(5):
        await event(tagging_stub, m, CART, category="milk")
    await event(tagging_stub, m, CART, category="tea")
    for _ in range(2):
        await event(tagging_stub, m, VIEW, channel="campaign-618")
    await event(tagging_stub, m, VIEW, channel="home")
    await followed(follower, lambda: _balance_is(tasks_stub, m, 3 + 3 + 4))
    assert (
        await mine(tasks_stub, m, carts.task_id)
    ).progress == 1  # 5 carts: 2 completions and 1 towards a third
    assert (await mine(tasks_stub, m, visit.task_id)).state == tasks_pb2.MEMBER_TASK_STATE_COMPLETED
    assert (await mine(tasks_stub, m, profile.task_id)).state == tasks_pb2.MEMBER_TASK_STATE_OPEN
    named = member_pb2.Member(member_id=m, profile=member_pb2.Profile(city="Hangzhou", nickname="Lin"))
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=named), metadata=INITECH)
    await followed(follower, lambda: _balance_is(tasks_stub, m, 15))
    # Completing it again (another profile change) earns nothing more.
    named.profile.city = "Suzhou"
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=named), metadata=INITECH)
    await event(tagging_stub, m, VIEW, channel="campaign-618")
    marker = await member(tagging_stub, metadata=INITECH)
    await event(tagging_stub, marker, CART, category="milk")
    await event(tagging_stub, marker, CART, category="milk")
    await followed(follower, lambda: _balance_is(tasks_stub, marker, 3))
    assert (await balance(tasks_stub, m, metadata=INITECH)).available == 15


async def test_invites_pay_both_sides_when_the_invitee_registers_or_first_buys(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    on_register = task(
        "invite",
        tasks_pb2.InviteSpec(trigger=REGISTER, invitee_points=5),
        reward_points=20,
        limits=tasks_pb2.TaskLimits(per_day=2),
    )
    on_order = task("invite", tasks_pb2.InviteSpec(trigger=FIRST_ORDER), reward_points=30)
    for definition in (on_register, on_order):
        await create(tasks_stub, definition, metadata=INITECH)
    inviter = await member(tagging_stub, metadata=INITECH)
    newcomer = unique()  # not a member yet
    invited = await _invite(tasks_stub, on_register.task_id, inviter, newcomer)
    assert invited.state == tasks_pb2.INVITE_STATE_PENDING
    upsert = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=newcomer))
    await tagging_stub.UpsertMember(upsert, metadata=INITECH)
    await followed(follower, lambda: _balance_is(tasks_stub, inviter, 20))
    assert (await balance(tasks_stub, newcomer, metadata=INITECH)).available == 5

    # Registered already (and seen by the follower): the invite completes when it is recorded.
    joined = await member(tagging_stub, metadata=INITECH)
    await followed(follower, lambda: registered(db, joined))
    at_once = await _invite(tasks_stub, on_register.task_id, inviter, joined)
    assert at_once.state == tasks_pb2.INVITE_STATE_COMPLETED
    assert (at_once.inviter_completion.points, at_once.invitee_completion.points) == (20, 5)

    # The inviter's daily cap, re-invites and self-invites.
    refused = unique()
    capped = await failure(_invite(tasks_stub, on_register.task_id, inviter, refused))
    assert capped.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with db.transaction(TENANT_INITECH) as conn:
        kept = await conn.fetchval(
            """SELECT (SELECT count(*) FROM tasks.invites WHERE invitee_member_id = $1)
                    + (SELECT count(*) FROM tasks.member_facts WHERE member_id = $1)""",
            refused,
        )
    assert kept == 0  # nothing written for a refused invite
    again = await failure(_invite(tasks_stub, on_order.task_id, inviter, newcomer))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "invited once" in (again.details() or "")
    await bad(_invite(tasks_stub, on_order.task_id, inviter, inviter), "invitee_member_id", "themselves")

    # First order: pending until the invitee buys.
    buyer = await member(tagging_stub, metadata=INITECH)
    pending = await _invite(tasks_stub, on_order.task_id, inviter, buyer)
    assert pending.state == tasks_pb2.INVITE_STATE_PENDING
    await order(tagging_stub, buyer, [("s", "c", "b", 1, 100)])
    await followed(follower, lambda: _balance_is(tasks_stub, inviter, 20 + 20 + 30))
    assert (
        await balance(tasks_stub, buyer, metadata=INITECH)
    ).available == 0  # no invitee points on this task


async def test_only_new_members_can_be_invited(
    clocked_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, clock: Clock, db: Database
) -> None:
    clock.set(dt.datetime.now(dt.UTC))
    definition = task("invite", tasks_pb2.InviteSpec(trigger=REGISTER), reward_points=1)
    await create(clocked_stub, definition, metadata=INITECH)
    inviter = await member(tagging_stub, metadata=INITECH)
    old = await member(tagging_stub, metadata=INITECH)
    await followed(follower, lambda: registered(db, old))
    clock.advance(days=2)
    error = await failure(_invite(clocked_stub, definition.task_id, inviter, old))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only new members" in (error.details() or "")


async def test_a_failed_round_applies_nothing_and_the_next_applies_once(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    audience_stub: AudienceStub,
    follower: FeedFollower,
    tasks_settings: Settings,
    db: Database,
) -> None:
    batch = unique("batch")
    made = await audience.create(audience_stub, audience.in_batch(batch), metadata=INITECH)
    definition = purchase(ORDERS, 1, reward_points=11, eligibility_audience=f"audiences/{made.audience_id}")
    await create(tasks_stub, definition, metadata=INITECH)
    await drain(follower)
    m = await audience.member(tagging_stub, batch, metadata=INITECH)
    await order(tagging_stub, m, [("s", "c", "b", 1, 100)])
    # A follower whose audience service is down: its round fails before committing anything.
    down = Peers(dataclasses.replace(tasks_settings, audience_address="127.0.0.1:1"))
    broken = FeedFollower(db, down, down, frozenset({TENANT_INITECH}), lambda: dt.datetime.now(dt.UTC))
    failed = False

    async def broken_round() -> None:
        nonlocal failed
        try:
            await broken.follow_once(TENANT_INITECH)
        except Unavailable:
            failed = True

    async def has_failed() -> bool:
        return failed

    try:
        await until(has_failed, broken_round)
    finally:
        await down.close()
    assert await completions_of(db, definition.task_id, m) == []
    assert (await mine(tasks_stub, m, definition.task_id)).progress == 0
    # Two healthy replicas race for the same batch: it is applied once.
    await followed(follower, lambda: _balance_is(tasks_stub, m, 11))
    await asyncio.gather(drain(follower), drain(follower))
    assert await completions_of(db, definition.task_id, m) == [(11, PAID)]
    assert [e.delta for e in await all_entries(tasks_stub, m, metadata=INITECH)] == [11]


async def test_the_services_own_loop_follows_tagging(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    definition = purchase(ITEMS, 2, reward_points=13)
    await create(tasks_stub, definition, metadata=ACME)
    m = await member(tagging_stub, metadata=ACME)
    await order(tagging_stub, m, [("s", "c", "b", 2, 100)], metadata=ACME)

    async def paid() -> bool:
        return (await balance(tasks_stub, m, metadata=ACME)).available == 13

    await until(paid, lambda: asyncio.sleep(0.1))
    assert (await mine(tasks_stub, m, definition.task_id, metadata=ACME)).completions == 1


async def test_a_task_defined_later_counts_only_later_orders_in_its_period(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    now = dt.datetime.now(dt.UTC)
    m = await member(tagging_stub, metadata=INITECH)
    await order(tagging_stub, m, [("s", "c", "b", 1, 100)], paid=now - 3 * DAY)
    await drain(follower)
    definition = purchase(ORDERS, 1, reward_points=2, start=now - 2 * DAY)
    await create(tasks_stub, definition, metadata=INITECH)
    await order(tagging_stub, m, [("s", "c", "b", 1, 100)], paid=now - 5 * DAY)  # before the period
    await order(tagging_stub, m, [("s", "c", "b", 1, 100)])
    await followed(follower, lambda: _balance_is(tasks_stub, m, 2))
    assert (await mine(tasks_stub, m, definition.task_id)).completions == 1


# The request id each invitee was invited under (first successful invite), so a test can retry it.
_requests: dict[str, str] = {}


async def _invite(stub: TasksStub, task_id: str, inviter: str, invitee: str) -> tasks_pb2.Invite:
    request_id = unique("req")
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{task_id}", inviter_member_id=inviter, invitee_member_id=invitee, request_id=request_id
    )
    invite = await stub.RecordInvite(request, metadata=INITECH)
    _requests.setdefault(invitee, request_id)
    return invite


async def _progress_is(stub: TasksStub, member_id: str, task_id: str, value: int) -> bool:
    return (await mine(stub, member_id, task_id)).progress == value


async def _balance_is(stub: TasksStub, member_id: str, value: int) -> bool:
    return (await balance(stub, member_id, metadata=INITECH)).available == value


async def test_concurrent_invites_of_one_member_record_one(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    definition = task("invite", tasks_pb2.InviteSpec(trigger=FIRST_ORDER), reward_points=1)
    await create(tasks_stub, definition, metadata=INITECH)
    inviters = [await member(tagging_stub, metadata=INITECH) for _ in range(8)]
    invitee = unique()
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{definition.task_id}",
        inviter_member_id=inviters[0],
        invitee_member_id=invitee,
        request_id=unique("req"),
    )
    same = await asyncio.gather(*(tasks_stub.RecordInvite(request, metadata=INITECH) for _ in range(16)))
    assert all(s == same[0] for s in same)

    async def rival(inviter: str) -> grpc.StatusCode:
        try:
            await _invite(tasks_stub, definition.task_id, inviter, invitee)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    assert set(await asyncio.gather(*(rival(i) for i in inviters[1:]))) == {grpc.StatusCode.ALREADY_EXISTS}
    unknown = await failure(_invite(tasks_stub, definition.task_id, unique(), unique()))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    empty = tasks_service_pb2.RecordInviteRequest(task=f"tasks/{definition.task_id}", request_id="r")
    await bad(tasks_stub.RecordInvite(empty, metadata=INITECH), "inviter_member_id", "required")


async def test_a_feed_completion_the_budget_cannot_pay_leaves_nothing(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    definition = purchase(ORDERS, 1, reward_points=40, budget_points=60)
    await create(tasks_stub, definition, metadata=INITECH)
    first, second = await member(tagging_stub, metadata=INITECH), await member(tagging_stub, metadata=INITECH)
    await order(tagging_stub, first, [("s", "c", "b", 1, 100)])
    await order(tagging_stub, second, [("s", "c", "b", 1, 100)])
    await followed(follower, lambda: _progress_is(tasks_stub, second, definition.task_id, 1))
    assert await completions_of(db, definition.task_id, first) == [(40, PAID)]
    assert await completions_of(db, definition.task_id, second) == []
    entries = await all_entries(tasks_stub, second, metadata=INITECH)
    assert [e for e in entries if e.reference == definition.task_id] == []
    listed = await mine(tasks_stub, second, definition.task_id)
    assert (listed.state, listed.task.budget_used) == (tasks_pb2.MEMBER_TASK_STATE_BUDGET_EXHAUSTED, 40)


async def test_an_invite_the_budget_cannot_pay_both_sides_of_is_unpaid(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    definition = task(
        "invite",
        tasks_pb2.InviteSpec(trigger=REGISTER, invitee_points=30),
        reward_points=50,
        budget_points=60,
        limits=tasks_pb2.TaskLimits(per_day=1),
    )
    await create(tasks_stub, definition, metadata=INITECH)
    inviter = await member(tagging_stub, metadata=INITECH)
    newcomer = unique()
    await _invite(tasks_stub, definition.task_id, inviter, newcomer)
    listed = await mine(tasks_stub, inviter, definition.task_id)
    assert (listed.state, listed.completions_today) == (tasks_pb2.MEMBER_TASK_STATE_DONE_TODAY, 1)
    upsert = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=newcomer))
    await tagging_stub.UpsertMember(upsert, metadata=INITECH)

    async def unpaid() -> bool:
        return (
            await _invite_state(tasks_stub, definition.task_id, inviter, newcomer)
        ) == tasks_pb2.INVITE_STATE_UNPAID

    await followed(follower, unpaid)
    assert (await balance(tasks_stub, inviter, metadata=INITECH)).available == 0
    assert (await balance(tasks_stub, newcomer, metadata=INITECH)).available == 0


async def _invite_state(stub: TasksStub, task_id: str, inviter: str, invitee: str) -> int:
    """The invite's state, read back by retrying the request that recorded it."""
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{task_id}",
        inviter_member_id=inviter,
        invitee_member_id=invitee,
        request_id=_requests[invitee],
    )
    return (await stub.RecordInvite(request, metadata=INITECH)).state
