"""EraseMemberData in the tasks service: every row of the member moves to the pseudonym in one
transaction (the ledger's sums with it), nothing in the schema names the member afterwards, a
repeat changes nothing, duplicates racing have one effect, and bad requests name their field."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from memberops.tasks.v1 import rewards_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks import erasure_store
from services.tasks.tasks import invite_store
from tests.conftest import ACME, TENANT_ACME, unique
from tests.erasure_helpers import member_tables, pseudonym, row, rows_naming, value
from tests.grpc_helpers import bad
from tests.tasks.points_helpers import ORDER, earn, spend
from tests.tasks.task_helpers import create, share, share_task, sign_in, sign_in_task, task
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from tests.tasks.conftest import Members

FIRST_ORDER = tasks_pb2.INVITE_TRIGGER_FIRST_ORDER


async def erase(stub: TasksStub, member_id: str, to: str) -> dict[str, int]:
    request = tasks_service_pb2.EraseMemberDataRequest(member_id=member_id, pseudonym=to)
    return dict((await stub.EraseMemberData(request, metadata=ACME)).changed_rows)


async def sums(db: Database, member_id: str) -> tuple[int, int, int]:
    """(entries, sum of deltas, points left in lots) of the member's ledger."""
    entries, total = await row(
        db,
        """SELECT count(*)::int, coalesce(sum(delta), 0)::int FROM tasks.ledger_entries
           WHERE tenant_id = 'acme' AND member_id = $1""",
        member_id,
    )
    left = await value(
        db,
        "SELECT coalesce(sum(remaining), 0)::int FROM tasks.lots WHERE tenant_id = 'acme' AND member_id = $1",
        member_id,
    )
    return entries, total, left


async def a_member_with_everything(stub: TasksStub, members: Members, db: Database) -> tuple[str, str]:
    """A member with points (a task, an order, an operator's correction with a note, a spend and a
    redemption whose request ids embed the member id), a sign-in, a share and an invite; and the
    member they invited."""
    member, invitee = await members.noted(db), await members.new()
    await earn(stub, member, 1000)
    await earn(stub, member, 500, reason=ORDER, reference=unique("order"))
    adjust = tasks_service_pb2.AdjustPointsRequest(
        member_id=member, delta=50, operator="ops-1", note=f"goodwill for {member}", request_id=unique("req")
    )
    await stub.AdjustPoints(adjust, metadata=ACME)
    await spend(stub, member, 100, request_id=f"spend-{member}")
    reward = rewards_pb2.Reward(
        reward_id=unique("rw"), kind=rewards_pb2.REWARD_KIND_COUPON, price=30, unlimited=True
    )
    await stub.CreateReward(tasks_service_pb2.CreateRewardRequest(reward=reward), metadata=ACME)
    redeem = tasks_service_pb2.RedeemRequest(
        member_id=member, reward_id=reward.reward_id, request_id=f"redeem-{member}"
    )
    await stub.Redeem(redeem, metadata=ACME)
    signing = await create(stub, sign_in_task())
    await sign_in(stub, signing.task_id, member, request_id=f"sign-{member}")
    sharing = await create(stub, share_task())
    await share(stub, sharing.task_id, member, "sku-1")
    inviting = await create(stub, task("invite", tasks_pb2.InviteSpec(trigger=FIRST_ORDER), reward_points=30))
    invite = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{inviting.task_id}",
        inviter_member_id=member,
        invitee_member_id=invitee,
        request_id=f"invite-{member}-{invitee}",
    )
    await stub.RecordInvite(invite, metadata=ACME)
    return member, invitee


