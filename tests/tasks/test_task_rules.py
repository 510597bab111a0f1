"""Rules of member tasks the other task tests leave out, over gRPC: sku filters, refunds of amount
and order tasks, enrolment windows, budgets on update, audiences on sign-in and invites, unknown
tasks and members, and request ids reused for other content.

Purchase tests use initech, whose feed the tests' own follower applies round by round. Other tests'
purchase tasks are active there too and may pay the same members, so these tests look at their own
tasks' progress, state and completions, never at a member's balance. Member calls use acme.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.feed.follower import FeedFollower
from tests.audience import helpers as audience
from tests.conftest import ACME, INITECH, TENANT_ACME, TENANT_INITECH, unique
from tests.grpc_helpers import failure
from tests.tasks.conftest import Clock
from tests.tasks.feed_helpers import followed, order, refund
from tests.tasks.points_helpers import all_entries, balance
from tests.tasks.task_helpers import (
    DAY,
    claim,
    create,
    get_task,
    member,
    member_tasks,
    share,
    share_task,
    sign_in,
    sign_in_task,
    streak,
    task,
)

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

ITEMS, ORDERS, AMOUNT = (
    tasks_pb2.PURCHASE_MEASURE_ITEMS,
    tasks_pb2.PURCHASE_MEASURE_ORDERS,
    tasks_pb2.PURCHASE_MEASURE_AMOUNT,
)
PAID, CLAIMABLE, REVERSED = (
    tasks_pb2.COMPLETION_STATE_PAID,
    tasks_pb2.COMPLETION_STATE_CLAIMABLE,
    tasks_pb2.COMPLETION_STATE_REVERSED,
)
OPEN, WINDOW_ENDED = tasks_pb2.MEMBER_TASK_STATE_OPEN, tasks_pb2.MEMBER_TASK_STATE_WINDOW_ENDED
REGISTER = tasks_pb2.INVITE_TRIGGER_REGISTER
EARNED, TAKEN_BACK = points_pb2.REASON_TASK, points_pb2.REASON_TASK_REVERSAL
# A target no test reaches: the task only counts (a marker of what the follower has applied).
NEVER_REACHED = 10**9


# --- helpers (as in test_feed_tasks.py) ----------------------------------------------------------


def purchase(measure: int, target: int, **fields: Any) -> tasks_pb2.Task:
    spec_fields = {k: fields.pop(k) for k in ("categories", "brands", "skus", "window_days") if k in fields}
    spec = tasks_pb2.PurchaseSpec(measure=measure, target=target, **spec_fields)  # type: ignore[arg-type]
    return task("purchase", spec, **fields)


async def mine(
    stub: TasksStub, member_id: str, task_id: str, metadata: Any = INITECH
) -> tasks_pb2.MemberTask:
    return (await member_tasks(stub, member_id, metadata=metadata))[task_id]


async def progress_is(stub: TasksStub, member_id: str, task_id: str, value: int) -> bool:
    return (await mine(stub, member_id, task_id)).progress == value


async def completions_of(
    db: Database, task_id: str, member_id: str, tenant: str = TENANT_INITECH
) -> list[tuple[int, int]]:
    """(points, state) of the member's completions of the task, oldest first."""
    async with db.transaction(tenant) as conn:
        rows = await conn.fetch(
            """SELECT points, state FROM tasks.completions WHERE task_id = $1 AND member_id = $2
               ORDER BY completion_id""",
            task_id,
            member_id,
        )
    return [(r["points"], r["state"]) for r in rows]


async def task_entries(stub: TasksStub, member_id: str, task_id: str) -> list[tuple[int, int, int]]:
    """(reason, delta, shortfall) of the member's ledger entries for the task, newest first."""
    entries = await all_entries(stub, member_id, metadata=INITECH)
    return [(e.reason, e.delta, e.shortfall) for e in entries if e.reference == task_id]


async def rows(db: Database, tenant: str, query: str, *args: object) -> int:
    async with db.transaction(tenant) as conn:
        count = await conn.fetchval(query, *args)
    assert isinstance(count, int)
    return count


async def written(db: Database, task_id: str) -> int:
    """Rows acme's member calls wrote for the task: completions, sign-ins, shares, invites."""
    return await rows(
        db,
        TENANT_ACME,
        """SELECT (SELECT count(*) FROM tasks.completions WHERE task_id = $1)
                + (SELECT count(*) FROM tasks.sign_ins WHERE task_id = $1)
                + (SELECT count(*) FROM tasks.shares WHERE task_id = $1)
                + (SELECT count(*) FROM tasks.invites WHERE task_id = $1)""",
        task_id,
    )


