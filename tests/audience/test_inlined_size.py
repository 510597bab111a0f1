"""The inlined-size limit holds for every audience that references the one updated (issue 17, item 6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from services.audience import definitions
from tests.audience.helpers import any_of, count, create, in_batch, member_of
from tests.conftest import ACME, unique
from tests.grpc_helpers import field_violations

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub


def update(audience_id: str, rule: audience_pb2.AudienceRule) -> audience_service_pb2.UpdateAudienceRequest:
    return audience_service_pb2.UpdateAudienceRequest(
        audience=audience_pb2.Audience(audience_id=audience_id, rule=rule)
    )


async def test_an_update_may_not_grow_an_audience_that_references_it_past_the_limit(
    audience_stub: AudienceStub,
) -> None:
    """A chain of audiences each referencing the previous one three times: 1, 7 and 25 nodes with
    the chain inlined. A 150-node root would make the middle one 454 nodes and the last 1,366."""
    root = await create(audience_stub, in_batch(unique("batch")))
    middle = await create(audience_stub, any_of(*[member_of(root.audience_id)] * 3))
    last = await create(audience_stub, any_of(*[member_of(middle.audience_id)] * 3))
    big = any_of(*[in_batch(unique("batch")) for _ in range(149)])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await audience_stub.UpdateAudience(update(root.audience_id, big), metadata=ACME)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violation = field_violations(error)["audience.rule"]
    assert f"audiences/{last.audience_id}" in violation
    assert f"1366 nodes with its audiences inlined; at most {definitions.MAX_INLINED_NODES}" in violation
    current = await audience_stub.GetAudience(
        audience_service_pb2.GetAudienceRequest(name=f"audiences/{root.audience_id}"), metadata=ACME
    )
    assert current.version == 1
    assert await count(audience_stub, last.audience_id) == 0

    # Within the limit for every audience above it, the same root may grow.
    fits = any_of(*[in_batch(unique("batch")) for _ in range(30)])
    updated = await audience_stub.UpdateAudience(update(root.audience_id, fits), metadata=ACME)
    assert updated.version == 2
