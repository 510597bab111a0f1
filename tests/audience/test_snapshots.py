"""Snapshots and splits: frozen members, deterministic arms, idempotent by request id."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from runtime.buckets import bucket
from tests.audience.helpers import create, import_batch, in_batch, member
from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import field_violations

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

SPLIT = (("a", 45), ("b", 45), ("holdout", 10))


async def snapshot(
    stub: AudienceStub,
    audience_id: str,
    splits: Any = SPLIT,
    request_id: str | None = None,
    metadata: Any = ACME,
) -> audience_pb2.Snapshot:
    request = audience_service_pb2.CreateSnapshotRequest(
        audience=f"audiences/{audience_id}",
        splits=[audience_pb2.SplitArm(name=name, share_percent=share) for name, share in splits],
        request_id=unique("req") if request_id is None else request_id,
    )
    return await stub.CreateSnapshot(request, metadata=metadata)


async def assignment(
    stub: AudienceStub, snapshot_name: str, member_id: str, metadata: Any = ACME
) -> audience_service_pb2.GetAssignmentResponse:
    request = audience_service_pb2.GetAssignmentRequest(snapshot=snapshot_name, member=f"members/{member_id}")
    return await stub.GetAssignment(request, metadata=metadata)


def expected_arm(salt: str, member_id: str, splits: Any = SPLIT) -> str:
    point, low = bucket(salt, member_id), 0
    for name, share in splits:
        low += share * 100
        if point < low:
            return str(name)
    raise AssertionError("shares sum to 100")


async def test_arms_are_deterministic_sized_and_frozen(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    ids = await import_batch(tagging_stub, batch, 2_000)
    audience = await create(audience_stub, in_batch(batch))
    frozen = await snapshot(audience_stub, audience.audience_id)

    assert frozen.member_count == 2_000
    assert frozen.audience == f"audiences/{audience.audience_id}"
    expected = Counter(expected_arm(frozen.salt, member_id) for member_id in ids)
    assert {arm.name: arm.member_count for arm in frozen.arms} == dict(expected)
    assert [(arm.name, arm.share_percent) for arm in frozen.arms] == list(SPLIT)
    assert all(count > 0 for count in expected.values())
    for member_id in ids[:20]:
        got = await assignment(audience_stub, frozen.name, member_id)
        assert (got.in_snapshot, got.arm) == (True, expected_arm(frozen.salt, member_id))

    # Frozen: a member who joins the audience later is not in the snapshot, and nothing moves.
    late = await member(tagging_stub, batch)
    outside = await assignment(audience_stub, frozen.name, late)
    assert (outside.in_snapshot, outside.arm) == (False, "")
    again = await audience_stub.GetSnapshot(
        audience_service_pb2.GetSnapshotRequest(name=frozen.name), metadata=ACME
    )
    assert again == frozen
    first = await assignment(audience_stub, frozen.name, ids[0])
    assert first.arm == expected_arm(frozen.salt, ids[0])

    # A new snapshot has its own salt, so its own (equally deterministic) assignment.
    second = await snapshot(audience_stub, audience.audience_id, splits=[("all", 100)])
    assert second.salt != frozen.salt
    assert [(arm.name, arm.member_count) for arm in second.arms] == [("all", 2_001)]


async def test_snapshots_are_idempotent_by_request_id(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    await member(tagging_stub, batch)
    audience = await create(audience_stub, in_batch(batch))
    request_id = unique("req")
    first = await snapshot(audience_stub, audience.audience_id, request_id=request_id)
    await member(tagging_stub, batch)  # the audience grows; a retry still returns the first snapshot
    again = await snapshot(audience_stub, audience.audience_id, request_id=request_id)
    assert again == first
    assert first.member_count == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await snapshot(audience_stub, audience.audience_id, splits=[("all", 100)], request_id=request_id)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    concurrent_id = unique("req")
    results = await asyncio.gather(
        *(snapshot(audience_stub, audience.audience_id, request_id=concurrent_id) for _ in range(5))
    )
    assert len({r.name for r in results}) == 1
    assert results[0].member_count == 2


async def test_snapshots_belong_to_their_tenant(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    member_id = await member(tagging_stub, batch)
    audience = await create(audience_stub, in_batch(batch))
    frozen = await snapshot(audience_stub, audience.audience_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await assignment(audience_stub, frozen.name, member_id, metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def bad(call: Awaitable[Any], path: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in field_violations(caught.value), field_violations(caught.value)


async def test_bad_splits_name_the_field(audience_stub: AudienceStub) -> None:
    audience = await create(audience_stub, in_batch(unique("batch")))
    name = audience.audience_id
    await bad(snapshot(audience_stub, name, splits=[("a", 50), ("b", 40)]), "splits")
    await bad(snapshot(audience_stub, name, splits=[("a", 50), ("a", 50)]), "splits[1].name")
    await bad(snapshot(audience_stub, name, splits=[("A", 100)]), "splits[0].name")
    await bad(snapshot(audience_stub, name, splits=[("a", 0), ("b", 100)]), "splits[0].share_percent")
    await bad(snapshot(audience_stub, name, request_id=""), "request_id")
    await bad(
        audience_stub.GetSnapshot(audience_service_pb2.GetSnapshotRequest(name="snapshots/x"), metadata=ACME),
        "name",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await snapshot(audience_stub, unique("aud"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await assignment(audience_stub, f"snapshots/{'0' * 32}", "m-1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def list_members(
    stub: AudienceStub, parent: str, page_size: int = 0, page_token: str = "", metadata: Any = ACME
) -> audience_service_pb2.ListSnapshotMembersResponse:
    request = audience_service_pb2.ListSnapshotMembersRequest(
        parent=parent, page_size=page_size, page_token=page_token
    )
    return await stub.ListSnapshotMembers(request, metadata=metadata)


async def test_a_snapshots_members_page_in_id_order_with_their_arms(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    ids = await import_batch(tagging_stub, batch, 1_500)
    audience = await create(audience_stub, in_batch(batch))
    frozen = await snapshot(audience_stub, audience.audience_id)
    await member(tagging_stub, batch)  # joins the audience later: not in the frozen pages

    seen: list[tuple[str, str]] = []
    pages, token = 0, ""
    while True:
        page = await list_members(audience_stub, frozen.name, page_size=600, page_token=token)
        assert len(page.member_ids) == len(page.arms) <= 600
        seen += zip(page.member_ids, page.arms, strict=True)
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [member_id for member_id, _ in seen] == sorted(ids)
    assert all(arm == expected_arm(frozen.salt, member_id) for member_id, arm in seen)
    default = await list_members(audience_stub, frozen.name)
    assert len(default.member_ids) == 1_000 and default.next_page_token

    other = await snapshot(audience_stub, audience.audience_id)
    await bad(list_members(audience_stub, other.name, page_token=default.next_page_token), "page_token")
    await bad(list_members(audience_stub, frozen.name, page_token="not-a-token"), "page_token")
    await bad(list_members(audience_stub, frozen.name, page_size=10_001), "page_size")
    await bad(list_members(audience_stub, audience.name), "parent")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_members(audience_stub, frozen.name, metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
