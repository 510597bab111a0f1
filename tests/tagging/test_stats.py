"""GetTagStats: members per value now, zero counts included, shares of the covered, coverage of all."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import new_member
from tests.tagging.test_catalog import create, dimension, update
from tests.tagging.test_operator_tags import add, remove

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def manual(name: str, values: tuple[str, ...], cardinality: int = tags_pb2.CARDINALITY_MULTI) -> Any:
    return tags_pb2.TagDefinition(
        dimension=name,
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=cardinality,  # type: ignore[arg-type]
        values=[tags_pb2.TagValue(value=v) for v in values],
    )


async def stats(stub: Stub, *names: str, metadata: Any = ACME) -> tagging_service_pb2.GetTagStatsResponse:
    return await stub.GetTagStats(tagging_service_pb2.GetTagStatsRequest(dimensions=names), metadata=metadata)


def counts(dimension_stats: tags_pb2.DimensionStats) -> list[tuple[str, int, float]]:
    return [(v.value, v.member_count, v.share) for v in dimension_stats.values]


async def test_counts_shares_and_coverage_of_a_multi_valued_dimension(
    tagging_stub: Stub, db: Database
) -> None:
    name = dimension()
    await create(tagging_stub, manual(name, ("gold", "silver", "bronze")))
    members = [await new_member(tagging_stub) for _ in range(4)]
    await add(tagging_stub, name, "gold", members[:3])
    await add(tagging_stub, name, "silver", members[:1])
    await new_member(tagging_stub)  # holds nothing, yet counts among the members

    reply = await stats(tagging_stub, name)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        assert reply.member_count == await conn.fetchval("SELECT count(*) FROM tagging.members")
    (result,) = reply.dimensions
    assert result.dimension == name
    assert result.covered_count == 3  # the member holding two values counts once
    assert result.coverage == pytest.approx(3 / reply.member_count)
    assert counts(result) == [("gold", 3, 1.0), ("silver", 1, pytest.approx(1 / 3)), ("bronze", 0, 0.0)]


async def test_only_current_values_count(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, manual(name, ("a", "b"), tags_pb2.CARDINALITY_SINGLE))
    members = [await new_member(tagging_stub) for _ in range(3)]
    await add(tagging_stub, name, "a", members)
    await add(tagging_stub, name, "b", members[:1])  # replaces a: a single-valued dimension
    await remove(tagging_stub, name, "a", members[1:2])
    (result,) = (await stats(tagging_stub, name)).dimensions
    assert result.covered_count == 2
    assert counts(result) == [("a", 1, 0.5), ("b", 1, 0.5)]


async def test_values_no_longer_listed_follow_by_count(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, manual(name, ("kept", "rare", "common", "also_rare")))
    members = [await new_member(tagging_stub) for _ in range(3)]
    await add(tagging_stub, name, "rare", members[:1])
    await add(tagging_stub, name, "common", members)
    await add(tagging_stub, name, "also_rare", members[2:])
    await update(tagging_stub, manual(name, ("kept",)))  # holdings of the dropped values remain
    (result,) = (await stats(tagging_stub, name)).dimensions
    assert [(v, n) for v, n, _ in counts(result)] == [
        ("kept", 0),
        ("common", 3),
        ("also_rare", 1),
        ("rare", 1),
    ]


async def test_a_dimension_nobody_holds_has_zeros(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, manual(name, ("x", "y")))
    (result,) = (await stats(tagging_stub, name)).dimensions
    assert (result.covered_count, result.coverage) == (0, 0.0)
    assert counts(result) == [("x", 0, 0.0), ("y", 0, 0.0)]


async def test_named_in_the_order_asked_or_every_active_one_by_name(tagging_stub: Stub) -> None:
    first, second, retired = dimension(), dimension(), dimension()
    for name in (first, second, retired):
        await create(tagging_stub, manual(name, ("v",)))
    await tagging_stub.RetireTagDefinition(
        tagging_service_pb2.RetireTagDefinitionRequest(name=f"tagDefinitions/{retired}"), metadata=ACME
    )
    assert [d.dimension for d in (await stats(tagging_stub, second, first)).dimensions] == [second, first]

    every = [d.dimension for d in (await stats(tagging_stub)).dimensions]
    assert every == sorted(every)
    assert {first, second} <= set(every)
    assert retired not in every


async def test_tenants_see_their_own_dimensions_only(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, manual(name, ("v",)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stats(tagging_stub, name, metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert name not in {d.dimension for d in (await stats(tagging_stub, metadata=GLOBEX)).dimensions}


async def test_unknown_or_retired_dimension_is_not_found(tagging_stub: Stub) -> None:
    known, retired = dimension(), dimension()
    for name in (known, retired):
        await create(tagging_stub, manual(name, ("v",)))
    await tagging_stub.RetireTagDefinition(
        tagging_service_pb2.RetireTagDefinitionRequest(name=f"tagDefinitions/{retired}"), metadata=ACME
    )
    for missing in (dimension(), retired):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stats(tagging_stub, known, missing)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "dimensions[1]" in (caught.value.details() or "")


async def test_a_malformed_name_is_invalid_argument(tagging_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stats(tagging_stub, dimension(), "Not A Name", "tagDefinitions/x")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"dimensions[1]", "dimensions[2]"}
