"""Manual and strategy tags: operators add and remove them on members, with who and why kept."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import new_member
from tests.tagging.test_catalog import create, dimension, frequency
from tests.tagging.test_member_tags import tags_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def operator_dimension(name: str, cardinality: int = tags_pb2.CARDINALITY_MULTI) -> tags_pb2.TagDefinition:
    return tags_pb2.TagDefinition(
        dimension=name,
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=cardinality,  # type: ignore[arg-type]
        values=[tags_pb2.TagValue(value=v) for v in ("vip_hotline", "complained", "double11_seed")],
    )


async def add(stub: Stub, name: str, value: str, members: list[str], **extra: Any) -> int:
    fields: dict[str, Any] = {"operator": "alice@ops", "reason": "called the hotline"} | extra
    request = tagging_service_pb2.AddMemberTagsRequest(
        dimension=name, value=value, member_ids=members, **fields
    )
    return (await stub.AddMemberTags(request, metadata=ACME)).changed_count


async def remove(stub: Stub, name: str, value: str, members: list[str]) -> int:
    request = tagging_service_pb2.RemoveMemberTagsRequest(
        dimension=name, value=value, member_ids=members, operator="bob@ops", reason="resolved"
    )
    return (await stub.RemoveMemberTags(request, metadata=ACME)).changed_count


async def test_add_and_remove_on_a_list_keep_who_and_why(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, operator_dimension(name))
    members = [await new_member(tagging_stub) for _ in range(3)]
    assert await add(tagging_stub, name, "vip_hotline", members) == 3
    assert await add(tagging_stub, name, "vip_hotline", members) == 0  # a retry changes nothing
    assert await add(tagging_stub, name, "complained", members[:1]) == 1
    assert await tags_of(tagging_stub, members[0], name) == ["complained", "vip_hotline"]  # multi-valued

    assert await remove(tagging_stub, name, "vip_hotline", members[:2]) == 2
    assert await remove(tagging_stub, name, "vip_hotline", members[:2]) == 0
    assert await tags_of(tagging_stub, members[1], name) == []
    assert await tags_of(tagging_stub, members[2], name) == ["vip_hotline"]

    history = await tagging_stub.ListTagChanges(
        tagging_service_pb2.ListTagChangesRequest(member=f"members/{members[1]}", dimension=name),
        metadata=ACME,
    )
    (ended,) = history.changes
    assert (ended.source, ended.set_by, ended.reason) == (
        tags_pb2.TAG_SOURCE_OPERATOR,
        "alice@ops",
        "called the hotline",
    )
    assert (ended.removed_by, ended.removed_reason) == ("bob@ops", "resolved")
    assert ended.HasField("valid_to")


async def test_in_a_single_dimension_a_new_value_replaces_the_old(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, operator_dimension(name, tags_pb2.CARDINALITY_SINGLE))
    member_id = await new_member(tagging_stub)
    await add(tagging_stub, name, "vip_hotline", [member_id])
    assert await add(tagging_stub, name, "double11_seed", [member_id]) == 1
    assert await tags_of(tagging_stub, member_id, name) == ["double11_seed"]


async def test_concurrent_duplicate_adds_take_effect_once(tagging_stub: Stub, db: Database) -> None:
    name = dimension()
    await create(tagging_stub, operator_dimension(name, tags_pb2.CARDINALITY_SINGLE))
    members = [await new_member(tagging_stub) for _ in range(10)]
    changed = await asyncio.gather(*(add(tagging_stub, name, "vip_hotline", members) for _ in range(8)))
    assert sum(changed) == 10
    async with db.transaction(TENANT_ACME) as conn:
        rows = await conn.fetchval("SELECT count(*) FROM tagging.member_tags WHERE dimension = $1", name)
    assert rows == 10


async def test_recompute_never_touches_operator_tags(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, operator_dimension(name))
    member_id = await new_member(tagging_stub)
    await add(tagging_stub, name, "vip_hotline", [member_id])
    await tagging_stub.RecomputeTags(tagging_service_pb2.RecomputeTagsRequest(), metadata=ACME)
    assert await tags_of(tagging_stub, member_id, name) == ["vip_hotline"]


async def bad_add(stub: Stub, metadata: Any = ACME, **fields: Any) -> grpc.aio.AioRpcError:
    request = tagging_service_pb2.AddMemberTagsRequest(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AddMemberTags(request, metadata=metadata)
    return caught.value


async def test_bad_changes_name_the_field_and_change_nothing(tagging_stub: Stub) -> None:
    name, rule_name = dimension(), dimension()
    await create(tagging_stub, operator_dimension(name))
    await create(tagging_stub, frequency(rule_name))
    member_id = await new_member(tagging_stub)
    ok: dict[str, Any] = {
        "dimension": name,
        "value": "vip_hotline",
        "member_ids": [member_id],
        "operator": "alice@ops",
        "reason": "why not",
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"operator": ""}, "operator"),
        ({"reason": ""}, "reason"),
        ({"member_ids": []}, "member_ids"),
        ({"member_ids": [member_id, "bad id"]}, "member_ids[1]"),
        ({"member_ids": [member_id, "m-does-not-exist"]}, "member_ids[1]"),
        ({"value": "not_declared"}, "value"),
        ({"dimension": rule_name, "value": "heavy"}, "dimension"),
        ({"dimension": "Bad Name"}, "dimension"),
    ]
    for change, field in cases:
        error = await bad_add(tagging_stub, **(ok | change))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, change
        assert field in field_violations(error), (change, field_violations(error))
    missing = await bad_add(tagging_stub, **(ok | {"dimension": "never_defined_here"}))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    other_tenant = await bad_add(tagging_stub, GLOBEX, **ok)
    assert other_tenant.code() == grpc.StatusCode.NOT_FOUND
    assert await tags_of(tagging_stub, member_id, name) == []
