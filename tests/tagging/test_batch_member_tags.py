"""BatchGetMemberTags: the current tags of many members in one call (a journey batch reads its
members' send hours this way), filtered by dimension, and bad requests named by field."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2

from tests.conftest import ACME, INITECH, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import new_member
from tests.tagging.test_catalog import create, dimension, frequency
from tests.tagging.test_member_tags import order_now

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def request(member_ids: list[str], *dimensions: str) -> tagging_service_pb2.BatchGetMemberTagsRequest:
    return tagging_service_pb2.BatchGetMemberTagsRequest(
        members=[f"members/{m}" for m in member_ids], dimensions=dimensions
    )


async def test_current_tags_of_many_members_in_one_call(tagging_stub: Stub) -> None:
    name, other = dimension(), dimension()
    await create(tagging_stub, frequency(name))
    await create(tagging_stub, frequency(other))
    buyer, idle = await new_member(tagging_stub), await new_member(tagging_stub)
    await order_now(tagging_stub, buyer)  # light: no longer none
    reply = await tagging_stub.BatchGetMemberTags(
        request([buyer, idle, unique("nobody")], name), metadata=ACME
    )
    assert sorted((t.member_id, t.dimension, t.value) for t in reply.tags) == sorted(
        [(buyer, name, "light"), (idle, name, "none")]
    )
    assert all(not t.HasField("valid_to") for t in reply.tags)
    everything = await tagging_stub.BatchGetMemberTags(request([buyer]), metadata=ACME)
    assert {(t.dimension, t.value) for t in everything.tags} >= {(name, "light"), (other, "light")}
    # Another tenant's call sees none of them.
    elsewhere = await tagging_stub.BatchGetMemberTags(request([buyer, idle], name), metadata=INITECH)
    assert list(elsewhere.tags) == []


@pytest.mark.parametrize(
    ("members", "dimensions", "field"),
    [
        ([], [], "members"),
        (["members/a", "a"], [], "members[1]"),
        (["members/a", "members/a"], [], "members"),
        (["members/a"], ["Not A Name"], "dimensions[0]"),
    ],
)
async def test_a_bad_request_names_its_field(
    tagging_stub: Stub, members: list[str], dimensions: list[str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tagging_stub.BatchGetMemberTags(
            tagging_service_pb2.BatchGetMemberTagsRequest(members=members, dimensions=dimensions),
            metadata=ACME,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(raised.value)
