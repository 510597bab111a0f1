"""Real-time refresh after commit: batched across requests, durable through the refresh queue."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from memberops.tagging.v1 import feed_pb2, tags_pb2

from runtime.db import Database
from services.tagging import order_store, refresh_store
from services.tagging.api import order_from_proto
from services.tagging.evaluation import Tagger
from services.tagging.facts import content_hash
from services.tagging.realtime import RealTimeTags, input_bits
from services.tagging.rules import Input
from tests.conftest import TENANT_ACME
from tests.tagging.facts_helpers import an_order, new_member, stamp
from tests.tagging.test_catalog import create, dimension, frequency
from tests.tagging.test_feed import feed_end, read_all
from tests.tagging.test_feed_contract import recency, registered_member
from tests.tagging.test_member_tags import order_now, tags_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def owed(db: Database, member_id: str) -> list[tuple[int, int]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        return [(row["inputs"], row["seq"]) for row in await refresh_store.owed_refreshes(conn, [member_id])]


@contextlib.asynccontextmanager
async def running(realtime: RealTimeTags) -> AsyncIterator[None]:
    task = asyncio.create_task(realtime.run(frozenset(), lambda: dt.datetime.now(dt.UTC)))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_concurrent_orders_each_see_their_own_tag_when_they_return(
    tagging_stub: Stub, db: Database
) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    members = [await new_member(tagging_stub) for _ in range(40)]

    async def order_then_read(member_id: str) -> list[str]:
        await order_now(tagging_stub, member_id)
        return await tags_of(tagging_stub, member_id, name)

    # Forty at once share a few refreshes; each must still read its own order's value on return.
    assert await asyncio.gather(*(order_then_read(m) for m in members)) == [["light"]] * len(members)
    assert [await owed(db, m) for m in members] == [[]] * len(members)


async def test_a_fact_whose_refresh_never_ran_is_refreshed_by_the_sweep(
    tagging_stub: Stub, db: Database
) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    member_id = await new_member(tagging_stub)
    paid = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    order = order_from_proto(an_order(member_id, paid_time=stamp(paid)))
    # What a process that died right after the fact's commit leaves: the order and its queue row.
    async with db.transaction(TENANT_ACME) as conn:
        assert await order_store.insert_order(conn, TENANT_ACME, order, content_hash(order))
        await refresh_store.queue_refresh(conn, TENANT_ACME, [member_id], input_bits(Input.ORDERS))
    assert await tags_of(tagging_stub, member_id, name) == ["none"]
    assert [bits for bits, _ in await owed(db, member_id)] == [input_bits(Input.ORDERS)]

    realtime = RealTimeTags(db, Tagger(db))
    async with running(realtime):
        # Younger than the age asked for: left to the request that is presumably still refreshing.
        assert await realtime.sweep_once(TENANT_ACME, dt.datetime.now(dt.UTC), older_than=3600) == 0
        assert await realtime.sweep_once(TENANT_ACME, dt.datetime.now(dt.UTC), older_than=0) >= 1
    assert await tags_of(tagging_stub, member_id, name) == ["light"]
    assert await owed(db, member_id) == []


async def test_a_fact_queued_during_a_refresh_stays_owed(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    async with db.transaction(TENANT_ACME) as conn:
        await refresh_store.queue_refresh(conn, TENANT_ACME, [member_id], input_bits(Input.PROFILE))
    [(_, seen)] = await owed(db, member_id)
    # A second fact commits after the refresh read the queue, before it settles what it saw.
    async with db.transaction(TENANT_ACME) as conn:
        await refresh_store.queue_refresh(conn, TENANT_ACME, [member_id], input_bits(Input.EVENTS))
    async with db.transaction(TENANT_ACME) as conn:
        await refresh_store.settle_refreshes(conn, [(member_id, seen)])
    [(bits, seq)] = await owed(db, member_id)
    assert bits == input_bits(Input.PROFILE) | input_bits(Input.EVENTS)
    assert seq > seen
    async with db.transaction(TENANT_ACME) as conn:
        await refresh_store.settle_refreshes(conn, [(member_id, seq)])
    assert await owed(db, member_id) == []


async def test_a_refresh_owed_for_history_and_a_fresh_fact_dates_its_changes_by_the_history(
    tagging_stub: Stub, db: Database
) -> None:
    """A year-old order and a fresh event owed to one refresh: it cannot tell which made a change,
    so it dates its changes by the earlier (history never becomes news; review B item 10)."""
    name = dimension()
    definition = recency(name)
    definition.refresh_policy = tags_pb2.REFRESH_POLICY_REAL_TIME
    await create(tagging_stub, definition)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    member_id = await registered_member(tagging_stub, now - dt.timedelta(days=730))
    paid = now - dt.timedelta(days=300)
    order = order_from_proto(an_order(member_id, paid_time=stamp(paid)))
    start = await feed_end(tagging_stub)
    # What a history order and a fresh event leave when one refresh owes both: the second merged
    # into the first's queue row (one transaction, so no sweeper refreshes in between).
    async with db.transaction(TENANT_ACME) as conn:
        assert await order_store.insert_order(conn, TENANT_ACME, order, content_hash(order))
        await refresh_store.queue_refresh(conn, TENANT_ACME, [member_id], input_bits(Input.ORDERS), paid)
        await refresh_store.queue_refresh(conn, TENANT_ACME, [member_id], input_bits(Input.EVENTS), now)
    async with db.transaction(TENANT_ACME, plans="custom") as conn:
        await Tagger(db).refresh_owed(conn, TENANT_ACME, {member_id: 0}, dt.datetime.now(dt.UTC))
    got = {
        (e.tag_changed.value, e.tag_changed.change): e.tag_changed.occur_time.ToDatetime(tzinfo=dt.UTC)
        for e in (await read_all(tagging_stub, start))[0]
        if e.member_id == member_id and e.subject_id == name
    }
    assert got == {("none", feed_pb2.TAG_CHANGE_REMOVED): paid, ("buyer", feed_pb2.TAG_CHANGE_ADDED): paid}