async def invitee_rows(db: Database, invitee: str) -> int:
    """Rows that name the invitee: an invite of them, and their facts row (which RecordInvite
    creates when it locks it)."""
    return await rows(
        db,
        TENANT_ACME,
        """SELECT (SELECT count(*) FROM tasks.invites WHERE invitee_member_id = $1)
                + (SELECT count(*) FROM tasks.member_facts WHERE member_id = $1)""",
        invitee,
    )


async def invite(
    stub: TasksStub, task_id: str, inviter: str, invitee: str, request_id: str | None = None
) -> tasks_pb2.Invite:
    request = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{task_id}",
        inviter_member_id=inviter,
        invitee_member_id=invitee,
        request_id=request_id or unique("req"),
    )
    return await stub.RecordInvite(request, metadata=ACME)


async def own_buyer(audience_stub: AudienceStub, tagging_stub: TaggingStub) -> tuple[str, str]:
    """A new initech member and an audience of them alone, so that an unfiltered task the test
    defines pays nobody else's orders (other tests' members buy on initech too)."""
    batch = unique("batch")
    made = await audience.create(audience_stub, audience.in_batch(batch), metadata=INITECH)
    return await audience.member(tagging_stub, batch, metadata=INITECH), f"audiences/{made.audience_id}"


def at(timestamp: Any) -> dt.datetime:
    return timestamp.ToDatetime(dt.UTC)  # type: ignore[no-any-return]


# --- purchases -----------------------------------------------------------------------------------


async def test_a_sku_filter_counts_only_lines_of_those_skus(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower
) -> None:
    """Lines of other skus, of the same category and brand, add no items and no amount; the amount
    of a filtered task is the matching lines' quantity times unit price, not the order's amount."""
    skus = [unique("sku"), unique("sku")]
    a, b = skus
    items = purchase(ITEMS, 4, skus=skus, reward_points=5)
    spent = purchase(AMOUNT, NEVER_REACHED, skus=skus, reward_points=5)
    seen = purchase(ORDERS, NEVER_REACHED, reward_points=1)
    for definition in (items, spent, seen):
        await create(tasks_stub, definition, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH)
    other, prefixed = unique("sku"), f"{a}x"  # another sku, and one that merely starts like `a`
    await order(tagging_stub, m, [(a, "milk", "acme", 2, 300), (other, "milk", "acme", 7, 1_000)])
    await order(tagging_stub, m, [(other, "milk", "acme", 10, 1_000), (prefixed, "milk", "acme", 3, 10)])
    await followed(follower, lambda: progress_is(tasks_stub, m, seen.task_id, 2))
    counted = await mine(tasks_stub, m, items.task_id)
    assert (counted.progress, counted.completions) == (2, 0)
    assert (await mine(tasks_stub, m, spent.task_id)).progress == 2 * 300
    # The fourth item of a listed sku completes the items task.
    await order(tagging_stub, m, [(b, "tea", "other", 2, 50), (other, "milk", "acme", 1, 1_000)])
    await followed(follower, lambda: progress_is(tasks_stub, m, seen.task_id, 3))
    counted = await mine(tasks_stub, m, items.task_id)
    assert (counted.progress, counted.completions) == (0, 1)
    assert (await mine(tasks_stub, m, spent.task_id)).progress == 2 * 300 + 2 * 50


async def test_a_refund_takes_the_amount_it_refunds_and_reverses_what_no_longer_holds(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    audience_stub: AudienceStub,
    follower: FeedFollower,
    db: Database,
) -> None:
    """An amount task counts the order's amount net of refunds (the refunded amount, not the value
    of the lines returned); the completion stays while the net amount reaches the target and is
    reversed, its points and budget given back, once it falls below."""
    m, only_m = await own_buyer(audience_stub, tagging_stub)
    definition = purchase(AMOUNT, 10_000, reward_points=7, budget_points=700, eligibility_audience=only_m)
    await create(tasks_stub, definition, metadata=INITECH)
    task_id = definition.task_id
    bought = await order(tagging_stub, m, [("s1", "c", "b", 2, 5_000), ("s2", "c", "b", 1, 2_000)])
    await followed(follower, lambda: progress_is(tasks_stub, m, task_id, 12_000 - 10_000))
    assert await completions_of(db, task_id, m) == [(7, PAID)]
    # A line worth 5,000 comes back for 1,500: 10,500 left, still above the target.
    await refund(tagging_stub, bought, {"0": 1}, 1_500)
    await followed(follower, lambda: progress_is(tasks_stub, m, task_id, 10_500 - 10_000))
    assert await completions_of(db, task_id, m) == [(7, PAID)]
    # 1,000 more: 9,500 no longer supports the completion.
    await refund(tagging_stub, bought, {"1": 1}, 1_000)
    await followed(follower, lambda: progress_is(tasks_stub, m, task_id, 9_500))
    assert await completions_of(db, task_id, m) == [(7, REVERSED)]
    listed = await mine(tasks_stub, m, task_id)
    assert (listed.completions, listed.task.budget_used) == (0, 0)
    assert await task_entries(tasks_stub, m, task_id) == [(TAKEN_BACK, -7, 0), (EARNED, 7, 0)]


