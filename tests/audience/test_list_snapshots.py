"""ListSnapshots: an audience's snapshots newest first with their arm sizes, paged, only its own
and only the tenant's, and NOT_FOUND for an audience that never was."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_service_pb2

from tests.audience.helpers import create, in_batch, member
from tests.audience.test_snapshots import snapshot
from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import field_violations

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

Request = audience_service_pb2.ListSnapshotsRequest


async def test_an_audiences_snapshots_newest_first_in_pages(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    for _ in range(3):
        await member(tagging_stub, batch)
    audience = (await create(audience_stub, in_batch(batch))).audience_id
    other = (await create(audience_stub, in_batch(batch))).audience_id
    made = [await snapshot(audience_stub, audience) for _ in range(3)]
    await snapshot(audience_stub, other)

    seen, token, pages = [], "", 0
    while True:
        reply = await audience_stub.ListSnapshots(
            Request(audience=f"audiences/{audience}", page_size=2, page_token=token), metadata=ACME
        )
        seen += list(reply.snapshots)
        pages, token = pages + 1, reply.next_page_token
        if not token:
            break

    assert pages == 2
    assert [s.name for s in seen] == [s.name for s in reversed(made)]
    assert seen[0] == made[-1]  # arms with their sizes, as GetSnapshot gives them
    assert sum(arm.member_count for arm in seen[0].arms) == seen[0].member_count == 3
    # Another tenant sees none of them: the audience is not theirs.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audience_stub.ListSnapshots(Request(audience=f"audiences/{audience}"), metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requests_name_their_field(audience_stub: AudienceStub) -> None:
    audience = (await create(audience_stub, in_batch(unique("batch")))).audience_id
    other = (await create(audience_stub, in_batch(unique("batch")))).audience_id
    for _ in range(2):
        await snapshot(audience_stub, other)
    page = await audience_stub.ListSnapshots(
        Request(audience=f"audiences/{other}", page_size=1), metadata=ACME
    )
    for request, path in (
        (Request(audience="nope"), "audience"),
        (Request(audience=f"audiences/{audience}", page_size=1001), "page_size"),
        (Request(audience=f"audiences/{audience}", page_token="garbage"), "page_token"),
        # A token of another audience's list is not this list's.
        (Request(audience=f"audiences/{audience}", page_token=page.next_page_token), "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await audience_stub.ListSnapshots(request, metadata=ACME)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert path in field_violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audience_stub.ListSnapshots(Request(audience=f"audiences/{unique('aud')}"), metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
