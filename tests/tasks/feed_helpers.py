"""Facts recorded with tagging (which the tasks service learns of from tagging's feed), and waiting
for the tasks follower to apply them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from memberops.tagging.v1 import facts_pb2, tagging_service_pb2

from runtime.db import Database
from services.tasks.feed.follower import FeedFollower
from tests.conftest import INITECH, TENANT_INITECH, unique
from tests.tasks.task_helpers import stamp
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub


# (sku, category, brand, quantity, unit price in minor units)
Line = tuple[str, str, str, int, int]


async def order(
    tagging: TaggingStub,
    member_id: str,
    lines: Sequence[Line],
    *,
    amount: int | None = None,
    paid: dt.datetime | None = None,
    metadata: Any = INITECH,
) -> str:
    """Records a paid order (line ids "0", "1", … in the order given); returns its id."""
    message = facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=stamp(paid or dt.datetime.now(dt.UTC)),
        amount_minor=sum(q * p for _, _, _, q, p in lines) if amount is None else amount,
        lines=[
            facts_pb2.OrderLine(
                line_id=str(i), sku=sku, category=category, brand=brand, quantity=q, unit_price_minor=p
            )
            for i, (sku, category, brand, q, p) in enumerate(lines)
        ],
    )
    await tagging.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=message), metadata=metadata)
    return message.order_id


async def refund(
    tagging: TaggingStub, order_id: str, lines: dict[str, int], amount: int, metadata: Any = INITECH
) -> str:
    """Records a refund of `lines` (line id: quantity) and `amount`; returns its id."""
    message = facts_pb2.Refund(
        refund_id=unique("r"),
        order_id=order_id,
        refund_time=stamp(dt.datetime.now(dt.UTC)),
        amount_minor=amount,
        lines=[facts_pb2.RefundLine(line_id=line_id, quantity=q) for line_id, q in lines.items()],
    )
    await tagging.RecordRefund(tagging_service_pb2.RecordRefundRequest(refund=message), metadata=metadata)
    return message.refund_id


async def event(
    tagging: TaggingStub, member_id: str, kind: int, metadata: Any = INITECH, **fields: str
) -> None:
    message = facts_pb2.BehaviorEvent(
        event_id=unique("e"),
        member_id=member_id,
        kind=kind,  # type: ignore[arg-type]
        occur_time=stamp(dt.datetime.now(dt.UTC)),
        **fields,
    )
    await tagging.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=[message]), metadata=metadata)


async def until(check: Callable[[], Awaitable[bool]], step: Callable[[], Awaitable[object]]) -> None:
    """Runs `step` until `check` holds."""

    async def stepped() -> bool:
        if await check():
            return True
        await step()
        return False

    await eventually(stepped, "did the tasks feed follower apply the facts")


async def drain(follower: FeedFollower) -> None:
    """Applies initech's feed until the follower finds nothing more to read."""
    while (await follower.follow_once(TENANT_INITECH)).entries:
        pass


async def followed(follower: FeedFollower, check: Callable[[], Awaitable[bool]]) -> None:
    """Follows initech's feed round by round until `check` holds."""
    await until(check, lambda: drain(follower))


async def registered(db: Database, member_id: str) -> bool:
    """Whether the tasks service has seen the member register (through the feed)."""
    async with db.transaction(TENANT_INITECH) as conn:
        seen = await conn.fetchval(
            "SELECT register_time FROM tasks.member_facts WHERE member_id = $1", member_id
        )
    return seen is not None
