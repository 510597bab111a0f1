"""Member tags: real-time on facts, full recompute writing only changes, history and as-of reads."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from runtime.db import Database
from tests.conftest import ACME, TENANT_ACME
from tests.tagging.facts_helpers import an_order, new_member, record_order, stamp
from tests.tagging.test_catalog import create, dimension, frequency, update

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def tags_of(stub: Stub, member_id: str, name: str, as_of: dt.datetime | None = None) -> list[str]:
    request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
    if as_of is not None:
        request.as_of.CopyFrom(stamp(as_of))
    reply = await stub.GetMemberTags(request, metadata=ACME)
    return [t.value for t in reply.tags if t.dimension == name]


async def recompute(stub: Stub, *names: str) -> dict[str, tuple[int, int, int]]:
    reply = await stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=names), metadata=ACME
    )
    return {r.dimension: (r.definition_version, r.added_count, r.removed_count) for r in reply.results}


async def order_now(stub: Stub, member_id: str) -> None:
    paid = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    await record_order(stub, an_order(member_id, paid_time=stamp(paid)))


async def test_a_real_time_tag_follows_an_order_at_once_and_keeps_its_history(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))  # real-time: heavy / light / none
    member_id = await new_member(tagging_stub)
    assert await tags_of(tagging_stub, member_id, name) == ["none"]
    before_order = dt.datetime.now(dt.UTC)
    await order_now(tagging_stub, member_id)
    assert await tags_of(tagging_stub, member_id, name) == ["light"]
    assert await tags_of(tagging_stub, member_id, name, as_of=before_order) == ["none"]
    assert await tags_of(tagging_stub, member_id, name, as_of=before_order - dt.timedelta(days=1)) == []

    reply = await tagging_stub.ListTagChanges(
        tagging_service_pb2.ListTagChangesRequest(member=f"members/{member_id}", dimension=name),
        metadata=ACME,
    )
    light, none = reply.changes  # newest first
    assert (light.value, light.HasField("valid_to"), light.source) == (
        "light",
        False,
        tags_pb2.TAG_SOURCE_RULE,
    )
    assert (none.value, none.valid_to) == ("none", light.valid_from)


async def test_a_tag_opened_by_a_later_clock_closes_at_its_opening(tagging_stub: Stub, db: Database) -> None:
    """Concurrent refreshes read the clock apart: one evaluated at t1 may close a tag another opened
    at t2 > t1. It closes at t2, a moment with no length, never before it opened."""
    name = dimension()
    await create(tagging_stub, frequency(name))
    member_id = await new_member(tagging_stub)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    async with db.transaction(TENANT_ACME) as conn:
        opened = await conn.fetch(
            """UPDATE tagging.member_tags SET valid_from = $3
               WHERE member_id = $1 AND dimension = $2 AND valid_to IS NULL RETURNING id, value""",
            member_id,
            name,
            later,
        )
    assert [row["value"] for row in opened] == ["none"]
    await order_now(tagging_stub, member_id)  # refreshed at once: "none" gives way to "light"
    assert await tags_of(tagging_stub, member_id, name) == ["light"]
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        closed = await conn.fetchrow(
            "SELECT valid_from, valid_to FROM tagging.member_tags WHERE id = $1", opened[0]["id"]
        )
    assert closed is not None and closed["valid_to"] == closed["valid_from"] == later


async def test_full_recompute_writes_only_changes_and_is_idempotent(tagging_stub: Stub) -> None:
    name = dimension()
    scheduled = frequency(name)
    scheduled.refresh_policy = tags_pb2.REFRESH_POLICY_SCHEDULED
    buyer = await new_member(tagging_stub)
    await create(tagging_stub, scheduled)
    await order_now(tagging_stub, buyer)
    assert await tags_of(tagging_stub, buyer, name) == []  # scheduled: nothing until a recompute

    (version, added, removed) = (await recompute(tagging_stub, name))[name]
    assert (version, removed) == (1, 0)
    assert added >= 1
    assert await tags_of(tagging_stub, buyer, name) == ["light"]
    assert (await recompute(tagging_stub, name))[name] == (1, 0, 0)

    idle = await new_member(tagging_stub)
    await order_now(tagging_stub, idle)
    assert (await recompute(tagging_stub, name))[name] == (1, 1, 0)  # only the new member


async def test_a_new_version_retags_only_the_members_whose_value_changes(
    tagging_stub: Stub, db: Database
) -> None:
    name = dimension()
    definition = frequency(name, heavy_from=4)
    definition.refresh_policy = tags_pb2.REFRESH_POLICY_SCHEDULED
    member_id = await new_member(tagging_stub)
    await create(tagging_stub, definition)
    for _ in range(4):
        await order_now(tagging_stub, member_id)  # 4 orders in 90 days: 1.33/month
    await recompute(tagging_stub, name)
    assert await tags_of(tagging_stub, member_id, name) == ["light"]
    await update(tagging_stub, frequency(name, heavy_from=1))  # a real-time v2 with a lower bar
    assert (await recompute(tagging_stub, name))[name][0] == 2
    assert await tags_of(tagging_stub, member_id, name) == ["heavy"]
    async with db.transaction(TENANT_ACME) as conn:
        versions = await conn.fetch(
            """SELECT value, definition_version FROM tagging.member_tags
               WHERE dimension = $1 AND member_id = $2 ORDER BY id""",
            name,
            member_id,
        )
    assert [(r["value"], r["definition_version"]) for r in versions] == [("light", 1), ("heavy", 2)]


async def test_concurrent_recomputes_take_effect_once(tagging_stub: Stub, db: Database) -> None:
    name = dimension()
    definition = frequency(name)
    definition.refresh_policy = tags_pb2.REFRESH_POLICY_SCHEDULED
    await create(tagging_stub, definition)
    results = await asyncio.gather(*(recompute(tagging_stub, name) for _ in range(6)))
    added = sum(r[name][1] for r in results)
    async with db.transaction(TENANT_ACME) as conn:
        holding = await conn.fetchval(
            "SELECT count(*) FROM tagging.member_tags WHERE dimension = $1 AND valid_to IS NULL", name
        )
        members = await conn.fetchval("SELECT count(*) FROM tagging.members")
        doubled = await conn.fetchval(
            """SELECT count(*) FROM (SELECT member_id FROM tagging.member_tags
               WHERE dimension = $1 AND valid_to IS NULL GROUP BY member_id HAVING count(*) > 1) AS d""",
            name,
        )
    assert added == holding == members  # the catch-all value gives every member exactly one
    assert doubled == 0


@pytest.mark.parametrize(
    ("call", "request_fields", "code"),
    [
        ("GetMemberTags", {"member": "members/nobody-here-at-all"}, grpc.StatusCode.NOT_FOUND),
        ("GetMemberTags", {"member": "nobody"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("ListTagChanges", {"page_token": "%%%"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("ListTagChanges", {"page_size": 5000}, grpc.StatusCode.INVALID_ARGUMENT),
        ("ListTagChanges", {"dimension": "Bad Name"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("RecomputeTags", {"dimensions": ["no_such_dimension_anywhere"]}, grpc.StatusCode.NOT_FOUND),
        ("RecomputeTags", {"dimensions": ["Bad Name"]}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_requests(
    tagging_stub: Stub, call: str, request_fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    request_type = getattr(tagging_service_pb2, f"{call}Request")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(tagging_stub, call)(request_type(**request_fields), metadata=ACME)
    assert caught.value.code() == code


async def test_changes_page_through_newest_first(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    members = [await new_member(tagging_stub) for _ in range(5)]
    seen: list[int] = []
    token = ""
    while True:
        page = await tagging_stub.ListTagChanges(
            tagging_service_pb2.ListTagChangesRequest(dimension=name, page_size=2, page_token=token),
            metadata=ACME,
        )
        seen.extend(1 for _ in page.changes)
        assert all(c.dimension == name for c in page.changes)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(members)
