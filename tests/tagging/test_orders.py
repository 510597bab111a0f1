"""RecordOrder and RecordRefund: once each, by natural key, never more refunded than paid."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2

from runtime.db import Database
from tests.conftest import GLOBEX, TENANT_ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import (
    PAID,
    a_refund,
    an_order,
    new_member,
    record_order,
    record_refund,
    stamp,
)

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def count(db: Database, sql: str, *args: Any) -> int:
    async with db.transaction(TENANT_ACME) as conn:
        value: int = await conn.fetchval(sql, *args)
        return value


async def test_an_order_is_recorded_with_its_lines(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    order = await record_order(tagging_stub, an_order(member_id, "o-lines-" + member_id))
    assert order.name == f"orders/o-lines-{member_id}"
    assert order.amount_minor == 25_800
    assert [(line.line_id, line.category, line.quantity) for line in order.lines] == [
        ("1", "skincare", 2),
        ("2", "makeup", 3),
    ]
    assert order.paid_time.ToDatetime(dt.UTC) == PAID
    assert order.refunded_amount_minor == 0


async def test_a_retried_order_returns_the_first_result(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    request = an_order(member_id)
    first = await record_order(tagging_stub, request)
    again = await record_order(tagging_stub, request)
    assert again == first


async def test_concurrent_duplicate_orders_take_effect_once(tagging_stub: Stub, db: Database) -> None:
    member_id = await new_member(tagging_stub)
    request = an_order(member_id)
    results = await asyncio.gather(*(record_order(tagging_stub, request) for _ in range(16)))
    assert len({r.SerializeToString() for r in results}) == 1
    assert await count(db, "SELECT count(*) FROM tagging.orders WHERE order_id = $1", request.order_id) == 1
    assert (
        await count(db, "SELECT count(*) FROM tagging.order_lines WHERE order_id = $1", request.order_id) == 2
    )
    assert await count(db, "SELECT count(*) FROM tagging.feed WHERE subject_id = $1", request.order_id) == 1


async def test_the_same_order_id_with_other_content_is_already_exists(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    request = an_order(member_id)
    await record_order(tagging_stub, request)
    request.amount_minor += 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_order(tagging_stub, request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_an_order_of_an_unknown_member_is_not_found(tagging_stub: Stub, db: Database) -> None:
    request = an_order(unique("nobody"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_order(tagging_stub, request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "order.member_id" in (caught.value.details() or "")
    assert await count(db, "SELECT count(*) FROM tagging.orders WHERE order_id = $1", request.order_id) == 0


async def test_order_ids_are_per_tenant(tagging_stub: Stub) -> None:
    order_id = unique("o")
    await record_order(tagging_stub, an_order(await new_member(tagging_stub), order_id))
    other = await record_order(
        tagging_stub, an_order(await new_member(tagging_stub, GLOBEX), order_id), GLOBEX
    )
    assert other.order_id == order_id


def _line(**fields: Any) -> facts_pb2.OrderLine:
    values: dict[str, Any] = {"line_id": "1", "quantity": 1, "unit_price_minor": 100}
    values.update(fields)
    return facts_pb2.OrderLine(**values)


BAD_ORDERS: list[tuple[str, dict[str, Any], str]] = [
    ("bad order id", {"order_id": "has space"}, "order.order_id"),
    ("no paid time", {"paid_time": None}, "order.paid_time"),
    (
        "paid next week",
        {"paid_time": stamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=7))},
        "order.paid_time",
    ),
    ("paid in 1999", {"paid_time": stamp(dt.datetime(1999, 1, 1, tzinfo=dt.UTC))}, "order.paid_time"),
    ("negative amount", {"amount_minor": -1}, "order.amount_minor"),
    ("absurd amount", {"amount_minor": 10**13}, "order.amount_minor"),
    ("no lines", {"lines": []}, "order.lines"),
    ("too many lines", {"lines": [_line(line_id=str(i)) for i in range(501)]}, "order.lines"),
    ("line twice", {"lines": [_line(), _line()]}, "order.lines[1].line_id"),
    ("empty line id", {"lines": [_line(line_id="")]}, "order.lines[0].line_id"),
    ("zero quantity", {"lines": [_line(quantity=0)]}, "order.lines[0].quantity"),
    ("negative price", {"lines": [_line(unit_price_minor=-5)]}, "order.lines[0].unit_price_minor"),
    ("long category", {"lines": [_line(category="c" * 65)]}, "order.lines[0].category"),
    ("long store", {"store": "s" * 65}, "order.store"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_ORDERS, ids=[c[0] for c in BAD_ORDERS])
async def test_a_bad_order_is_rejected_naming_the_field_and_writes_nothing(
    tagging_stub: Stub, db: Database, case: str, change: dict[str, Any], field: str
) -> None:
    member_id = await new_member(tagging_stub)
    request = an_order(member_id)
    for name, value in change.items():
        request.ClearField(name)  # type: ignore[arg-type]
        if value is None:
            continue
        if name == "lines":
            request.lines.extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_order(tagging_stub, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    assert await count(db, "SELECT count(*) FROM tagging.orders WHERE member_id = $1", member_id) == 0


# --- refunds ---------------------------------------------------------------------------------------


async def test_a_refund_before_its_order_is_a_failed_precondition(tagging_stub: Stub, db: Database) -> None:
    refund = a_refund(unique("o-never"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_refund(tagging_stub, refund)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "record an order before its refunds" in (caught.value.details() or "")
    assert await count(db, "SELECT count(*) FROM tagging.refunds WHERE refund_id = $1", refund.refund_id) == 0


async def test_partial_then_full_refund(tagging_stub: Stub) -> None:
    order = await record_order(tagging_stub, an_order(await new_member(tagging_stub)))
    partial = await record_refund(
        tagging_stub,
        a_refund(order.order_id, amount_minor=4_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=2)]),
    )
    assert partial.amount_minor == 4_000
    assert partial.member_id == order.member_id
    rest = await record_refund(tagging_stub, a_refund(order.order_id))
    assert rest.amount_minor == 25_800 - 4_000
    assert {(line.line_id, line.quantity) for line in rest.lines} == {("1", 2), ("2", 1)}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_refund(tagging_stub, a_refund(order.order_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already refunded in full" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"lines": [facts_pb2.RefundLine(line_id="1", quantity=3)]}, "refund.lines[0].quantity"),
        ({"lines": [facts_pb2.RefundLine(line_id="9", quantity=1)]}, "refund.lines[0].line_id"),
        ({"amount_minor": 25_801}, "refund.amount_minor"),
        ({"refund_time": stamp(PAID - dt.timedelta(days=1))}, "refund.refund_time"),
        ({"lines": [facts_pb2.RefundLine(line_id="1", quantity=0)]}, "refund.lines[0].quantity"),
        ({"refund_id": "bad id"}, "refund.refund_id"),
    ],
)
async def test_a_refund_beyond_the_order_is_rejected_naming_the_field(
    tagging_stub: Stub, db: Database, fields: dict[str, Any], field: str
) -> None:
    order = await record_order(tagging_stub, an_order(await new_member(tagging_stub)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_refund(tagging_stub, a_refund(order.order_id, **fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    assert await count(db, "SELECT count(*) FROM tagging.refunds WHERE order_id = $1", order.order_id) == 0


async def test_a_retried_refund_returns_the_first_result_and_a_changed_one_is_refused(
    tagging_stub: Stub,
) -> None:
    order = await record_order(tagging_stub, an_order(await new_member(tagging_stub)))
    request = a_refund(
        order.order_id, amount_minor=1_000, lines=[facts_pb2.RefundLine(line_id="1", quantity=1)]
    )
    results = await asyncio.gather(*(record_refund(tagging_stub, request) for _ in range(16)))
    assert len({r.SerializeToString() for r in results}) == 1
    request.amount_minor = 2_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_refund(tagging_stub, request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_racing_refunds_never_return_more_than_was_bought(tagging_stub: Stub, db: Database) -> None:
    order = await record_order(tagging_stub, an_order(await new_member(tagging_stub)))
    one_unit = [
        a_refund(order.order_id, amount_minor=2_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=1)])
        for _ in range(10)
    ]
    outcomes = await asyncio.gather(
        *(record_refund(tagging_stub, r) for r in one_unit), return_exceptions=True
    )
    succeeded = [o for o in outcomes if isinstance(o, facts_pb2.Refund)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(succeeded) == 3
    assert {e.code() for e in refused} == {grpc.StatusCode.INVALID_ARGUMENT}
    async with db.transaction(TENANT_ACME) as conn:
        refunded = await conn.fetchval(
            "SELECT refunded_quantity FROM tagging.order_lines WHERE order_id = $1 AND line_id = '2'",
            order.order_id,
        )
        amount = await conn.fetchval(
            "SELECT refunded_amount_minor FROM tagging.orders WHERE order_id = $1", order.order_id
        )
    assert (refunded, amount) == (3, 6_000)
