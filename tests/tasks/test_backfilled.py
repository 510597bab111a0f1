"""Back-filled facts (loaded by ImportOrders, ImportRefunds and ImportEvents, marked `backfilled`
on tagging's feed) reward nothing in the tasks service: no purchase or event task moves and no
invite completes, while the same facts recorded live do. A purchase task with
`reward_backfilled_orders` counts imported orders of its period.

"Nothing happened" is proved with a barrier, never a sleep: after the history, a live fact that
does have an effect is recorded and waited for; the follower applies the feed in order, so by then
it has applied the history too.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from memberops.tagging.v1 import facts_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from runtime.db import Database
from services.tasks.feed.follower import FeedFollower
from services.tasks.tasks import definitions
from tests.backfill_helpers import import_events, import_orders, import_refunds, paid_order
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.tasks.feed_helpers import event, followed, order, refund
from tests.tasks.points_helpers import all_entries
from tests.tasks.task_helpers import DAY, create, get_task, member, stamp, task
from tests.tasks.test_feed_tasks import completions_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

ORDERS = tasks_pb2.PURCHASE_MEASURE_ORDERS
CART = facts_pb2.EVENT_KIND_CART
PAID, REVERSED = tasks_pb2.COMPLETION_STATE_PAID, tasks_pb2.COMPLETION_STATE_REVERSED
PENDING, COMPLETED = tasks_pb2.INVITE_STATE_PENDING, tasks_pb2.INVITE_STATE_COMPLETED
HOUR = dt.timedelta(hours=1)


def _order(member_id: str, category: str, paid: dt.datetime) -> facts_pb2.Order:
    return paid_order(member_id, 100, paid, category)


async def _import_refund(tagging: TaggingStub, order_id: str) -> None:
    """Imports a whole refund of the order, made now (after the order was paid)."""
    made = stamp(dt.datetime.now(dt.UTC))
    refund = facts_pb2.Refund(refund_id=unique("r"), order_id=order_id, refund_time=made, amount_minor=100)
    await import_refunds(tagging, [refund], INITECH)


async def _import_cart(tagging: TaggingStub, member_id: str, category: str) -> None:
    made = stamp(dt.datetime.now(dt.UTC) - HOUR)
    cart = facts_pb2.BehaviorEvent(
        event_id=unique("e"), member_id=member_id, kind=CART, occur_time=made, category=category
    )
    await import_events(tagging, [cart], INITECH)


def _purchase(
    category: str, reward_backfilled: bool = False, start: dt.datetime | None = None, per_day: int = 0
) -> tasks_pb2.Task:
    """Completed by every order with a line of `category` (unique per test: other tests' orders
    never move it), earning 10 points."""
    spec = tasks_pb2.PurchaseSpec(
        measure=ORDERS, target=1, categories=[category], reward_backfilled_orders=reward_backfilled
    )
    limits = tasks_pb2.TaskLimits(per_day=per_day)
    return task("purchase", spec, start=start, reward_points=10, limits=limits)


async def _completed(db: Database, task_id: str, member_id: str, expected: list[tuple[int, int]]) -> bool:
    return await completions_of(db, task_id, member_id) == expected


async def _invite_state(db: Database, invitee: str) -> int:
    async with db.transaction(TENANT_INITECH) as conn:
        state: int = await conn.fetchval(
            "SELECT state FROM tasks.invites WHERE invitee_member_id = $1", invitee
        )
    return state


async def _progress(db: Database, task_id: str, member_id: str) -> int:
    async with db.transaction(TENANT_INITECH) as conn:
        measure = await conn.fetchval(
            "SELECT measure FROM tasks.progress WHERE task_id = $1 AND member_id = $2",
            task_id,
            member_id,
        )
    return int(measure or 0)


async def test_imported_orders_and_events_move_no_task_and_trigger_no_invite(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    category = unique("cat")
    orders = _purchase(category)
    carts = task("event", tasks_pb2.EventSpec(event_kind=CART, times=1, category=category), reward_points=3)
    on_order = task(
        "invite", tasks_pb2.InviteSpec(trigger=tasks_pb2.INVITE_TRIGGER_FIRST_ORDER), reward_points=30
    )
    for definition in (orders, carts, on_order):
        await create(tasks_stub, definition, metadata=INITECH)
    inviter = await member(tagging_stub, metadata=INITECH)
    newcomer = await member(tagging_stub, metadata=INITECH)
    invite = tasks_service_pb2.RecordInviteRequest(
        task=f"tasks/{on_order.task_id}",
        inviter_member_id=inviter,
        invitee_member_id=newcomer,
        request_id=unique("req"),
    )
    assert (await tasks_stub.RecordInvite(invite, metadata=INITECH)).state == PENDING

    # History paid an hour ago: by its time alone it would be news.
    now = dt.datetime.now(dt.UTC)
    await import_orders(tagging_stub, [_order(newcomer, category, now - HOUR)], INITECH)
    await _import_cart(tagging_stub, newcomer, category)
    barrier = await member(tagging_stub, metadata=INITECH)
    await order(tagging_stub, barrier, [("s", category, "b", 1, 100)])
    await followed(follower, lambda: _completed(db, orders.task_id, barrier, [(10, PAID)]))
    assert await completions_of(db, orders.task_id, newcomer) == []
    assert await _progress(db, orders.task_id, newcomer) == 0
    assert await completions_of(db, carts.task_id, newcomer) == []
    assert await _invite_state(db, newcomer) == PENDING
    assert await completions_of(db, on_order.task_id, inviter) == []

    # The same facts recorded live: each counts once (the imported order would make it two).
    await order(tagging_stub, newcomer, [("s", category, "b", 1, 100)])
    await event(tagging_stub, newcomer, CART, category=category)
    await followed(follower, lambda: _completed(db, carts.task_id, newcomer, [(3, PAID)]))
    assert await completions_of(db, orders.task_id, newcomer) == [(10, PAID)]
    assert await _progress(db, orders.task_id, newcomer) == 1
    assert await _invite_state(db, newcomer) == COMPLETED
    assert await completions_of(db, on_order.task_id, inviter) == [(30, PAID)]


async def test_refunds_take_back_only_what_an_order_earned(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    category = unique("cat")
    orders = _purchase(category)
    await create(tasks_stub, orders, metadata=INITECH)
    m = await member(tagging_stub, metadata=INITECH)
    history = _order(m, category, dt.datetime.now(dt.UTC) - 2 * HOUR)
    await import_orders(tagging_stub, [history], INITECH)
    live = await order(tagging_stub, m, [("s", category, "b", 1, 100)])
    await followed(follower, lambda: _completed(db, orders.task_id, m, [(10, PAID)]))

    # A live refund of the imported order: it earned nothing, so nothing is taken back.
    await refund(tagging_stub, history.order_id, {}, 100)
    # An imported refund of the live order takes back what that order did earn.
    await _import_refund(tagging_stub, live)
    await followed(follower, lambda: _completed(db, orders.task_id, m, [(10, REVERSED)]))
    assert await _progress(db, orders.task_id, m) == 0
    reversals = [
        e
        for e in await all_entries(tasks_stub, m, metadata=INITECH)
        if e.reason == points_pb2.REASON_TASK_REVERSAL
    ]
    assert [(e.reference, e.delta) for e in reversals] == [(orders.task_id, -10)]


async def test_a_purchase_task_may_reward_imported_orders_of_its_period(
    tasks_stub: TasksStub, tagging_stub: TaggingStub, follower: FeedFollower, db: Database
) -> None:
    now = dt.datetime.now(dt.UTC)
    category = unique("cat")
    # Once a day: imported orders count against the days they were paid, not the import's.
    rewarding = _purchase(category, reward_backfilled=True, start=now - 30 * DAY, per_day=1)
    await create(tasks_stub, rewarding, metadata=INITECH)
    stored = await get_task(tasks_stub, rewarding.task_id, metadata=INITECH)
    assert stored.purchase.reward_backfilled_orders
    m, earlier = await member(tagging_stub, metadata=INITECH), await member(tagging_stub, metadata=INITECH)
    # Paid in the task's period (10 and 9 days ago) and before it (60 days ago).
    await import_orders(
        tagging_stub,
        [
            _order(m, category, now - 10 * DAY),
            _order(m, category, now - 9 * DAY),
            _order(earlier, category, now - 60 * DAY),
        ],
        INITECH,
    )
    barrier = await member(tagging_stub, metadata=INITECH)
    await order(tagging_stub, barrier, [("s", category, "b", 1, 100)])
    await followed(follower, lambda: _completed(db, rewarding.task_id, barrier, [(10, PAID)]))
    assert await completions_of(db, rewarding.task_id, m) == [(10, PAID), (10, PAID)]
    assert await completions_of(db, rewarding.task_id, earlier) == []


def test_the_option_is_stored_only_when_on() -> None:
    """A task stored before the option existed reads as off, and one without it stores the body
    it stored then, so its content hash (what makes a retried CreateTask or UpdateTask a no-op)
    stays the same."""
    now = dt.datetime.now(dt.UTC)
    off = definitions.Definition(
        task_id="t",
        spec=definitions.PurchaseSpec(measure=ORDERS, target=1),
        start_time=now,
        end_time=now + DAY,
    )
    body = definitions.to_body(off)
    assert "reward_backfilled_orders" not in body["spec"]
    assert definitions.from_body("t", body) == off
    on = definitions.Definition(
        task_id="t",
        spec=definitions.PurchaseSpec(measure=ORDERS, target=1, reward_backfilled_orders=True),
        start_time=now,
        end_time=now + DAY,
    )
    assert definitions.from_body("t", definitions.to_body(on)) == on
