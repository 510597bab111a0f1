"""CountAudience and BreakdownAudience of an unsaved rule (the console's rule editor): the same
figures as the rule saved, checked as strictly, and nothing saved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from tests.audience.helpers import Match, all_of, count, create, give, in_batch, manual_dimension, member, tag
from tests.conftest import ACME, unique
from tests.grpc_helpers import field_violations

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


async def test_a_draft_counts_and_breaks_down_as_the_same_rule_saved(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    tiers = await manual_dimension(tagging_stub, ["gold", "silver"])
    members = [await member(tagging_stub, batch) for _ in range(4)]
    await give(tagging_stub, tiers, "gold", members[:1])
    await give(tagging_stub, tiers, "silver", members[1:3])
    saved = (await create(audience_stub, in_batch(batch))).audience_id
    # A draft may reference saved audiences, as a saved rule may.
    draft = all_of(
        audience_pb2.AudienceRule(audience=f"audiences/{saved}"), tag(tiers, Match.TAG_MATCH_HAS_ANY_VALUE)
    )
    listed_before = await audience_stub.ListAudiences(
        audience_service_pb2.ListAudiencesRequest(), metadata=ACME
    )

    counted = await audience_stub.CountAudience(
        audience_service_pb2.CountAudienceRequest(rule=draft), metadata=ACME
    )
    broken_down = await audience_stub.BreakdownAudience(
        audience_service_pb2.BreakdownAudienceRequest(
            rule=draft, tag=audience_service_pb2.TagBreakdown(dimension=tiers)
        ),
        metadata=ACME,
    )

    assert (counted.member_count, counted.version) == (3, 0)
    assert await count(audience_stub, saved) == 4
    assert broken_down.member_count == 3
    assert [(v.value, v.member_count) for v in broken_down.tag_values] == [("silver", 2), ("gold", 1)]
    listed_after = await audience_stub.ListAudiences(
        audience_service_pb2.ListAudiencesRequest(), metadata=ACME
    )
    assert len(listed_after.audiences) == len(listed_before.audiences)


@pytest.mark.parametrize(
    ("request_fields", "path"),
    [
        ({"rule": tag("no_such_dimension_here", Match.TAG_MATCH_HAS_ANY_VALUE)}, "rule.tag.dimension"),
        (
            {"rule": all_of(audience_pb2.AudienceRule(audience="audiences/none-such"))},
            "rule.all.rules[0].audience",
        ),
        ({"rule": audience_pb2.AudienceRule()}, "rule"),
        ({"rule": in_batch("b"), "name": "audiences/some"}, "name"),
    ],
)
async def test_a_bad_draft_names_its_field(
    audience_stub: AudienceStub, request_fields: dict[str, Any], path: str
) -> None:
    for call in (
        audience_stub.CountAudience(
            audience_service_pb2.CountAudienceRequest(**request_fields), metadata=ACME
        ),
        audience_stub.BreakdownAudience(
            audience_service_pb2.BreakdownAudienceRequest(
                **request_fields,
                tag=audience_service_pb2.TagBreakdown(dimension="lifecycle"),
            ),
            metadata=ACME,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert path in field_violations(caught.value), field_violations(caught.value)