async def test_an_order_stops_counting_only_when_its_lines_are_all_returned(
    tasks_stub: TasksStub,
    tagging_stub: TaggingStub,
    audience_stub: AudienceStub,
    follower: FeedFollower,
    db: Database,
) -> None:
    """An orders task counts an order while one matching line is not wholly returned, whatever its
    refunded amount: refunding all of the money with one item kept leaves the completion; the last
    item's return takes it back."""
    m, only_m = await own_buyer(audience_stub, tagging_stub)
    definition = purchase(ORDERS, 2, reward_points=9, eligibility_audience=only_m)
    pieces = purchase(ITEMS, NEVER_REACHED, reward_points=1)  # shows when each refund is applied
    for made in (definition, pieces):
        await create(tasks_stub, made, metadata=INITECH)
    task_id = definition.task_id
    first = await order(tagging_stub, m, [("s1", "c", "b", 1, 300), ("s2", "c", "b", 2, 200)])
    await order(tagging_stub, m, [("s3", "c", "b", 1, 100)])
    await followed(follower, lambda: progress_is(tasks_stub, m, pieces.task_id, 4))
    assert await completions_of(db, task_id, m) == [(9, PAID)]
    # The whole 700 refunded, one of the two s2 items kept: the order still counts.
    await refund(tagging_stub, first, {"0": 1, "1": 1}, 700)
    await followed(follower, lambda: progress_is(tasks_stub, m, pieces.task_id, 2))
    listed = await mine(tasks_stub, m, task_id)
    assert (listed.progress, listed.completions) == (0, 1)
    assert await completions_of(db, task_id, m) == [(9, PAID)]
    # The last item comes back: one order left, below the target.
    await refund(tagging_stub, first, {"1": 1}, 0)
    await followed(follower, lambda: progress_is(tasks_stub, m, pieces.task_id, 1))
    listed = await mine(tasks_stub, m, task_id)
    assert (listed.progress, listed.completions, listed.task.budget_used) == (1, 0, 0)
    assert await completions_of(db, task_id, m) == [(9, REVERSED)]
    assert await task_entries(tasks_stub, m, task_id) == [(TAKEN_BACK, -9, 0), (EARNED, 9, 0)]


async def test_orders_paid_after_the_enrolment_window_do_not_count_and_the_window_ends(
    tasks_stub: TasksStub,
    clocked_stub: TasksStub,
    tagging_stub: TaggingStub,
    follower: FeedFollower,
    clock: Clock,
) -> None:
    """The window is [enrol_time, enrol_time + window_days): an order paid a second before its end
    counts, one paid at its end or later does not. ListMemberTasks derives WINDOW_ENDED from the
    enrolment's window_end_time and the server's now, so the member enrols 40 days ago (on the
    clocked server) and the window of 30 days ended 10 days ago for the real one."""
    definition = purchase(ORDERS, 2, window_days=30, reward_points=3)
    seen = purchase(ORDERS, NEVER_REACHED, reward_points=1)
    for made in (definition, seen):
        await create(tasks_stub, made, metadata=INITECH)
    task_id = definition.task_id
    m = await member(tagging_stub, metadata=INITECH)
    clock.set(dt.datetime.now(dt.UTC) - 40 * DAY)
    request = tasks_service_pb2.EnrolTaskRequest(task=f"tasks/{task_id}", member_id=m)
    enrolment = await clocked_stub.EnrolTask(request, metadata=INITECH)
    end = at(enrolment.window_end_time)
    assert end - at(enrolment.enrol_time) == 30 * DAY
    # While the window runs the task is open; from its end it is over.
    clock.set(end - dt.timedelta(microseconds=1))
    assert (await mine(clocked_stub, m, task_id)).state == OPEN
    clock.set(end)
    assert (await mine(clocked_stub, m, task_id)).state == WINDOW_ENDED

    line = ("s", "c", "b", 1, 100)
    await order(tagging_stub, m, [line], paid=end - dt.timedelta(seconds=1))
    await order(tagging_stub, m, [line], paid=end)
    await order(tagging_stub, m, [line])
    await followed(follower, lambda: progress_is(tasks_stub, m, seen.task_id, 3))
    listed = await mine(tasks_stub, m, task_id)
    assert (listed.state, listed.progress, listed.target, listed.completions) == (WINDOW_ENDED, 1, 2, 0)
    assert listed.enrolment == enrolment


