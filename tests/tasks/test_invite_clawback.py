"""Invite farming undone: a FIRST_ORDER invite's points are taken back from both sides when the
qualifying order is refunded in full within the task's clawback window (initech's feed, driven
round by round)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from runtime.tagging_feed import FeedEntry, FeedKind, OrderStanding, RefundRecorded
from services.tasks.allowance import allowance
from services.tasks.economy.feed_rules import Economy
from services.tasks.feed.follower import FeedFollower
from services.tasks.points import ledger_store
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.grpc_helpers import bad
from tests.tasks.feed_helpers import drain, order, refund
from tests.tasks.points_helpers import all_entries, balance, spend
from tests.tasks.task_helpers import DAY, create, member, task

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

FIRST_ORDER, REGISTER = tasks_pb2.INVITE_TRIGGER_FIRST_ORDER, tasks_pb2.INVITE_TRIGGER_REGISTER
COMPLETED, REVERSED = tasks_pb2.INVITE_STATE_COMPLETED, tasks_pb2.INVITE_STATE_REVERSED
TASK_REVERSAL = points_pb2.REASON_TASK_REVERSAL
LINES = [("s1", "c", "b", 1, 3_000), ("s2", "c", "b", 1, 2_000)]


class Invited:
    """An invite of a FIRST_ORDER task whose invitee has bought (the invite paid both sides)."""

    def __init__(self, task_id: str, inviter: str, invitee: str, request_id: str, order_id: str) -> None:
        self.task_id, self.inviter, self.invitee = task_id, inviter, invitee
        self.request_id, self.order_id = request_id, order_id

    async def state(self, stub: TasksStub) -> int:
        """Read back by retrying the request that recorded it."""
        request = tasks_service_pb2.RecordInviteRequest(
            task=f"tasks/{self.task_id}",
            inviter_member_id=self.inviter,
            invitee_member_id=self.invitee,
            request_id=self.request_id,
        )
        return (await stub.RecordInvite(request, metadata=INITECH)).state


async def invited(
    stub: TasksStub,
    tagging: TaggingStub,
    follower: FeedFollower,
    window_days: int = 0,
    paid: dt.datetime | None = None,
) -> Invited:
    definition = task(
        "invite",
        tasks_pb2.InviteSpec(trigger=FIRST_ORDER, invitee_points=5, clawback_window_days=window_days),
        reward_points=30,
    )
    await create(stub, definition, metadata=INITECH)
    inviter, invitee, request_id = await member(tagging, metadata=INITECH), unique(), unique("req")
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{definition.task_id}",
        inviter_member_id=inviter,
        invitee_member_id=invitee,
        request_id=request_id,
    )
    await stub.RecordInvite(request, metadata=INITECH)
    upsert = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=invitee))
    await tagging.UpsertMember(upsert, metadata=INITECH)
    order_id = await order(tagging, invitee, LINES, paid=paid)
    await drain(follower)
    made = Invited(definition.task_id, inviter, invitee, request_id, order_id)
    assert await made.state(stub) == COMPLETED
    assert [await task_points(stub, m, made.task_id) for m in (inviter, invitee)] == [30, 5]
    return made


async def task_points(stub: TasksStub, member_id: str, task_id: str) -> int:
    """What the member holds of the task's points (other tasks of initech may pay for orders too)."""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    return sum(e.delta for e in entries if e.reference == task_id)


async def reversals(stub: TasksStub, made: Invited, member_id: str) -> list[tuple[int, int]]:
    """(delta, shortfall) of the member's reversals of the invite task."""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    return [
        (e.delta, e.shortfall) for e in entries if e.reason == TASK_REVERSAL and e.reference == made.task_id
    ]


