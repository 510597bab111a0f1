"""Audience definitions: create, versioned update, get, list, soft delete, and idempotent creates."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime.db import Database
from tests.audience.helpers import Match, all_of, audience_id, count, create, in_batch, member, member_of, tag
from tests.conftest import ACME, GLOBEX, TENANT_ACME, unique

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


async def get(stub: AudienceStub, name: str, version: int = 0) -> audience_pb2.Audience:
    request = audience_service_pb2.GetAudienceRequest(name=f"audiences/{name}", version=version)
    return await stub.GetAudience(request, metadata=ACME)


async def update(
    stub: AudienceStub, name: str, rule: audience_pb2.AudienceRule, expected: int = 0, display_name: str = ""
) -> audience_pb2.Audience:
    audience = audience_pb2.Audience(name=f"audiences/{name}", rule=rule, display_name=display_name)
    request = audience_service_pb2.UpdateAudienceRequest(audience=audience, expected_version=expected)
    return await stub.UpdateAudience(request, metadata=ACME)


async def delete(stub: AudienceStub, name: str) -> audience_pb2.Audience:
    request = audience_service_pb2.DeleteAudienceRequest(name=f"audiences/{name}")
    return await stub.DeleteAudience(request, metadata=ACME)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_updates_add_versions_and_keep_the_old_ones(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    first_batch, second_batch = unique("batch"), unique("batch")
    await member(tagging_stub, first_batch)
    await member(tagging_stub, second_batch)
    await member(tagging_stub, second_batch)
    created = await create(audience_stub, in_batch(first_batch))
    name = created.audience_id
    assert await count(audience_stub, name) == 1

    updated = await update(audience_stub, name, in_batch(second_batch), expected=1, display_name="Second")
    assert (updated.version, updated.display_name) == (2, "Second")
    assert await count(audience_stub, name) == 2  # evaluations use the current version
    same = await update(audience_stub, name, in_batch(second_batch), display_name="Second")
    assert same.version == 2  # equal content adds no version

    assert (await get(audience_stub, name)).rule == in_batch(second_batch)
    assert (await get(audience_stub, name, version=1)).rule == in_batch(first_batch)
    assert (
        await code_of(update(audience_stub, name, in_batch(first_batch), expected=1))
        == grpc.StatusCode.ABORTED
    )
    assert await code_of(get(audience_stub, name, version=3)) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(update(audience_stub, audience_id(), in_batch(first_batch)))
        == grpc.StatusCode.NOT_FOUND
    )


async def test_concurrent_duplicate_updates_add_one_version(audience_stub: AudienceStub) -> None:
    """Copies of one update against version 1: one makes version 2, the others find it current."""
    name = (await create(audience_stub, in_batch(unique("batch")))).audience_id
    rule = in_batch(unique("batch"))
    copies = await asyncio.gather(*(update(audience_stub, name, rule, expected=1) for _ in range(16)))
    assert {copy.version for copy in copies} == {2}
    assert (await get(audience_stub, name)).version == 2
    assert await code_of(get(audience_stub, name, version=3)) == grpc.StatusCode.NOT_FOUND


async def test_list_pages_through_audiences_by_id(audience_stub: AudienceStub) -> None:
    prefix = unique("list")
    names = [f"{prefix}-{n}" for n in range(5)]
    for name in names:
        await create(audience_stub, in_batch(prefix), name=name, metadata=GLOBEX)
    seen: list[str] = []
    token = ""
    while True:
        request = audience_service_pb2.ListAudiencesRequest(page_size=2, page_token=token)
        page = await audience_stub.ListAudiences(request, metadata=GLOBEX)
        assert len(page.audiences) <= 2
        seen.extend(a.audience_id for a in page.audiences)
        token = page.next_page_token
        if not token:
            break
    assert [s for s in seen if s.startswith(prefix)] == names
    assert seen == sorted(seen)


async def test_delete_is_soft_and_refused_while_referenced(audience_stub: AudienceStub) -> None:
    base = await create(audience_stub, in_batch(unique("batch")))
    user = await create(audience_stub, all_of(member_of(base.audience_id)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(audience_stub, base.audience_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert user.audience_id in (caught.value.details() or "")

    deleted_user = await delete(audience_stub, user.audience_id)
    assert deleted_user.HasField("delete_time")
    assert (
        await delete(audience_stub, user.audience_id)
    ).delete_time == deleted_user.delete_time  # twice: harmless
    deleted = await delete(audience_stub, base.audience_id)  # no longer referenced
    assert deleted.HasField("delete_time")
    assert await code_of(get(audience_stub, base.audience_id)) == grpc.StatusCode.NOT_FOUND
    assert await code_of(count(audience_stub, base.audience_id)) == grpc.StatusCode.NOT_FOUND
    # The id stays taken: creating it again is ALREADY_EXISTS.
    assert (
        await code_of(create(audience_stub, in_batch("x"), name=base.audience_id))
        == grpc.StatusCode.ALREADY_EXISTS
    )


async def test_versions_are_kept_in_the_database(audience_stub: AudienceStub, db: Database) -> None:
    created = await create(audience_stub, in_batch(unique("batch")))
    await update(audience_stub, created.audience_id, in_batch(unique("batch")))
    await delete(audience_stub, created.audience_id)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        versions = await conn.fetchval(
            "SELECT count(*) FROM audience.audience_versions WHERE audience_id = $1", created.audience_id
        )
        deleted = await conn.fetchval(
            "SELECT delete_time IS NOT NULL FROM audience.audiences WHERE audience_id = $1",
            created.audience_id,
        )
    assert (versions, deleted) == (2, True)


async def test_creating_the_same_id_twice_is_already_exists(audience_stub: AudienceStub) -> None:
    name = audience_id()
    rule = in_batch(unique("batch"))
    await create(audience_stub, rule, name=name)
    assert await code_of(create(audience_stub, rule, name=name)) == grpc.StatusCode.ALREADY_EXISTS


async def test_a_retried_create_with_its_request_id_returns_the_first_result(
    audience_stub: AudienceStub,
) -> None:
    name = audience_id()
    rule = in_batch(unique("batch"))
    first = await create(audience_stub, rule, name=name, request_id="req-1")
    again = await create(audience_stub, rule, name=name, request_id="req-1")
    assert again == first
    other_rule = create(audience_stub, in_batch("other"), name=name, request_id="req-1")
    assert await code_of(other_rule) == grpc.StatusCode.ALREADY_EXISTS
    other_request = create(audience_stub, rule, name=name, request_id="req-2")
    assert await code_of(other_request) == grpc.StatusCode.ALREADY_EXISTS


async def test_concurrent_duplicate_creates_let_exactly_one_through(audience_stub: AudienceStub) -> None:
    name = audience_id()
    rule = in_batch(unique("batch"))
    results = await asyncio.gather(
        *(create(audience_stub, rule, name=name) for _ in range(10)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, audience_pb2.Audience)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1
    assert [f.code() for f in failed] == [grpc.StatusCode.ALREADY_EXISTS] * 9
    assert (await get(audience_stub, name)).version == 1


async def test_tag_conditions_on_data_valued_dimensions_take_any_value(audience_stub: AudienceStub) -> None:
    """`categories_bought` (built in) takes its values from the data, so any category is accepted."""
    created = await create(audience_stub, tag("categories_bought", Match.TAG_MATCH_ANY_OF, "anything-at-all"))
    assert created.version == 1
