"""Order.coupon_codes: checked, stored, part of the order's content (a re-sent order with other
codes is ALREADY_EXISTS), returned by reads, carried on the feed, and imported like the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.tagging.v1 import feed_pb2, tagging_service_pb2

from tests.conftest import ACME
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_order, new_member, record_order
from tests.tagging.test_feed import feed_end, read_all
from tests.tagging.test_import_facts import counts, failed, import_orders

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


async def fed_codes(stub: Stub, start: str, order_ids: list[str]) -> dict[str, list[str]]:
    """order id -> the codes its OrderRecorded entry carries, of the entries after `start`."""
    entries, _ = await read_all(stub, start)
    return {
        e.subject_id: list(e.order_recorded.order.coupon_codes)
        for e in entries
        if e.kind == feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED and e.subject_id in order_ids
    }


async def test_codes_are_stored_returned_and_fed(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    coded = await record_order(tagging_stub, an_order(member_id, coupon_codes=["SAVE-20", "vip_2"]))
    plain = await record_order(tagging_stub, an_order(member_id))
    assert list(coded.coupon_codes) == ["SAVE-20", "vip_2"]
    assert list(plain.coupon_codes) == []
    listed = await tagging_stub.ListMemberOrders(
        tagging_service_pb2.ListMemberOrdersRequest(member=f"members/{member_id}"), metadata=ACME
    )
    assert {o.order.order_id: list(o.order.coupon_codes) for o in listed.orders} == {
        coded.order_id: ["SAVE-20", "vip_2"],
        plain.order_id: [],
    }
    assert await fed_codes(tagging_stub, start, [coded.order_id, plain.order_id]) == {
        coded.order_id: ["SAVE-20", "vip_2"],
        plain.order_id: [],
    }


async def test_a_resent_order_with_other_codes_already_exists(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    order = an_order(member_id, coupon_codes=["A1"])
    first = await record_order(tagging_stub, order)
    assert await record_order(tagging_stub, order) == first
    for codes in (["A2"], [], ["A1", "A2"]):
        del order.coupon_codes[:]
        order.coupon_codes.extend(codes)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await record_order(tagging_stub, order)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, codes
    # An order recorded without codes is compared the same way.
    codeless = an_order(member_id)
    await record_order(tagging_stub, codeless)
    codeless.coupon_codes.append("LATE")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_order(tagging_stub, codeless)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("codes", "paths"),
    [
        ([""], ["order.coupon_codes[0]"]),
        (["ok", "c" * 65], ["order.coupon_codes[1]"]),
        (["a b", "é", "a/b"], ["order.coupon_codes[0]", "order.coupon_codes[1]", "order.coupon_codes[2]"]),
        (["X", "Y", "X"], ["order.coupon_codes[2]"]),
        ([f"C{i}" for i in range(11)], ["order.coupon_codes"]),
    ],
)
async def test_bad_codes_are_named(tagging_stub: Stub, codes: list[str], paths: list[str]) -> None:
    member_id = await new_member(tagging_stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record_order(tagging_stub, an_order(member_id, coupon_codes=codes))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field_violations(caught.value)) == paths


async def test_imported_codes_are_stored_and_fed_and_resent_alike(tagging_stub: Stub) -> None:
    start = await feed_end(tagging_stub)
    member_id = await new_member(tagging_stub)
    plain_way = an_order(member_id, coupon_codes=["IMP-1", "imp_2"])
    full_way = an_order(member_id, store="天猫", coupon_codes=["IMP-3"])  # non-ASCII: the full way
    none = an_order(member_id)
    batch = [plain_way, full_way, none]
    assert counts(await import_orders(tagging_stub, [batch])) == (3, 3, 0)
    ids = [o.order_id for o in batch]
    assert await fed_codes(tagging_stub, start, ids) == {
        plain_way.order_id: ["IMP-1", "imp_2"],
        full_way.order_id: ["IMP-3"],
        none.order_id: [],
    }
    listed = await tagging_stub.ListMemberOrders(
        tagging_service_pb2.ListMemberOrdersRequest(member=f"members/{member_id}"), metadata=ACME
    )
    assert {o.order.order_id: list(o.order.coupon_codes) for o in listed.orders} == {
        plain_way.order_id: ["IMP-1", "imp_2"],
        full_way.order_id: ["IMP-3"],
        none.order_id: [],
    }
    assert counts(await import_orders(tagging_stub, [batch])) == (3, 0, 3)
    # RecordOrder of an imported order is the same order; other codes are another order.
    assert list((await record_order(tagging_stub, plain_way)).coupon_codes) == ["IMP-1", "imp_2"]
    plain_way.coupon_codes.append("IMP-9")
    error = await failed(import_orders(tagging_stub, [[plain_way]]), grpc.StatusCode.ALREADY_EXISTS)
    assert "requests[0].orders[0].order_id" in (error.details() or "")
    # And an order recorded one by one with codes imports as unchanged.
    single = an_order(member_id, coupon_codes=["ONE"])
    await record_order(tagging_stub, single)
    assert counts(await import_orders(tagging_stub, [[single]])) == (1, 0, 1)


async def test_bad_imported_codes_are_named_by_request_and_order(tagging_stub: Stub) -> None:
    member_id = await new_member(tagging_stub)
    good = [an_order(member_id)]
    bad = [an_order(member_id), an_order(member_id, coupon_codes=["ok", "not ok", "ok"])]
    error = await failed(import_orders(tagging_stub, [good, bad]), grpc.StatusCode.INVALID_ARGUMENT)
    assert sorted(field_violations(error)) == [
        "requests[1].orders[1].coupon_codes[1]",
        "requests[1].orders[1].coupon_codes[2]",
    ]