# --- definitions ---------------------------------------------------------------------------------


async def test_an_update_cannot_lower_the_budget_below_what_was_paid_or_reserved(
    tasks_stub: TasksStub, tagging_stub: TaggingStub
) -> None:
    """10 paid (claimed) and 10 reserved (waiting for a claim) make 20 used: a budget of 19 is
    FAILED_PRECONDITION and leaves the task as it was; 20 is accepted."""
    definition = share_task(reward_points=10, budget_points=100, claim_required=True)
    await create(tasks_stub, definition)
    m = await member(tagging_stub)
    await share(tasks_stub, definition.task_id, m, "a")
    await share(tasks_stub, definition.task_id, m, "b")
    await claim(tasks_stub, definition.task_id, m)
    before = await get_task(tasks_stub, definition.task_id)
    assert (before.version, before.budget_used) == (1, 20)
    lower = tasks_pb2.Task()
    lower.CopyFrom(definition)
    lower.budget_points = 19
    refused = await failure(
        tasks_stub.UpdateTask(tasks_service_pb2.UpdateTaskRequest(task=lower), metadata=ACME)
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below the 20 points" in (refused.details() or "")
    assert await get_task(tasks_stub, definition.task_id) == before
    lower.budget_points = 20
    updated = await tasks_stub.UpdateTask(tasks_service_pb2.UpdateTaskRequest(task=lower), metadata=ACME)
    assert (updated.version, updated.budget_points, updated.budget_used) == (2, 20, 20)


# --- member calls --------------------------------------------------------------------------------


async def test_sign_ins_and_invites_are_only_for_the_tasks_audience(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """A member outside the eligibility audience can neither sign in nor invite
    (FAILED_PRECONDITION naming the audience) and the refusal writes nothing; an unknown member is
    NOT_FOUND; members inside act as usual."""
    batch = unique("batch")
    made = await audience.create(audience_stub, audience.in_batch(batch))
    audience_name = f"audiences/{made.audience_id}"
    signing = sign_in_task(rewards=(4,), eligibility_audience=audience_name)
    inviting = task("invite", tasks_pb2.InviteSpec(trigger=REGISTER), eligibility_audience=audience_name)
    for definition in (signing, inviting):
        await create(tasks_stub, definition)
    inside = await audience.member(tagging_stub, batch)
    outside = await audience.member(tagging_stub, unique("batch"))

    refused = await failure(sign_in(tasks_stub, signing.task_id, outside))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert made.audience_id in (refused.details() or "")
    unknown = await failure(sign_in(tasks_stub, signing.task_id, unique()))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert await written(db, signing.task_id) == 0
    assert (await streak(tasks_stub, signing.task_id, outside)).current == 0
    assert (await balance(tasks_stub, outside)).available == 0
    signed = await sign_in(tasks_stub, signing.task_id, inside)
    assert (signed.streak_day, signed.completion.points) == (1, 4)
    assert await written(db, signing.task_id) == 2  # the one sign-in and its completion

    invitee = unique()
    refused = await failure(invite(tasks_stub, inviting.task_id, outside, invitee))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert made.audience_id in (refused.details() or "")
    unknown = await failure(invite(tasks_stub, inviting.task_id, unique(), invitee))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert await written(db, inviting.task_id) == 0
    assert await invitee_rows(db, invitee) == 0
    invited = await invite(tasks_stub, inviting.task_id, inside, invitee)
    assert (invited.state, invited.inviter_member_id) == (tasks_pb2.INVITE_STATE_PENDING, inside)


async def test_an_unknown_task_or_member_is_not_found_on_sign_in_and_streaks(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """NOT_FOUND for a task id nobody defined and for a member tagging does not know, and a
    refused sign-in writes nothing."""
    definition = sign_in_task()
    await create(tasks_stub, definition)
    m, stranger, nowhere = await member(tagging_stub), unique(), unique("task")

    async def code(call: Any) -> grpc.StatusCode:
        return (await failure(call)).code()

    assert await code(sign_in(tasks_stub, nowhere, m)) == grpc.StatusCode.NOT_FOUND
    assert await code(sign_in(tasks_stub, definition.task_id, stranger)) == grpc.StatusCode.NOT_FOUND
    assert await code(streak(tasks_stub, nowhere, m)) == grpc.StatusCode.NOT_FOUND
    assert await code(streak(tasks_stub, definition.task_id, stranger)) == grpc.StatusCode.NOT_FOUND
    assert await written(db, definition.task_id) == 0
    assert (
        await rows(db, TENANT_ACME, "SELECT count(*) FROM tasks.sign_ins WHERE member_id = $1", stranger) == 0
    )
    assert (await streak(tasks_stub, definition.task_id, m)).current == 0


async def test_a_share_request_id_reused_for_other_content_is_already_exists(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """The same request id for another target, another member or another task is ALREADY_EXISTS
    and records nothing; a retry of the first request returns its share."""
    definition, elsewhere = share_task(reward_points=5), share_task(reward_points=5)
    for made in (definition, elsewhere):
        await create(tasks_stub, made)
    m, other = await member(tagging_stub), await member(tagging_stub)
    request_id = unique("req")
    first = await share(tasks_stub, definition.task_id, m, "a", request_id)
    for task_id, who, target in (
        (definition.task_id, m, "b"),
        (definition.task_id, other, "a"),
        (elsewhere.task_id, m, "a"),
    ):
        reused = await failure(share(tasks_stub, task_id, who, target, request_id))
        assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "different request" in (reused.details() or "")
    assert await share(tasks_stub, definition.task_id, m, "a", request_id) == first
    assert (await written(db, definition.task_id), await written(db, elsewhere.task_id)) == (2, 0)
    assert [(e.delta, e.reference) for e in await all_entries(tasks_stub, m)] == [(5, definition.task_id)]
    assert (await balance(tasks_stub, other)).available == 0
    # Nothing of the refused shares was kept: "b" is still new to the member.
    assert (await share(tasks_stub, definition.task_id, m, "b")).completion.points == 5


async def test_an_invite_request_id_reused_for_other_content_is_already_exists(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """The same request id for another invitee is ALREADY_EXISTS and leaves no trace of that
    invitee (who can still be invited); a retry of the first request returns its invite."""
    definition = task("invite", tasks_pb2.InviteSpec(trigger=REGISTER), reward_points=3)
    await create(tasks_stub, definition)
    inviter = await member(tagging_stub)
    first_invitee, second_invitee = unique(), unique()
    request_id = unique("req")
    first = await invite(tasks_stub, definition.task_id, inviter, first_invitee, request_id)
    assert first.state == tasks_pb2.INVITE_STATE_PENDING
    reused = await failure(invite(tasks_stub, definition.task_id, inviter, second_invitee, request_id))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "different request" in (reused.details() or "")
    assert await invitee_rows(db, second_invitee) == 0
    assert await written(db, definition.task_id) == 1
    assert await invite(tasks_stub, definition.task_id, inviter, first_invitee, request_id) == first
    later = await invite(tasks_stub, definition.task_id, inviter, second_invitee)
    assert (later.state, later.invitee_member_id) == (tasks_pb2.INVITE_STATE_PENDING, second_invitee)


async def test_a_claim_request_id_reused_for_other_content_is_already_exists(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, db: Database
) -> None:
    """A claim's request id pays one completion: reused for another member or another task it is
    ALREADY_EXISTS and pays nothing; retried, it returns the completion it paid, not the next."""
    definition, elsewhere = share_task(reward_points=4, claim_required=True), share_task(claim_required=True)
    for made in (definition, elsewhere):
        await create(tasks_stub, made)
    m, other = await member(tagging_stub), await member(tagging_stub)
    await share(tasks_stub, definition.task_id, m, "a")
    await share(tasks_stub, definition.task_id, m, "b")
    await share(tasks_stub, definition.task_id, other, "a")
    await share(tasks_stub, elsewhere.task_id, m, "a")
    request_id = unique("req")
    claimed = await claim(tasks_stub, definition.task_id, m, request_id)
    assert (claimed.state, claimed.points, claimed.source) == (PAID, 4, "share a")
    for task_id, who in ((definition.task_id, other), (elsewhere.task_id, m)):
        reused = await failure(claim(tasks_stub, task_id, who, request_id))
        assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "different request" in (reused.details() or "")
    assert await claim(tasks_stub, definition.task_id, m, request_id) == claimed
    assert await completions_of(db, definition.task_id, m, TENANT_ACME) == [(4, PAID), (4, CLAIMABLE)]
    assert await completions_of(db, definition.task_id, other, TENANT_ACME) == [(4, CLAIMABLE)]
    assert await completions_of(db, elsewhere.task_id, m, TENANT_ACME) == [(10, CLAIMABLE)]
    assert [e.delta for e in await all_entries(tasks_stub, m)] == [4]
    assert (await balance(tasks_stub, other)).available == 0
