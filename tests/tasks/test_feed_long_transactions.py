"""Feeds while a long transaction is open (issue 25): an unrelated transaction holds nothing back,
and one that wrote an entry holds back only its own, which arrives after it commits.

ReadFeed, the tasks service's own follower (a purchase task paying an order), the audience
maintainer and ReadAudienceFeed (a dynamic audience entered by the order) all see what is recorded
while the transaction stays open; each consumer gets each entry once. The waits are `eventually`
(a deadline, not a timing threshold); that the consumers progress while the transaction is open is
the point, so every check of it runs inside the `async with`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tasks.v1 import tasks_service_pb2

from runtime.db import Connection, Database
from services.tagging import feed_store
from services.tagging.domain import FeedKind
from tests.audience.helpers import all_of, fact, in_batch, order_count
from tests.audience.helpers import member as batch_member
from tests.audience.test_dynamic import feed as audience_changes
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.rule_builders import Op
from tests.tagging.test_feed import feed_end, read_all
from tests.tasks import task_helpers
from tests.tasks.feed_helpers import order
from tests.tasks.points_helpers import balance
from tests.tasks.test_feed_tasks import ITEMS, purchase
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

ENTERED = audience_service_pb2.AUDIENCE_CHANGE_ENTERED
POINTS = 17


@asynccontextmanager
async def unrelated_writer(db: Database) -> AsyncIterator[None]:
    """A transaction that wrote a row of a table no feed reads (an analyst's UPDATE, a pg_dump's
    snapshot with a txid), open while in the block."""
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE long_writer (n int) ON COMMIT DROP; INSERT INTO long_writer VALUES (1)"
        )
        assert await conn.fetchval("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        yield


class World:
    """A purchase task of the test's own brand and a dynamic audience of the test's batch who
    bought: what the consumers do with an order of a member of the batch."""

    def __init__(self, tagging: TaggingStub, tasks: TasksStub, audience: AudienceStub) -> None:
        self.tagging, self.tasks, self.audience = tagging, tasks, audience
        self.batch, self.brand, self.audience_id = unique("b"), unique("brand"), unique("long")

    async def start(self) -> None:
        definition = purchase(ITEMS, 1, brands=[self.brand], reward_points=POINTS)
        self.task_id = definition.task_id
        await task_helpers.create(self.tasks, definition, metadata=ACME)
        rule = all_of(in_batch(self.batch), fact(order_count(), Op.OPERATOR_GE, 1))
        audience = audience_pb2.Audience(audience_id=self.audience_id, rule=rule, dynamic=True)
        await self.audience.CreateAudience(
            audience_service_pb2.CreateAudienceRequest(audience=audience), metadata=ACME
        )

    async def stop(self) -> None:
        retire = tasks_service_pb2.RetireTaskRequest(name=f"tasks/{self.task_id}")
        await self.tasks.RetireTask(retire, metadata=ACME)

    async def buyer(self) -> tuple[str, str]:
        """A member of the batch and the order they placed: (member, order)."""
        member_id = await batch_member(self.tagging, self.batch)
        order_id = await order(self.tagging, member_id, [("s", "c", self.brand, 1, 500)], metadata=ACME)
        return member_id, order_id

    async def consumed(self, member_id: str, order_id: str, start: str) -> None:
        """Waits until every consumer has the order: on ReadFeed, the task paid, the member in the
        audience; then checks each did so once."""
        entries, _ = await read_all(self.tagging, start)
        assert [e.subject_id for e in entries if e.subject_id == order_id] == [order_id]

        async def paid() -> bool:
            return (await balance(self.tasks, member_id, metadata=ACME)).available >= POINTS

        async def entered() -> bool:
            return (member_id, ENTERED) in await audience_changes(self.audience, self.audience_id)

        await eventually(paid, "the purchase task paid the order")
        await eventually(entered, "the buyer entered the audience")
        assert (await balance(self.tasks, member_id, metadata=ACME)).available == POINTS
        changes = await audience_changes(self.audience, self.audience_id)
        assert [c for c in changes if c[0] == member_id] == [(member_id, ENTERED)]


async def test_an_unrelated_long_transaction_holds_no_consumer_back(
    db: Database, tagging_stub: TaggingStub, tasks_stub: TasksStub, audience_stub: AudienceStub
) -> None:
    world = World(tagging_stub, tasks_stub, audience_stub)
    await world.start()
    try:
        start = await feed_end(tagging_stub)
        async with unrelated_writer(db):
            first = await world.buyer()
            await world.consumed(*first, start)
            second = await world.buyer()
            await world.consumed(*second, start)
        # Nothing was handed out twice after it either.
        await world.consumed(*first, start)
    finally:
        await world.stop()


async def test_a_long_transaction_that_wrote_an_entry_holds_back_only_its_own(
    db: Database, tagging_stub: TaggingStub, tasks_stub: TasksStub, audience_stub: AudienceStub
) -> None:
    world = World(tagging_stub, tasks_stub, audience_stub)
    await world.start()
    try:
        start = await feed_end(tagging_stub)
        slow_member = await batch_member(tagging_stub, world.batch)
        slow: Connection
        async with db.transaction(TENANT_ACME) as slow:
            await feed_store.append_feed(slow, TENANT_ACME, FeedKind.MEMBER_CHANGED, slow_member, "slow", {})
            buyer = await world.buyer()
            await world.consumed(*buyer, start)
            seen, held = await read_all(tagging_stub, start)
            assert "slow" not in subjects(seen, slow_member)
        # Committed: its entry comes after the order, once, to a reader going on from its cursor.
        later, _ = await read_all(tagging_stub, held)
        assert subjects(later, slow_member) == ["slow"]
        everything, _ = await read_all(tagging_stub, start)
        ours = [e.subject_id for e in everything if e.subject_id in {"slow", buyer[1]}]
        assert ours == [buyer[1], "slow"]
        await world.consumed(*buyer, start)
    finally:
        await world.stop()


def subjects(entries: list[Any], member_id: str) -> list[str]:
    return [e.subject_id for e in entries if e.member_id == member_id and e.subject_id == "slow"]
