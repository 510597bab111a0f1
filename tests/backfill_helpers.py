"""History loaded through tagging's import RPCs (ImportOrders, ImportEvents), as the consumers'
tests of back-filled facts send it: one batch per call, every fact stored."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


def stamp(at: dt.datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(at)
    return message


def paid_order(
    member_id: str, amount_minor: int, paid: dt.datetime, category: str = "tea"
) -> facts_pb2.Order:
    """An order of one line of `category` (quantity 1 at the order's amount)."""
    return facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=stamp(paid),
        amount_minor=amount_minor,
        lines=[
            facts_pb2.OrderLine(
                line_id="0", sku="s", category=category, brand="b", quantity=1, unit_price_minor=amount_minor
            )
        ],
    )


async def record(tagging: TaggingStub, order: facts_pb2.Order, metadata: Any = ACME) -> None:
    """Records the order live, through RecordOrder."""
    await tagging.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=metadata)


async def import_orders(tagging: TaggingStub, orders: Sequence[facts_pb2.Order], metadata: Any) -> None:
    """Imports the orders in one batch; returns once they are stored and the tags refreshed."""

    async def requests() -> AsyncIterator[tagging_service_pb2.ImportOrdersRequest]:
        yield tagging_service_pb2.ImportOrdersRequest(orders=orders)

    reply = await tagging.ImportOrders(requests(), metadata=metadata)
    assert reply.stored_count == len(orders)


async def import_refunds(tagging: TaggingStub, refunds: Sequence[facts_pb2.Refund], metadata: Any) -> None:
    async def requests() -> AsyncIterator[tagging_service_pb2.ImportRefundsRequest]:
        yield tagging_service_pb2.ImportRefundsRequest(refunds=refunds)

    reply = await tagging.ImportRefunds(requests(), metadata=metadata)
    assert reply.stored_count == len(refunds)


async def import_events(
    tagging: TaggingStub, events: Sequence[facts_pb2.BehaviorEvent], metadata: Any
) -> None:
    async def requests() -> AsyncIterator[tagging_service_pb2.ImportEventsRequest]:
        yield tagging_service_pb2.ImportEventsRequest(events=events)

    reply = await tagging.ImportEvents(requests(), metadata=metadata)
    assert reply.stored_count == len(events)