async def test_every_row_moves_to_the_pseudonym_and_the_ledger_adds_up_as_before(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    member, invitee = await a_member_with_everything(tasks_stub, members, db)
    await members.followed(db)
    before = await sums(db, member)
    # earned, the correction, spent, redeemed, the first sign-in's 1 and the share's 10
    assert before[1] == 1000 + 500 + 50 - 100 - 30 + 1 + 10
    assert await rows_naming(db, "tasks", member)
    to = pseudonym()

    changed = await erase(tasks_stub, member, to)

    assert await rows_naming(db, "tasks", member) == {}
    assert await sums(db, to) == before
    assert changed["ledger_entries"] == before[0]
    assert changed["accounts"] == 1
    assert {"lots", "redemptions", "sign_ins", "shares", "invites", "completions"} <= set(changed)
    # The operator's note is gone; the invitee keeps their invite, now from the pseudonym.
    assert (
        await value(db, "SELECT note FROM tasks.ledger_entries WHERE member_id = $1 AND reason = 3", to)
        == "[erased]"
    )
    assert (
        await value(db, "SELECT inviter_member_id FROM tasks.invites WHERE invitee_member_id = $1", invitee)
        == to
    )
    # Nothing is left to change: a repeat is a no-op.
    assert await erase(tasks_stub, member, to) == {}
    assert await sums(db, to) == before


async def test_duplicate_erasures_racing_have_one_effect(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    member = await members.noted(db)
    for amount in (10, 20, 30):
        await earn(tasks_stub, member, amount)
    to = pseudonym()

    answers = await asyncio.gather(*(erase(tasks_stub, member, to) for _ in range(5)))

    assert sorted(answers, key=len)[:-1] == [{}] * 4
    assert answers[max(range(5), key=lambda i: len(answers[i]))]["ledger_entries"] == 3
    assert await sums(db, to) == (3, 60, 60)
    assert await rows_naming(db, "tasks", member) == {}


async def test_a_member_with_nothing_here_changes_nothing(tasks_stub: TasksStub) -> None:
    assert await erase(tasks_stub, unique("gone"), pseudonym()) == {}


async def test_bad_requests_name_their_field(tasks_stub: TasksStub, members: Members, db: Database) -> None:
    member = await members.new()
    await earn(tasks_stub, member, 10)
    erasing = tasks_service_pb2.EraseMemberDataRequest
    for request, field in (
        (erasing(pseudonym=pseudonym()), "member_id"),
        (erasing(member_id="bad id", pseudonym=pseudonym()), "member_id"),
        (erasing(member_id=member), "pseudonym"),
        (erasing(member_id=member, pseudonym="m-other"), "pseudonym"),
        (erasing(member_id=member, pseudonym="erased-"), "pseudonym"),
        (erasing(member_id=member, pseudonym="erased-\x00"), "pseudonym"),
    ):
        await bad(tasks_stub.EraseMemberData(request, metadata=ACME), field)
    assert (await sums(db, member))[:2] == (1, 10)


async def test_every_table_with_a_member_column_is_erased(tasks_stub: TasksStub, db: Database) -> None:
    """(The service's fixture: its schema is migrated.)"""
    tables = await member_tables(db, "tasks")
    assert tables and tables <= {statement.table for statement in erasure_store.STATEMENTS}


async def test_an_erasure_takes_its_locks_in_the_followers_order(
    tasks_stub: TasksStub, members: Members, db: Database
) -> None:
    """The feed follower holds an invitee's facts row while it locks their pending invites. An
    erasure of that invitee waits for the facts row before it touches an invite: the follower's
    next lock is granted at once (no deadlock, which an erasure that updated the invites first and
    the facts row last closed), and the erasure completes when the follower commits."""
    inviter, invitee = await members.new(), await members.noted(db)
    inviting = await create(
        tasks_stub, task("invite", tasks_pb2.InviteSpec(trigger=FIRST_ORDER), reward_points=5)
    )
    invite = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{inviting.task_id}",
        inviter_member_id=inviter,
        invitee_member_id=invitee,
        request_id=unique("invite"),
    )
    await tasks_stub.RecordInvite(invite, metadata=ACME)
    async with db.transaction(TENANT_ACME) as follower:
        await invite_store.lock_member_facts(follower, TENANT_ACME, [invitee])
        erasing = asyncio.create_task(erase(tasks_stub, invitee, pseudonym()))

        async def waiting() -> bool:
            return bool(
                await value(
                    db,
                    """SELECT count(*)::int FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND query LIKE '%member_facts%'""",
                )
            )

        await eventually(waiting, "the erasure waiting for the invitee's facts row")
        locked = await follower.fetch(
            "SELECT 1 FROM tasks.invites WHERE invitee_member_id = $1 AND state = 1 FOR UPDATE", invitee
        )
        assert len(locked) == 1
    changed = await erasing
    assert changed["invites"] == 1
