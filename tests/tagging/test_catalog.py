"""The tag catalog over gRPC: versions, idempotent writes, retirement, paging, ExplainTags."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import rules_pb2, tagging_service_pb2, tags_pb2

from tests.conftest import ACME, GLOBEX
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_order, new_member, record_order, stamp
from tests.tagging.rule_builders import ALWAYS, Fn, Op, agg, cond

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

_counter = iter(range(1_000_000))


def dimension() -> str:
    return f"dim_{next(_counter)}_{dt.datetime.now(dt.UTC).strftime('%H%M%S%f')}"


def frequency(name: str, heavy_from: float = 4) -> tags_pb2.TagDefinition:
    per_month = agg(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, window_days=90)
    return tags_pb2.TagDefinition(
        dimension=name,
        display_name="Purchase frequency",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(value="heavy", rule=cond(per_month, Op.OPERATOR_GE, heavy_from)),
            tags_pb2.TagValue(value="light", rule=cond(per_month, Op.OPERATOR_GT, 0)),
            tags_pb2.TagValue(value="none", rule=ALWAYS),
        ],
    )


async def create(
    stub: Stub, definition: tags_pb2.TagDefinition, metadata: Any = ACME
) -> tags_pb2.TagDefinition:
    return await stub.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition), metadata=metadata
    )


async def update(stub: Stub, definition: tags_pb2.TagDefinition, expected: int = 0) -> tags_pb2.TagDefinition:
    return await stub.UpdateTagDefinition(
        tagging_service_pb2.UpdateTagDefinitionRequest(tag_definition=definition, expected_version=expected),
        metadata=ACME,
    )


async def get(stub: Stub, name: str, version: int = 0, metadata: Any = ACME) -> tags_pb2.TagDefinition:
    return await stub.GetTagDefinition(
        tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{name}", version=version),
        metadata=metadata,
    )


async def test_create_get_and_retry(tagging_stub: Stub) -> None:
    name = dimension()
    created = await create(tagging_stub, frequency(name))
    assert (created.name, created.version, created.state) == (
        f"tagDefinitions/{name}",
        1,
        tags_pb2.TAG_DEFINITION_STATE_ACTIVE,
    )
    assert [v.value for v in created.values] == ["heavy", "light", "none"]
    assert await get(tagging_stub, name) == created
    retries = await asyncio.gather(*(create(tagging_stub, frequency(name)) for _ in range(8)))
    assert all(r == created for r in retries)


async def test_creating_an_existing_dimension_with_other_content_is_already_exists(
    tagging_stub: Stub,
) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(tagging_stub, frequency(name, heavy_from=5))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_updates_add_versions_and_keep_the_old_ones(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    second = await update(tagging_stub, frequency(name, heavy_from=5), expected=1)
    assert second.version == 2
    unchanged = await update(tagging_stub, frequency(name, heavy_from=5))
    assert unchanged.version == 2
    first = await get(tagging_stub, name, version=1)
    assert first.values[0].rule.condition.values[0].number == 4
    assert (await get(tagging_stub, name)).values[0].rule.condition.values[0].number == 5


async def test_concurrent_duplicate_updates_add_one_version(tagging_stub: Stub) -> None:
    """Copies of one update against version 1: one makes version 2, the others find it current."""
    name = dimension()
    await create(tagging_stub, frequency(name))
    copies = await asyncio.gather(
        *(update(tagging_stub, frequency(name, heavy_from=5), expected=1) for _ in range(16))
    )
    assert {copy.version for copy in copies} == {2}
    assert (await get(tagging_stub, name)).version == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(tagging_stub, name, version=3)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stale_expected_version_is_aborted(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    await update(tagging_stub, frequency(name, heavy_from=5))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(tagging_stub, frequency(name, heavy_from=6), expected=1)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert (await get(tagging_stub, name)).version == 2


async def test_retired_dimensions_leave_the_list_and_refuse_updates(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    request = tagging_service_pb2.RetireTagDefinitionRequest(name=f"tagDefinitions/{name}")
    retired = await tagging_stub.RetireTagDefinition(request, metadata=ACME)
    assert retired.state == tags_pb2.TAG_DEFINITION_STATE_RETIRED
    assert (await tagging_stub.RetireTagDefinition(request, metadata=ACME)) == retired
    listed = await list_all(tagging_stub, include_retired=False)
    assert name not in listed
    assert name in await list_all(tagging_stub, include_retired=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(tagging_stub, frequency(name, heavy_from=9))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def list_all(stub: Stub, include_retired: bool, metadata: Any = ACME) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListTagDefinitions(
            tagging_service_pb2.ListTagDefinitionsRequest(
                page_size=2, page_token=token, include_retired=include_retired
            ),
            metadata=metadata,
        )
        names.extend(d.dimension for d in page.tag_definitions)
        token = page.next_page_token
        if not token:
            return names


async def test_paging_lists_each_dimension_once_in_order_per_tenant(tagging_stub: Stub) -> None:
    mine = [dimension() for _ in range(5)]
    for name in mine:
        await create(tagging_stub, frequency(name))
    listed = await list_all(tagging_stub, include_retired=True)
    assert listed == sorted(listed)
    assert len(listed) == len(set(listed))
    assert set(mine) <= set(listed)
    assert not set(mine) & set(await list_all(tagging_stub, include_retired=True, metadata=GLOBEX))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(tagging_stub, mine[0], metadata=GLOBEX)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _bad(**changes: Any) -> tags_pb2.TagDefinition:
    definition = frequency(dimension())
    for key, value in changes.items():
        definition.ClearField(key)  # type: ignore[arg-type]
        if isinstance(value, list):
            getattr(definition, key).extend(value)
        elif value is not None:
            setattr(definition, key, value)
    return definition


def _bad_rule(rule: rules_pb2.Rule) -> tags_pb2.TagDefinition:
    definition = frequency(dimension())
    definition.values[1].rule.CopyFrom(rule)
    return definition


BAD_DEFINITIONS: list[tuple[str, tags_pb2.TagDefinition, str]] = [
    ("bad dimension", _bad(dimension="Has Caps"), "tag_definition.dimension"),
    ("no category", _bad(category=None), "tag_definition.category"),
    ("unknown kind", _bad(kind=42), "tag_definition.kind"),
    ("model kind without a model", _bad(kind=tags_pb2.TAG_KIND_MODEL), "tag_definition.model"),
    ("no refresh", _bad(refresh_policy=None), "tag_definition.refresh_policy"),
    ("no cardinality", _bad(cardinality=None), "tag_definition.cardinality"),
    ("no values", _bad(values=[]), "tag_definition.values"),
    (
        "value twice",
        _bad(values=[tags_pb2.TagValue(value="a", rule=ALWAYS)] * 2),
        "tag_definition.values[1].value",
    ),
    ("rule missing", _bad(values=[tags_pb2.TagValue(value="a")]), "tag_definition.values[0].rule"),
    (
        "bad rule inside",
        _bad_rule(cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 99_999), Op.OPERATOR_GT, 1)),
        "tag_definition.values[1].rule.condition.operand.aggregate.window_days",
    ),
    ("long description", _bad(description="d" * 1025), "tag_definition.description"),
]


@pytest.mark.parametrize(
    ("case", "definition", "field"), BAD_DEFINITIONS, ids=[c[0] for c in BAD_DEFINITIONS]
)
async def test_bad_definitions_name_the_field_and_store_nothing(
    tagging_stub: Stub, case: str, definition: tags_pb2.TagDefinition, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(tagging_stub, definition)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    if case != "bad dimension":
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await get(tagging_stub, definition.dimension)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_manual_dimensions_take_no_rules(tagging_stub: Stub) -> None:
    manual = tags_pb2.TagDefinition(
        dimension=dimension(),
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_MULTI,
        values=[tags_pb2.TagValue(value="vip_hotline"), tags_pb2.TagValue(value="complained")],
    )
    assert (await create(tagging_stub, manual)).version == 1
    manual.dimension = dimension()
    manual.values[0].rule.CopyFrom(ALWAYS)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(tagging_stub, manual)
    assert "tag_definition.values[0].rule" in field_violations(caught.value)


async def test_explain_tags_shows_the_value_and_the_figures(tagging_stub: Stub) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    member_id = await new_member(tagging_stub)
    for days_ago in (3, 10, 40, 50, 70):
        paid = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
        await record_order(tagging_stub, an_order(member_id, paid_time=stamp(paid)))
    reply = await tagging_stub.ExplainTags(
        tagging_service_pb2.ExplainTagsRequest(member=f"members/{member_id}", dimensions=[name]),
        metadata=ACME,
    )
    (explanation,) = reply.explanations
    assert (explanation.dimension, explanation.version, list(explanation.values)) == (name, 1, ["light"])
    assert dict(explanation.figures) == {"orders_per_month(window_days=90)": pytest.approx(5 * 30 / 90)}


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"member": "members/nobody-at-all"}, grpc.StatusCode.NOT_FOUND),
        ({"member": "bad"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"member": "members/x", "dimensions": ["Not A Dimension"]}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_explain_tags_bad_requests(
    tagging_stub: Stub, request_fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.ExplainTags(
            tagging_service_pb2.ExplainTagsRequest(**request_fields), metadata=ACME
        )
    assert caught.value.code() == code
