"""Builders and calls shared by the fact and feed tests."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

PAID = dt.datetime(2026, 10, 1, 12, 0, tzinfo=dt.UTC)


def stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


async def new_member(stub: Stub, metadata: Any = ACME) -> str:
    member_id = unique()
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=member_id)),
        metadata=metadata,
    )
    return member_id


def an_order(member_id: str, order_id: str | None = None, **fields: Any) -> facts_pb2.Order:
    values: dict[str, Any] = {
        "order_id": order_id or unique("o"),
        "member_id": member_id,
        "paid_time": stamp(PAID),
        "amount_minor": 25_800,
        "store": "tmall",
        "payment_method": "alipay",
        "lines": [
            facts_pb2.OrderLine(
                line_id="1",
                sku="sku-1",
                category="skincare",
                brand="acme",
                quantity=2,
                unit_price_minor=9_900,
            ),
            facts_pb2.OrderLine(
                line_id="2", sku="sku-2", category="makeup", brand="acme", quantity=3, unit_price_minor=2_000
            ),
        ],
    }
    values.update(fields)
    return facts_pb2.Order(**values)


async def record_order(stub: Stub, order: facts_pb2.Order, metadata: Any = ACME) -> facts_pb2.Order:
    return await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=metadata)


def a_refund(order_id: str, refund_id: str | None = None, **fields: Any) -> facts_pb2.Refund:
    values: dict[str, Any] = {
        "refund_id": refund_id or unique("r"),
        "order_id": order_id,
        "refund_time": stamp(PAID + dt.timedelta(days=2)),
    }
    values.update(fields)
    return facts_pb2.Refund(**values)


async def record_refund(stub: Stub, refund: facts_pb2.Refund) -> facts_pb2.Refund:
    return await stub.RecordRefund(tagging_service_pb2.RecordRefundRequest(refund=refund), metadata=ACME)


def an_event(member_id: str, event_id: str | None = None, **fields: Any) -> facts_pb2.BehaviorEvent:
    values: dict[str, Any] = {
        "event_id": event_id or unique("e"),
        "member_id": member_id,
        "kind": facts_pb2.EVENT_KIND_CART,
        "occur_time": stamp(PAID - dt.timedelta(hours=3)),
        "sku": "sku-9",
        "category": "skincare",
        "channel": "app",
    }
    values.update(fields)
    return facts_pb2.BehaviorEvent(**values)


async def record_events(
    stub: Stub, events: list[facts_pb2.BehaviorEvent]
) -> tagging_service_pb2.RecordEventsResponse:
    return await stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=events), metadata=ACME)
