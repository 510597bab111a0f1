"""ListMemberOrders: a member's orders with their lines and refunds, newest paid first (ties by
order id), paged without loss or repeats; NOT_FOUND for a member that is not there."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import bad, failure
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


async def list_orders(
    stub: Stub, member_id: str, page_size: int = 0, page_token: str = ""
) -> tagging_service_pb2.ListMemberOrdersResponse:
    request = tagging_service_pb2.ListMemberOrdersRequest(
        member=f"members/{member_id}", page_size=page_size, page_token=page_token
    )
    return await stub.ListMemberOrders(request, metadata=ACME)


async def test_orders_come_newest_paid_first_with_their_lines_and_refunds(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    older = await record_order(tagging_stub, an_order(member_id))
    newer = await record_order(
        tagging_stub, an_order(member_id, paid_time=stamp(PAID + dt.timedelta(days=5)))
    )
    # Recorded last, paid first: it takes its place by when it was paid.
    back_dated = await record_order(
        tagging_stub, an_order(member_id, paid_time=stamp(PAID - dt.timedelta(days=400)))
    )
    first = await record_refund(
        tagging_stub,
        a_refund(older.order_id, amount_minor=2_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=1)]),
    )
    second = await record_refund(
        tagging_stub,
        a_refund(
            older.order_id,
            refund_time=stamp(PAID + dt.timedelta(days=3)),
            amount_minor=9_900,
            lines=[facts_pb2.RefundLine(line_id="1", quantity=1)],
        ),
    )

    response = await list_orders(tagging_stub, member_id)

    assert [o.order.order_id for o in response.orders] == [
        newer.order_id,
        older.order_id,
        back_dated.order_id,
    ]
    listed = response.orders[1]
    assert listed.order.refunded_amount_minor == 11_900
    assert [(line.line_id, line.quantity) for line in listed.order.lines] == [("1", 2), ("2", 3)]
    assert list(listed.refunds) == [first, second]
    assert [len(o.refunds) for o in response.orders] == [0, 2, 0]
    assert response.orders[0].order == newer
    assert response.next_page_token == ""


async def test_pages_lose_and_repeat_nothing(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    # Seven orders on four paid times: ties are listed by order id.
    times = [PAID - dt.timedelta(hours=h) for h in (0, 0, 1, 2, 2, 2, 3)]
    ids = [f"{unique('mo')}-{i}" for i in range(len(times))]
    for order_id, paid in zip(ids, times, strict=True):
        await record_order(tagging_stub, an_order(member_id, order_id, paid_time=stamp(paid)))
    expected = [
        order_id
        for _, order_id in sorted(zip(times, ids, strict=True), key=lambda p: (-p[0].timestamp(), p[1]))
    ]

    pages: list[list[str]] = []
    token = ""
    while True:
        response = await list_orders(tagging_stub, member_id, page_size=2, page_token=token)
        pages.append([o.order.order_id for o in response.orders])
        token = response.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [order_id for page in pages for order_id in page] == expected


async def test_a_member_without_orders_has_an_empty_list(tagging_stub: Stub) -> None:
    response = await list_orders(tagging_stub, await new_member(tagging_stub))
    assert list(response.orders) == [] and response.next_page_token == ""


async def test_an_unknown_member_is_not_found(tagging_stub: Stub) -> None:
    error = await failure(list_orders(tagging_stub, unique("nobody")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_fields", "path"),
    [
        ({"member": ""}, "member"),
        ({"member": "orders/o-1"}, "member"),
        ({"member": "members/has space"}, "member"),
        ({"member": "members/m-1", "page_size": -1}, "page_size"),
        ({"member": "members/m-1", "page_size": 101}, "page_size"),
        ({"member": "members/m-1", "page_token": "bm90IGpzb24"}, "page_token"),
    ],
)
async def test_bad_requests_name_the_field(
    tagging_stub: Stub, request_fields: dict[str, Any], path: str
) -> None:
    request = tagging_service_pb2.ListMemberOrdersRequest(**request_fields)
    await bad(tagging_stub.ListMemberOrders(request, metadata=ACME), path)


async def test_a_token_serves_only_the_member_it_came_from(tagging_stub: Stub) -> None:
    member_id, other = await new_member(tagging_stub), await new_member(tagging_stub)
    for _ in range(2):
        await record_order(tagging_stub, an_order(member_id))
    token = (await list_orders(tagging_stub, member_id, page_size=1)).next_page_token
    assert token
    await bad(list_orders(tagging_stub, other, page_token=token), "page_token")
