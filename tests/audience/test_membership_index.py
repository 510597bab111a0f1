"""The membership index: CheckMembership of a dynamic audience answered from its stored membership,
only while that membership is the current definition's and everything it wrote has been read.

The service's maintainer runs in the background; the tests drive an index of their own over the
same database (refreshed by hand) beside the service's, and wait with deadlines, never timings.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime import outbox
from runtime.db import Database
from services.audience import membership_index, store
from services.audience.definitions import AudienceInput, Definitions
from services.audience.membership_index import MembershipIndex
from tests.audience.helpers import all_of, check, fact, in_batch, member, order, order_count
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from tests.tagging.rule_builders import Op
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


def bought(times: int = 1) -> audience_pb2.AudienceRule:
    return fact(order_count(), Op.OPERATOR_GE, times)


async def create_dynamic(stub: AudienceStub, rule: audience_pb2.AudienceRule) -> str:
    audience = audience_pb2.Audience(audience_id=unique("idx"), rule=rule, dynamic=True)
    await stub.CreateAudience(audience_service_pb2.CreateAudienceRequest(audience=audience), metadata=ACME)
    return audience.audience_id


async def evaluated_version(db: Database, audience_id: str) -> int | None:
    """The version the maintainer last evaluated the audience whole at."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        version: int | None = await conn.fetchval(
            "SELECT membership_version FROM audience.audiences WHERE audience_id = $1", audience_id
        )
        return version


def answered(index: MembershipIndex, audience_id: str) -> Callable[[str], Awaitable[tuple[bool, int] | None]]:
    async def answer(member_id: str) -> tuple[bool, int] | None:
        await index.refresh(TENANT_ACME)
        return index.answer(TENANT_ACME, audience_id, member_id)

    return answer