async def test_a_full_refund_within_the_window_takes_the_invite_back_once(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    made = await invited(tasks_stub, tagging_stub, follower)
    # The inviter spent 20 of the 30: 10 come back, 20 are the reversal's shortfall (no debt).
    await spend(tasks_stub, made.inviter, 20, metadata=INITECH)
    refund_id = await refund(tagging_stub, made.order_id, {}, 5_000)
    await drain(follower)
    assert await made.state(tasks_stub) == REVERSED
    assert await reversals(tasks_stub, made, made.inviter) == [(-10, 20)]
    assert await reversals(tasks_stub, made, made.invitee) == [(-5, 0)]
    assert (await balance(tasks_stub, made.inviter, metadata=INITECH)).available == 0  # never below
    assert await task_points(tasks_stub, made.invitee, made.task_id) == 0

    # The refund's entry applied again (a re-read of the feed): nothing more is taken.
    now = dt.datetime.now(dt.UTC)
    again = RefundRecorded(refund_id, made.order_id, now, 5_000, (), OrderStanding(5_000, 5_000, True))
    entry = FeedEntry("c", FeedKind.REFUND_RECORDED, made.invitee, refund_id, again, now)
    async with db.transaction(TENANT_INITECH) as conn:
        economy = await Economy.read(conn, [entry])
        await ledger_store.lock_accounts_creating(conn, TENANT_INITECH, sorted(economy.members([entry])))
        assert not await economy.refund(conn, TENANT_INITECH, entry, allowance.Holding())
    assert len(await reversals(tasks_stub, made, made.inviter)) == 1


async def test_a_partial_refund_or_one_after_the_window_keeps_the_invite(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    partly = await invited(tasks_stub, tagging_stub, follower)
    await refund(tagging_stub, partly.order_id, {"0": 1}, 3_000)
    # Paid three days ago, refunded now: past a two-day window.
    late = await invited(tasks_stub, tagging_stub, follower, 2, dt.datetime.now(dt.UTC) - 3 * DAY)
    await refund(tagging_stub, late.order_id, {}, 5_000)
    await drain(follower)
    for made in (partly, late):
        assert await made.state(tasks_stub) == COMPLETED
        assert await reversals(tasks_stub, made, made.inviter) == []
        assert [await task_points(tasks_stub, m, made.task_id) for m in (made.inviter, made.invitee)] == [
            30,
            5,
        ]


async def test_the_clawback_window_is_checked(tasks_stub: TasksStub) -> None:
    for spec, words in (
        (tasks_pb2.InviteSpec(trigger=FIRST_ORDER, clawback_window_days=366), "0-365"),
        (tasks_pb2.InviteSpec(trigger=FIRST_ORDER, clawback_window_days=-1), "0-365"),
        (
            tasks_pb2.InviteSpec(trigger=REGISTER, clawback_window_days=7),
            "only for INVITE_TRIGGER_FIRST_ORDER",
        ),
    ):
        call = create(tasks_stub, task("invite", spec), metadata=INITECH)
        await bad(call, "task.invite.clawback_window_days", words)


async def test_an_invite_completed_and_refunded_in_one_round_is_taken_back(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    definition = task("invite", tasks_pb2.InviteSpec(trigger=FIRST_ORDER, invitee_points=5), reward_points=30)
    await create(tasks_stub, definition, metadata=INITECH)
    inviter, invitee, request_id = await member(tagging_stub, metadata=INITECH), unique(), unique("req")
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{definition.task_id}",
        inviter_member_id=inviter,
        invitee_member_id=invitee,
        request_id=request_id,
    )
    await tasks_stub.RecordInvite(request, metadata=INITECH)
    upsert = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=invitee))
    await tagging_stub.UpsertMember(upsert, metadata=INITECH)
    order_id = await order(tagging_stub, invitee, LINES)
    await refund(tagging_stub, order_id, {}, 5_000)
    await drain(follower)
    made = Invited(definition.task_id, inviter, invitee, request_id, order_id)
    assert await made.state(tasks_stub) == REVERSED
    assert [await task_points(tasks_stub, m, definition.task_id) for m in (inviter, invitee)] == [0, 0]
