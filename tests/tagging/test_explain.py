"""ExplainTags over every kind of dimension, and the bounds of the name lists it and RecomputeTags take."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import struct_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tags_pb2

from services.tagging.builtins import definitions
from services.tagging.catalog import compile_definition
from services.tagging.rules._compiler import untyped_parameters
from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import failure, field_violations
from tests.tagging.rule_builders import ALWAYS, Field, Op, all_of, attribute, cond, field
from tests.tagging.test_catalog import create, dimension

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def a_member(stub: Stub, metadata: tuple[tuple[str, str], ...] = ACME) -> str:
    """A female member in a tier-1 city at the gold level, with a `vip` attribute."""
    member_id = unique()
    attributes = struct_pb2.Struct()
    attributes.update({"vip": True})
    profile = member_pb2.Profile(
        gender=member_pb2.GENDER_FEMALE, city_tier=member_pb2.CITY_TIER_1, level="gold"
    )
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(member_id=member_id, profile=profile, attributes=attributes)
        ),
        metadata=metadata,
    )
    return member_id


async def explain(
    stub: Stub, member_id: str, names: list[str], metadata: tuple[tuple[str, str], ...] = ACME
) -> dict[str, list[str]]:
    reply = await stub.ExplainTags(
        tagging_service_pb2.ExplainTagsRequest(member=f"members/{member_id}", dimensions=names),
        metadata=metadata,
    )
    return {e.dimension: list(e.values) for e in reply.explanations}


@pytest.mark.parametrize(("name", "value"), [("gender", "female"), ("city_tier", "1"), ("level", "gold")])
async def test_built_in_profile_dimensions_explain(tagging_stub: Stub, name: str, value: str) -> None:
    member_id = await a_member(tagging_stub)
    assert await explain(tagging_stub, member_id, [name]) == {name: [value]}


async def test_explaining_every_dimension_includes_the_built_in_ones(tagging_stub: Stub) -> None:
    member_id = await a_member(tagging_stub, GLOBEX)
    explained = await explain(tagging_stub, member_id, [], GLOBEX)
    assert {k: explained[k] for k in ("gender", "city_tier", "level")} == {
        "gender": ["female"],
        "city_tier": ["1"],
        "level": ["gold"],
    }


async def test_a_dimension_of_always_and_profile_and_attribute_conditions_explains(
    tagging_stub: Stub,
) -> None:
    name = dimension()
    vip_woman = all_of(
        cond(field(Field.PROFILE_FIELD_GENDER), Op.OPERATOR_EQ, "GENDER_FEMALE"),
        cond(attribute("vip"), Op.OPERATOR_EQ, True),
    )
    await create(
        tagging_stub,
        tags_pb2.TagDefinition(
            dimension=name,
            display_name="VIP women",
            category=tags_pb2.TAG_CATEGORY_MEMBER,
            kind=tags_pb2.TAG_KIND_RULE,
            refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME,
            cardinality=tags_pb2.CARDINALITY_SINGLE,
            values=[
                tags_pb2.TagValue(value="vip_woman", rule=vip_woman),
                tags_pb2.TagValue(value="other", rule=ALWAYS),
            ],
        ),
    )
    member_id = await a_member(tagging_stub)
    assert await explain(tagging_stub, member_id, [name]) == {name: ["vip_woman"]}


def test_every_compiled_statement_types_every_parameter() -> None:
    """PostgreSQL cannot prepare a statement with a parameter it does not use (no type to infer)."""
    for spec in definitions():
        for filtered in (False, True):
            compiled = compile_definition(spec, filtered=filtered)
            assert untyped_parameters(compiled.sql, len(compiled.params)) == [], spec.dimension


@pytest.mark.parametrize("method", ["ExplainTags", "RecomputeTags"])
async def test_more_than_a_thousand_names_is_invalid_argument(tagging_stub: Stub, method: str) -> None:
    names = ["gender"] * 1001
    call: Any = (
        tagging_stub.ExplainTags(
            tagging_service_pb2.ExplainTagsRequest(member="members/nobody", dimensions=names), metadata=ACME
        )
        if method == "ExplainTags"
        else tagging_stub.RecomputeTags(
            tagging_service_pb2.RecomputeTagsRequest(dimensions=names), metadata=ACME
        )
    )
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dimensions" in field_violations(error)


async def test_repeated_names_are_explained_and_recomputed_once(tagging_stub: Stub) -> None:
    member_id = await a_member(tagging_stub)
    reply = await tagging_stub.ExplainTags(
        tagging_service_pb2.ExplainTagsRequest(
            member=f"members/{member_id}", dimensions=["level", "gender", "level", "gender", "level"]
        ),
        metadata=ACME,
    )
    assert [e.dimension for e in reply.explanations] == ["level", "gender"]
    recomputed = await tagging_stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=["city_tier", "gender", "city_tier"]),
        metadata=ACME,
    )
    assert [r.dimension for r in recomputed.results] == ["city_tier", "gender"]
    stats = await tagging_stub.GetTagStats(
        tagging_service_pb2.GetTagStatsRequest(dimensions=["gender", "level", "gender"]), metadata=ACME
    )
    assert [d.dimension for d in stats.dimensions] == ["gender", "level"]
