"""Counting, previewing, listing, exporting and checking audiences over real tagging data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from runtime.db import Connection, Database
from services.audience import evaluation
from tests.audience.helpers import (
    CART,
    FAVOURITE,
    Match,
    all_of,
    amount_sum,
    any_of,
    check,
    count,
    create,
    event,
    event_count,
    export,
    fact,
    give,
    in_batch,
    list_all,
    manual_dimension,
    member,
    member_of,
    not_,
    order,
    order_count,
    tag,
)
from tests.conftest import ACME, GLOBEX, INITECH, unique
from tests.tagging.rule_builders import Field, Op, field
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


async def test_the_five_condition_nested_audience(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    """Two tag conditions, a transaction window, a behaviour window and a not, nested."""
    batch = unique("batch")
    tiers = await manual_dimension(tagging_stub, ["gold", "silver", "bronze"])
    flags = await manual_dimension(tagging_stub, ["vip", "complained"])

    async def shopper(
        *,
        tier: str | None = "gold",
        flag: str | None = None,
        paid_days_ago: float = 5,
        event_days_ago: float = 3,
        kind: int = CART,
        bought_skincare: bool = False,
    ) -> str:
        member_id = await member(tagging_stub, batch)
        if tier:
            await give(tagging_stub, tiers, tier, [member_id])
        if flag:
            await give(tagging_stub, flags, flag, [member_id])
        lines = [("makeup", 15_000)] + ([("skincare", 2_000)] if bought_skincare else [])
        await order(tagging_stub, member_id, paid_days_ago, lines)
        await event(tagging_stub, member_id, kind, event_days_ago, "skincare")
        return member_id

    gold = await shopper()
    vip = await shopper(tier=None, flag="vip")
    favourited = await shopper(tier="silver", kind=FAVOURITE)
    untagged = await shopper(tier=None)
    bronze = await shopper(tier="bronze")
    old_order = await shopper(paid_days_ago=60)
    old_cart = await shopper(event_days_ago=20)
    bought = await shopper(bought_skincare=True)
    complained = await shopper(flag="complained")
    inside = sorted([gold, vip, favourited])

    rule = all_of(
        in_batch(batch),
        any_of(
            tag(tiers, Match.TAG_MATCH_ANY_OF, "gold", "silver"),
            tag(flags, Match.TAG_MATCH_HAS_VALUE, "vip"),
        ),
        tag(flags, Match.TAG_MATCH_NONE_OF, "complained"),
        fact(amount_sum(30), Op.OPERATOR_GE, 10_000),
        fact(event_count(14, event_kinds=[CART, FAVOURITE], categories=["skincare"]), Op.OPERATOR_GE, 1),
        not_(fact(order_count(0, categories=["skincare"]), Op.OPERATOR_GE, 1)),
    )
    audience = await create(audience_stub, rule)
    name = audience.audience_id
    assert (audience.name, audience.version) == (f"audiences/{name}", 1)

    assert await count(audience_stub, name) == 3
    assert await list_all(audience_stub, name) == inside
    assert sorted(i for chunk in await export(audience_stub, name) for i in chunk) == inside
    for member_id in [gold, vip, favourited]:
        assert await check(audience_stub, name, member_id)
    for member_id in [untagged, bronze, old_order, old_cart, bought, complained]:
        assert not await check(audience_stub, name, member_id), member_id

    request = audience_service_pb2.PreviewAudienceRequest(name=f"audiences/{name}", sample_size=10)
    preview = await audience_stub.PreviewAudience(request, metadata=ACME)
    tags = {m.member_id: sorted((t.dimension, t.value) for t in m.tags) for m in preview.members}
    assert tags == {gold: [(tiers, "gold")], vip: [(flags, "vip")], favourited: [(tiers, "silver")]}


async def test_interest_not_bought_and_references_to_other_audiences(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    """ "Carted or favourited category A in the last 14 days and never bought A", then reused by name."""
    batch = unique("batch")
    carted = await member(tagging_stub, batch, level="gold")
    await event(tagging_stub, carted, CART, 2, "shoes")
    favourited = await member(tagging_stub, batch, level="silver")
    await event(tagging_stub, favourited, FAVOURITE, 13, "shoes")
    bought = await member(tagging_stub, batch, level="gold")
    await event(tagging_stub, bought, CART, 2, "shoes")
    await order(tagging_stub, bought, 400, [("shoes", 9_900)])
    viewed = await member(tagging_stub, batch, level="gold")
    await event(tagging_stub, viewed, 1, 2, "shoes")  # a view is neither a cart nor a favourite
    other_category = await member(tagging_stub, batch, level="gold")
    await event(tagging_stub, other_category, CART, 2, "hats")

    interested = await create(
        audience_stub,
        all_of(
            in_batch(batch),
            fact(event_count(14, event_kinds=[CART, FAVOURITE], categories=["shoes"]), Op.OPERATOR_GE, 1),
            fact(order_count(0, categories=["shoes"]), Op.OPERATOR_EQ, 0),
        ),
    )
    assert await list_all(audience_stub, interested.audience_id) == sorted([carted, favourited])

    gold_level = fact(field(Field.PROFILE_FIELD_LEVEL), Op.OPERATOR_EQ, "gold")
    gold_interested = await create(audience_stub, all_of(member_of(interested.audience_id), gold_level))
    assert await list_all(audience_stub, gold_interested.audience_id) == [carted]
    assert await check(audience_stub, gold_interested.audience_id, carted)
    assert not await check(audience_stub, gold_interested.audience_id, favourited)
    not_interested = await create(
        audience_stub, all_of(in_batch(batch), not_(member_of(interested.audience_id)))
    )
    assert await list_all(audience_stub, not_interested.audience_id) == sorted(
        [bought, viewed, other_category]
    )


async def test_paging_is_stable_and_complete(tagging_stub: TaggingStub, audience_stub: AudienceStub) -> None:
    batch = unique("batch")
    ids = sorted([await member(tagging_stub, batch) for _ in range(7)])
    audience = await create(audience_stub, in_batch(batch))
    pages: list[list[str]] = []
    token = ""
    while True:
        request = audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{audience.audience_id}", page_size=3, page_token=token
        )
        page = await audience_stub.ListAudienceMembers(request, metadata=ACME)
        pages.append(list(page.member_ids))
        token = page.next_page_token
        if not token:
            break
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert await list_all(audience_stub, audience.audience_id, page_size=3) == ids  # the same again

    # A page token keeps the version it started with; a new member joins the following pages.
    first = await audience_stub.ListAudienceMembers(
        audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{audience.audience_id}", page_size=3
        ),
        metadata=ACME,
    )
    late = await member(tagging_stub, batch, member_id=f"{ids[-1]}-late")
    rest = await audience_stub.ListAudienceMembers(
        audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{audience.audience_id}", page_size=10, page_token=first.next_page_token
        ),
        metadata=ACME,
    )
    assert list(first.member_ids) + list(rest.member_ids) == [*ids, late]
    assert rest.next_page_token == ""

    # An update between pages does not change the pages of a listing already started.
    first = await audience_stub.ListAudienceMembers(
        audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{audience.audience_id}", page_size=3
        ),
        metadata=ACME,
    )
    update = audience_service_pb2.UpdateAudienceRequest(
        audience=audience_pb2.Audience(audience_id=audience.audience_id, rule=in_batch(unique("batch")))
    )
    assert (await audience_stub.UpdateAudience(update, metadata=ACME)).version == 2
    rest = await audience_stub.ListAudienceMembers(
        audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{audience.audience_id}", page_size=10, page_token=first.next_page_token
        ),
        metadata=ACME,
    )
    assert (first.version, rest.version) == (1, 1)
    assert list(first.member_ids) + list(rest.member_ids) == [*ids, late]
    assert await list_all(audience_stub, audience.audience_id) == []  # a new listing sees version 2


async def test_paging_through_a_per_member_filter(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    """An aggregate is a residual, applied outside the selection's fence, while a page's key range
    joins the selection: pages still partition the audience, alone and through references."""
    batch = unique("batch")
    ids = sorted([await member(tagging_stub, batch) for _ in range(7)])
    big_spenders = ids[1::2]
    for member_id in ids:
        await order(tagging_stub, member_id, 3, [("tea", 20_000 if member_id in big_spenders else 500)])
    spent = fact(amount_sum(30), Op.OPERATOR_GE, 10_000)
    audience = await create(audience_stub, all_of(in_batch(batch), spent))
    assert await list_all(audience_stub, audience.audience_id, page_size=2) == big_spenders
    assert await count(audience_stub, audience.audience_id) == len(big_spenders)
    # The same through a reference: the referenced rule's conjuncts join the referring one's.
    small = await create(audience_stub, all_of(in_batch(batch), not_(spent)))
    either = await create(
        audience_stub, any_of(member_of(audience.audience_id), member_of(small.audience_id))
    )
    assert await list_all(audience_stub, either.audience_id, page_size=3) == ids
    narrowed = await create(audience_stub, all_of(member_of(small.audience_id), spent))
    assert await list_all(audience_stub, narrowed.audience_id, page_size=3) == []
    for member_id in ids:
        assert await check(audience_stub, audience.audience_id, member_id) == (member_id in big_spenders)


async def test_membership_checks_follow_every_definition_change_at_once(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    """CheckMembership reuses what it compiled while the audience and every audience it references
    keep their versions; an update of either, or a delete, is seen by the very next check."""
    batch = unique("batch")
    gold = await member(tagging_stub, batch, level="gold")
    silver = await member(tagging_stub, batch, level="silver")
    level = fact(field(Field.PROFILE_FIELD_LEVEL), Op.OPERATOR_EQ, "gold")
    inner = await create(audience_stub, all_of(in_batch(batch), level))
    outer = await create(audience_stub, all_of(member_of(inner.audience_id)))

    async def members(name: str) -> list[str]:
        return [m for m in (gold, silver) if await check(audience_stub, name, m)]

    async def update(name: str, rule: audience_pb2.AudienceRule) -> None:
        request = audience_service_pb2.UpdateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=name, rule=rule)
        )
        await audience_stub.UpdateAudience(request, metadata=ACME)

    assert await members(outer.audience_id) == [gold]
    assert await members(outer.audience_id) == [gold]  # the second time from what the first compiled
    await update(inner.audience_id, all_of(in_batch(batch), not_(level)))
    assert await members(outer.audience_id) == [silver]
    await update(outer.audience_id, all_of(in_batch(batch)))
    assert await members(outer.audience_id) == [gold, silver]
    await audience_stub.DeleteAudience(
        audience_service_pb2.DeleteAudienceRequest(name=f"audiences/{outer.audience_id}"), metadata=ACME
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(audience_stub, outer.audience_id, gold)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # an unknown member after a cached check
        await check(audience_stub, inner.audience_id, unique())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_checks_are_answered_together_each_with_its_own_answer(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, db: Database
) -> None:
    """While the tenant's check statements are held up (a lock on the audiences table, which each
    reads to see its definition is current), no more of them than the in-flight bound reach the
    database: the other checks wait and go as one statement. Every caller still gets its answer,
    and an unknown member its NOT_FOUND."""
    batch = unique("batch")
    levels = ["gold", "silver"] * 6
    members = [await member(tagging_stub, batch, level=level) for level in levels]
    gold = fact(field(Field.PROFILE_FIELD_LEVEL), Op.OPERATOR_EQ, "gold")
    audience = await create(audience_stub, all_of(in_batch(batch), gold))
    assert await check(audience_stub, audience.audience_id, members[0])  # compiled and remembered
    unknown = unique()

    async def held_up(conn: Connection) -> int:
        # Within a transaction the activity view keeps the snapshot its first read took.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'memberops-reading'
                     AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"""
            )
        )

    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE audience.audiences IN ACCESS EXCLUSIVE MODE")
        calls = [
            asyncio.create_task(check(audience_stub, audience.audience_id, m)) for m in [*members, unknown]
        ]

        async def all_held_up() -> bool:
            return await held_up(conn) >= evaluation.CHECK_BATCHES_IN_FLIGHT

        await eventually(all_held_up, "did the checks reach the database", interval=0.02)
        await asyncio.sleep(0.2)  # time for any further statement to arrive, if one were sent
        assert await held_up(conn) == evaluation.CHECK_BATCHES_IN_FLIGHT
    *answers, for_unknown = await asyncio.gather(*calls, return_exceptions=True)
    assert answers == [level == "gold" for level in levels]
    assert isinstance(for_unknown, grpc.aio.AioRpcError)
    assert for_unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_tenants_never_meet(tagging_stub: TaggingStub, audience_stub: AudienceStub) -> None:
    batch = unique("batch")
    acme = await member(tagging_stub, batch, metadata=ACME)
    globex = [await member(tagging_stub, batch, metadata=GLOBEX) for _ in range(2)]
    name = unique("aud")
    await create(audience_stub, in_batch(batch), name=name, metadata=ACME)
    await create(audience_stub, all_of(in_batch(batch)), name=name, metadata=GLOBEX)  # same id, other tenant
    assert await list_all(audience_stub, name, metadata=ACME) == [acme]
    assert await list_all(audience_stub, name, metadata=GLOBEX) == sorted(globex)
    assert await count(audience_stub, name, metadata=GLOBEX) == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(audience_stub, name, acme, metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    only_acme = await create(audience_stub, in_batch(batch), metadata=ACME)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await count(audience_stub, only_acme.audience_id, metadata=INITECH)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_export_streams_every_member_in_chunks(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    """25,000 members imported through tagging, exported in chunks of 10,000 from one cursor."""
    batch = unique("batch")
    members = []
    for n in range(25_000):
        message = member_pb2.Member(member_id=f"{batch}-{n:05d}")
        message.attributes.update({"batch": batch})
        members.append(message)

    async def requests() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        for start in range(0, len(members), 10_000):
            yield tagging_service_pb2.ImportMembersRequest(members=members[start : start + 10_000])

    imported = await tagging_stub.ImportMembers(requests(), metadata=INITECH, timeout=120)
    assert imported.received_count == 25_000
    audience = await create(audience_stub, in_batch(batch), metadata=INITECH)
    chunks = await export(audience_stub, audience.audience_id, metadata=INITECH)
    assert [len(chunk) for chunk in chunks] == [10_000, 10_000, 5_000]
    exported = [member_id for chunk in chunks for member_id in chunk]
    assert len(set(exported)) == 25_000
    assert set(exported) == {m.member_id for m in members}
    assert await count(audience_stub, audience.audience_id, metadata=INITECH) == 25_000
    small = await export(audience_stub, audience.audience_id, chunk_size=7_000, metadata=INITECH)
    assert [len(chunk) for chunk in small] == [7_000, 7_000, 7_000, 4_000]