async def test_a_dynamic_audience_is_answered_from_its_stored_membership_as_it_changes(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    buyer, browser = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await order(tagging_stub, buyer, 2, [("tea", 1_000)])
    index = MembershipIndex(db, frozenset({TENANT_ACME}))
    await index.refresh(TENANT_ACME)  # loaded before the audience exists: it follows from the feed
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    answer = answered(index, audience_id)

    await eventually(lambda: _is(answer(buyer), (True, 1)), "the index answers for the audience")
    assert await answer(browser) == (False, 1)
    assert await check(audience_stub, audience_id, buyer) and not await check(
        audience_stub, audience_id, browser
    )

    await order(tagging_stub, browser, 1, [("tea", 2_000)])
    await eventually(lambda: _is(answer(browser), (True, 1)), "the new buyer is in")
    await eventually(lambda: check(audience_stub, audience_id, browser), "the service's check agrees")
    # A fresh index loads the same membership in one go.
    fresh = answered(MembershipIndex(db, frozenset({TENANT_ACME})), audience_id)
    assert (await fresh(buyer), await fresh(browser)) == ((True, 1), (True, 1))


async def test_an_evaluation_is_answered_for_only_once_its_entries_are_read(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """An index that has not read the evaluation's entries must not trust the evaluated version: it
    would answer "not a member" for a member. An unrelated transaction left open delays neither the
    entries nor the answers (issue 25)."""
    batch = unique("batch")
    buyer = await member(tagging_stub, batch)
    await order(tagging_stub, buyer, 2, [("tea", 1_000)])
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        before = outbox.parse_cursor(await store.last_audience_cursor(conn) or "")
    # Loaded before the audience exists: it learns of the evaluation from the audience feed.
    index = MembershipIndex(db, frozenset({TENANT_ACME}))
    await index.refresh(TENANT_ACME)
    older = await db.pool.acquire()
    try:
        await older.execute("BEGIN")
        await older.fetchval("SELECT pg_current_xact_id()")
        audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
        await eventually(lambda: _is(evaluated_version(db, audience_id), 1), "the maintainer evaluated it")
        async with db.transaction(TENANT_ACME, readonly=True) as conn:
            assert audience_id not in await store.indexable_audiences(conn, before)
        answer = answered(index, audience_id)
        # The first answer it gives (a tuple, so "not a member" counts too) must be right.
        first = await eventually(lambda: answer(buyer), "the index answers while the transaction is open")
        assert first == (True, 1)
    finally:
        await older.execute("ROLLBACK")
        await db.pool.release(older)


async def test_an_update_stops_the_answers_until_the_new_version_is_evaluated(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    batch = unique("batch")
    once, twice = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await order(tagging_stub, once, 3, [("tea", 1_000)])
    for days in (3, 4):
        await order(tagging_stub, twice, days, [("tea", 1_000)])
    index = MembershipIndex(db, frozenset({TENANT_ACME}))
    await index.refresh(TENANT_ACME)
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    answer = answered(index, audience_id)
    await eventually(lambda: _is(answer(once), (True, 1)), "version 1 is answered for")

    definitions = Definitions(db, changed=index.forget)
    stricter = AudienceInput(audience_id, all_of(in_batch(batch), bought(2)), dynamic=True)
    await definitions.update(TENANT_ACME, stricter, 0)
    assert index.answer(TENANT_ACME, audience_id, once) is None  # at once, before any refresh
    await eventually(lambda: _is(answer(twice), (True, 2)), "version 2 is answered for")
    assert await answer(once) == (False, 2)

    await definitions.delete(TENANT_ACME, audience_id)
    assert index.answer(TENANT_ACME, audience_id, twice) is None
    await index.refresh(TENANT_ACME)
    assert index.answer(TENANT_ACME, audience_id, twice) is None


async def test_an_index_not_refreshed_for_a_while_answers_nothing(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    moment = [time.monotonic()]
    index = MembershipIndex(db, frozenset({TENANT_ACME}), clock=lambda: moment[0])
    batch = unique("batch")
    buyer = await member(tagging_stub, batch)
    await order(tagging_stub, buyer, 1, [("tea", 1_000)])
    await index.refresh(TENANT_ACME)
    audience_id = await create_dynamic(audience_stub, all_of(in_batch(batch), bought()))
    await eventually(lambda: _is(answered(index, audience_id)(buyer), (True, 1)), "the index answers")
    moment[0] += membership_index.MAX_AGE_SECONDS + 1
    assert index.answer(TENANT_ACME, audience_id, buyer) is None
    await index.refresh(TENANT_ACME)
    assert index.answer(TENANT_ACME, audience_id, buyer) == (True, 1)


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


def test_the_smallest_audiences_are_held_first_as_many_as_fit() -> None:
    sizes = {"b": 3, "a": 3, "c": 1, "d": 10}
    assert membership_index.fitting(sizes, 7) == {"c", "a", "b"}
    assert membership_index.fitting(sizes, 4) == {"c", "a"}  # ties by id
    assert membership_index.fitting(sizes, 0) == set()
    assert membership_index.fitting({}, 5) == set()


async def test_the_index_holds_no_more_than_its_limit_and_lets_the_largest_go(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """On its own tenant (no other test makes dynamic audiences there): a limit of 2 holds the
    two buyers' audience and leaves the three-member one to evaluated checks; once a third member
    buys, the buyers' audience outgrows the limit and is let go as well. The service, with its own
    index, answers every check all along."""
    batch = unique("batch")
    members = [await member(tagging_stub, batch, metadata=GLOBEX) for _ in range(3)]
    for buyer in members[:2]:
        await order(tagging_stub, buyer, 2, [("tea", 1_000)], metadata=GLOBEX)
    buyers, everyone = unique("idx"), unique("idx")
    for audience_id, rule in ((buyers, all_of(in_batch(batch), bought())), (everyone, in_batch(batch))):
        audience = audience_pb2.Audience(audience_id=audience_id, rule=rule, dynamic=True)
        request = audience_service_pb2.CreateAudienceRequest(audience=audience)
        await audience_stub.CreateAudience(request, metadata=GLOBEX)

    async def evaluated(audience_id: str) -> bool:
        """Evaluated whole at its version by a transaction whose entries have their positions."""
        async with db.transaction(TENANT_GLOBEX, readonly=True) as conn:
            return bool(
                await conn.fetchval(
                    """SELECT a.membership_version = a.current_version
                              AND (EXISTS (SELECT 1 FROM audience.feed_positions p
                                           WHERE p.txid = a.membership_txid)
                                   OR NOT EXISTS (SELECT 1 FROM audience.feed f
                                                  WHERE f.txid = a.membership_txid))
                       FROM audience.audiences a WHERE a.audience_id = $1""",
                    audience_id,
                )
            )

    for audience_id in (buyers, everyone):
        await eventually(functools.partial(evaluated, audience_id), f"{audience_id} is evaluated")
    index = MembershipIndex(db, frozenset({TENANT_GLOBEX}), limit=2)

    async def answer(audience_id: str, member_id: str) -> tuple[bool, int] | None:
        await index.refresh(TENANT_GLOBEX)
        return index.answer(TENANT_GLOBEX, audience_id, member_id)

    assert await answer(buyers, members[0]) == (True, 1)
    assert await answer(buyers, members[2]) == (False, 1)
    assert await answer(everyone, members[0]) is None
    assert index.held() == 2

    await order(tagging_stub, members[2], 1, [("tea", 1_000)], metadata=GLOBEX)
    await eventually(lambda: _is(answer(buyers, members[0]), None), "the buyers' audience is let go")
    assert index.held() == 0
    for audience_id in (buyers, everyone):  # both hold all three now, as the service says
        for member_id in members:
            await eventually(
                functools.partial(check, audience_stub, audience_id, member_id, metadata=GLOBEX),
                f"the service has {member_id} in {audience_id}",
            )
