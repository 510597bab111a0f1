"""Bad input is INVALID_ARGUMENT (or NOT_FOUND) naming the field, and stores nothing."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2

from tests.audience.helpers import (
    Match,
    Rule,
    all_of,
    any_of,
    audience_id,
    create,
    event_count,
    fact,
    in_batch,
    manual_dimension,
    member_of,
    not_,
    order_count,
    tag,
)
from tests.conftest import ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.rule_builders import Field, Op, field

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def bad(call: Awaitable[Any], path: str, words: str = "") -> None:
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violations = field_violations(error)
    assert path in violations, violations
    assert words in violations[path]


CONDITION = "audience.rule.condition"


def unknown_field() -> Rule:
    return fact(field(99), Op.OPERATOR_EQ, "x")


@pytest.mark.parametrize(
    ("rule", "path", "words"),
    [
        (all_of(in_batch("b"), fact(order_count(3651), Op.OPERATOR_GE, 1)),
         "audience.rule.all.rules[1].condition.operand.aggregate.window_days", "3650"),
        (all_of(in_batch("b"), fact(event_count(-1), Op.OPERATOR_GE, 1)),
         "audience.rule.all.rules[1].condition.operand.aggregate.window_days", "between"),
        (any_of(in_batch("b"), unknown_field()), "audience.rule.any.rules[1].condition.operand.field",
         "unknown"),
        (fact(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_GE, "old"), f"{CONDITION}.values[0]", "number"),
        (fact(field(Field.PROFILE_FIELD_CITY_TIER), Op.OPERATOR_EQ, "TIER_9"), f"{CONDITION}.values[0]", ""),
        (fact(field(Field.PROFILE_FIELD_LEVEL), Op.OPERATOR_GT, "gold"), f"{CONDITION}.operator", ""),
        (not_(Rule()), "audience.rule.not", "empty"),
        (tag("some_dimension", Match.TAG_MATCH_UNSPECIFIED), "audience.rule.tag.match", "required"),
        (tag("some_dimension", Match.TAG_MATCH_HAS_VALUE), "audience.rule.tag.values", "1 value"),
        (tag("some_dimension", Match.TAG_MATCH_HAS_ANY_VALUE, "x"), "audience.rule.tag.values", ""),
        (tag("Bad Dimension", Match.TAG_MATCH_HAS_ANY_VALUE), "audience.rule.tag.dimension", ""),
        (Rule(audience="not-a-name"), "audience.rule.audience", "audiences/"),
    ],
)  # fmt: skip
async def test_rules_outside_the_language(
    audience_stub: AudienceStub, rule: Rule, path: str, words: str
) -> None:
    name = audience_id()
    await bad(create(audience_stub, rule, name=name), path, words)
    request = audience_service_pb2.GetAudienceRequest(name=f"audiences/{name}")
    assert (
        await failure(audience_stub.GetAudience(request, metadata=ACME))
    ).code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_tag_dimensions_and_values(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    dimension = await manual_dimension(tagging_stub, ["gold", "silver"])
    await bad(
        create(audience_stub, all_of(in_batch("b"), tag("no_such_dimension", Match.TAG_MATCH_HAS_ANY_VALUE))),
        "audience.rule.all.rules[1].tag.dimension",
        "unknown tag dimension",
    )
    await bad(
        create(audience_stub, tag(dimension, Match.TAG_MATCH_ANY_OF, "gold", "platinum")),
        "audience.rule.tag.values[1]",
        "not a value",
    )
    await bad(
        create(
            audience_stub, tag("lifecycle", Match.TAG_MATCH_HAS_VALUE, "undead")
        ),  # a built-in model's values
        "audience.rule.tag.values[0]",
    )


async def test_bad_fields_of_the_audience(audience_stub: AudienceStub) -> None:
    await bad(create(audience_stub, in_batch("b"), name="Upper-Case"), "audience.audience_id")
    request = audience_service_pb2.CreateAudienceRequest(
        audience=audience_pb2.Audience(audience_id=audience_id())
    )
    await bad(audience_stub.CreateAudience(request, metadata=ACME), "audience.rule", "required")
    long_name = audience_pb2.Audience(audience_id=audience_id(), rule=in_batch("b"), display_name="x" * 65)
    request = audience_service_pb2.CreateAudienceRequest(audience=long_name)
    await bad(audience_stub.CreateAudience(request, metadata=ACME), "audience.display_name")
    request = audience_service_pb2.CreateAudienceRequest(
        audience=audience_pb2.Audience(audience_id=audience_id(), rule=in_batch("b")), request_id="r" * 129
    )
    await bad(audience_stub.CreateAudience(request, metadata=ACME), "request_id")
    deep = in_batch("b")
    for _ in range(11):
        deep = not_(deep)
    await bad(create(audience_stub, deep), "audience.rule" + ".not" * 10, "deeper")


async def test_references_to_unknown_audiences_and_cycles(audience_stub: AudienceStub) -> None:
    await bad(
        create(audience_stub, all_of(in_batch("b"), member_of(audience_id()))),
        "audience.rule.all.rules[1].audience",
        "unknown audience",
    )
    name = audience_id()
    await bad(create(audience_stub, member_of(name), name=name), "audience.rule.audience", "cycle")

    first = await create(audience_stub, in_batch(unique("batch")))
    second = await create(audience_stub, member_of(first.audience_id))
    third = await create(audience_stub, all_of(member_of(second.audience_id)))
    closing = audience_pb2.Audience(
        audience_id=first.audience_id, rule=any_of(in_batch("b"), member_of(third.audience_id))
    )
    request = audience_service_pb2.UpdateAudienceRequest(audience=closing)
    await bad(
        audience_stub.UpdateAudience(request, metadata=ACME), "audience.rule.any.rules[1].audience", "cycle"
    )
    current = await audience_stub.GetAudience(
        audience_service_pb2.GetAudienceRequest(name=f"audiences/{first.audience_id}"), metadata=ACME
    )
    assert current.version == 1


async def test_bad_names_tokens_and_sizes(tagging_stub: TaggingStub, audience_stub: AudienceStub) -> None:
    created = await create(audience_stub, in_batch(unique("batch")))
    name = f"audiences/{created.audience_id}"
    s = audience_service_pb2
    await bad(audience_stub.CountAudience(s.CountAudienceRequest(name="audience/x"), metadata=ACME), "name")
    await bad(
        audience_stub.ListAudienceMembers(
            s.ListAudienceMembersRequest(name=name, page_token="nonsense"), metadata=ACME
        ),
        "page_token",
    )
    await bad(
        audience_stub.ListAudienceMembers(
            s.ListAudienceMembersRequest(name=name, page_size=10_001), metadata=ACME
        ),
        "page_size",
    )
    await bad(
        audience_stub.ListAudiences(s.ListAudiencesRequest(page_token="!!"), metadata=ACME), "page_token"
    )
    await bad(audience_stub.ListAudiences(s.ListAudiencesRequest(page_size=-1), metadata=ACME), "page_size")
    await bad(
        audience_stub.PreviewAudience(s.PreviewAudienceRequest(name=name, sample_size=101), metadata=ACME),
        "sample_size",
    )
    export = audience_stub.ExportAudience(
        s.ExportAudienceRequest(name=name, chunk_size=10_001), metadata=ACME
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in export:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_size" in field_violations(caught.value)
    await bad(
        audience_stub.CheckMembership(s.CheckMembershipRequest(audience=name, member="m-1"), metadata=ACME),
        "member",
    )
    await bad(
        audience_stub.GetAudience(s.GetAudienceRequest(name=name, version=-1), metadata=ACME), "version"
    )


async def test_unknown_audiences_and_members_are_not_found(audience_stub: AudienceStub) -> None:
    s = audience_service_pb2
    unknown = f"audiences/{audience_id()}"
    calls: list[Awaitable[Any]] = [
        audience_stub.GetAudience(s.GetAudienceRequest(name=unknown), metadata=ACME),
        audience_stub.CountAudience(s.CountAudienceRequest(name=unknown), metadata=ACME),
        audience_stub.PreviewAudience(s.PreviewAudienceRequest(name=unknown), metadata=ACME),
        audience_stub.ListAudienceMembers(s.ListAudienceMembersRequest(name=unknown), metadata=ACME),
        audience_stub.DeleteAudience(s.DeleteAudienceRequest(name=unknown), metadata=ACME),
        audience_stub.CheckMembership(
            s.CheckMembershipRequest(audience=unknown, member="members/m-1"), metadata=ACME
        ),
    ]
    for call in calls:
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in audience_stub.ExportAudience(s.ExportAudienceRequest(name=unknown), metadata=ACME):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    created = await create(audience_stub, in_batch(unique("batch")))
    request = s.CheckMembershipRequest(
        audience=f"audiences/{created.audience_id}", member=f"members/{unique()}"
    )
    assert (
        await failure(audience_stub.CheckMembership(request, metadata=ACME))
    ).code() == grpc.StatusCode.NOT_FOUND
