"""Tagging's feed as its consumers read it: each FeedEntry message becomes one typed value, once,
so no consumer picks fields out of a payload by name.

Shared by the tasks follower and the journeys dispatcher (the worker imports runtime too);
the message is memberops.tagging.v1.FeedEntry, whose `payload` oneof follows `kind`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from memberops.tagging.v1 import facts_pb2, feed_pb2


class FeedKind(enum.IntEnum):
    """memberops.tagging.v1.FeedEntryKind."""

    UNSPECIFIED = feed_pb2.FEED_ENTRY_KIND_UNSPECIFIED
    MEMBER_CHANGED = feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
    ORDER_RECORDED = feed_pb2.FEED_ENTRY_KIND_ORDER_RECORDED
    REFUND_RECORDED = feed_pb2.FEED_ENTRY_KIND_REFUND_RECORDED
    EVENT_RECORDED = feed_pb2.FEED_ENTRY_KIND_EVENT_RECORDED
    TAG_CHANGED = feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED


class EventKind(enum.IntEnum):
    """memberops.tagging.v1.EventKind: what a behaviour event was."""

    UNSPECIFIED = facts_pb2.EVENT_KIND_UNSPECIFIED
    VIEW = facts_pb2.EVENT_KIND_VIEW
    CART = facts_pb2.EVENT_KIND_CART
    FAVOURITE = facts_pb2.EVENT_KIND_FAVOURITE
    SEARCH = facts_pb2.EVENT_KIND_SEARCH
    CLICK = facts_pb2.EVENT_KIND_CLICK
    SHARE = facts_pb2.EVENT_KIND_SHARE
    SIGN_IN = facts_pb2.EVENT_KIND_SIGN_IN


# Every kind of behaviour event a member can do (UNSPECIFIED is none).
EVENT_KINDS = frozenset(k for k in EventKind if k is not EventKind.UNSPECIFIED)


class TagChange(enum.IntEnum):
    """memberops.tagging.v1.TagChange."""

    UNSPECIFIED = feed_pb2.TAG_CHANGE_UNSPECIFIED
    ADDED = feed_pb2.TAG_CHANGE_ADDED
    REMOVED = feed_pb2.TAG_CHANGE_REMOVED


@dataclass(frozen=True)
class MemberChanged:
    revision: int  # 1: the member's registration
    # When it happened (a registration's register_time); None in entries written before.
    occur_time: dt.datetime | None = None

    @property
    def registered(self) -> bool:
        return self.revision == 1


@dataclass(frozen=True)
class OrderLine:
    line_id: str
    sku: str
    category: str
    brand: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True)
class OrderRecorded:
    order_id: str
    # 1 for the member's first order; 0 in entries written before tagging numbered orders.
    member_order_number: int
    paid_time: dt.datetime | None
    amount_minor: int
    store: str
    payment_method: str
    lines: tuple[OrderLine, ...]
    # Coupon codes the member used on the order (empty in entries written before orders had them).
    coupon_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefundLine:
    line_id: str
    quantity: int


@dataclass(frozen=True)
class OrderStanding:
    """Where the refunded order stands after the refund."""

    amount_minor: int
    refunded_amount_minor: int
    refunded_in_full: bool


@dataclass(frozen=True)
class RefundRecorded:
    refund_id: str
    order_id: str
    refund_time: dt.datetime | None
    amount_minor: int
    lines: tuple[RefundLine, ...]  # empty: the whole order
    order_standing: OrderStanding | None  # None in entries written before tagging reported it


@dataclass(frozen=True)
class EventRecorded:
    event_id: str
    kind: int  # EventKind; an int so a kind added later reads as itself
    occur_time: dt.datetime | None
    sku: str
    category: str
    brand: str
    query: str
    channel: str


@dataclass(frozen=True)
class TagChanged:
    dimension: str
    value: str
    change: TagChange
    definition_version: int
    operator: str  # empty for rule tags
    reason: str
    # When the change happened (the fact that caused it, a recompute's as_of, an operator's
    # setting); None in entries written before tagging dated changes (read create_time then).
    occur_time: dt.datetime | None = None


Payload = MemberChanged | OrderRecorded | RefundRecorded | EventRecorded | TagChanged


@dataclass(frozen=True)
class FeedEntry:
    """One entry of tagging's feed; `payload` matches `kind` (None when the entry carries none)."""

    cursor: str
    kind: int  # FeedKind; an int so a kind added later reads as itself
    member_id: str
    subject_id: str
    payload: Payload | None
    create_time: dt.datetime
    # History loaded by an import (or a tag change its refresh made): consumers keep their state
    # from it but reward and enrol nobody on it.
    backfilled: bool = False


def read_entry(message: feed_pb2.FeedEntry) -> FeedEntry:
    return FeedEntry(
        cursor=message.cursor,
        kind=int(message.kind),
        member_id=message.member_id,
        subject_id=message.subject_id,
        payload=read_payload(message),
        create_time=message.create_time.ToDatetime(tzinfo=dt.UTC),
        backfilled=message.backfilled,
    )


def read_payload(message: feed_pb2.FeedEntry) -> Payload | None:
    """The entry's payload as a typed value; None when it carries none."""
    which = message.WhichOneof("payload")
    if which == "member_changed":
        changed = message.member_changed
        return MemberChanged(
            revision=changed.revision, occur_time=_time(changed, "occur_time", changed.occur_time)
        )
    if which == "order_recorded":
        return _order(message.order_recorded)
    if which == "refund_recorded":
        return _refund(message.refund_recorded)
    if which == "event_recorded":
        return _event(message.event_recorded)
    if which == "tag_changed":
        return _tag_change(message.tag_changed)
    return None


def _order(message: feed_pb2.OrderRecorded) -> OrderRecorded:
    order = message.order
    return OrderRecorded(
        order_id=order.order_id,
        member_order_number=message.member_order_number,
        paid_time=_time(order, "paid_time", order.paid_time),
        amount_minor=order.amount_minor,
        store=order.store,
        payment_method=order.payment_method,
        lines=tuple(
            OrderLine(line.line_id, line.sku, line.category, line.brand, line.quantity, line.unit_price_minor)
            for line in order.lines
        ),
        coupon_codes=tuple(order.coupon_codes),
    )


def _refund(message: feed_pb2.RefundRecorded) -> RefundRecorded:
    refund = message.refund
    standing = message.order_standing
    return RefundRecorded(
        refund_id=refund.refund_id,
        order_id=refund.order_id,
        refund_time=_time(refund, "refund_time", refund.refund_time),
        amount_minor=refund.amount_minor,
        lines=tuple(RefundLine(line_id=line.line_id, quantity=line.quantity) for line in refund.lines),
        order_standing=(
            OrderStanding(
                amount_minor=standing.amount_minor,
                refunded_amount_minor=standing.refunded_amount_minor,
                refunded_in_full=standing.refunded_in_full,
            )
            if message.HasField("order_standing")
            else None
        ),
    )


def _event(message: facts_pb2.BehaviorEvent) -> EventRecorded:
    return EventRecorded(
        event_id=message.event_id,
        kind=int(message.kind),
        occur_time=_time(message, "occur_time", message.occur_time),
        sku=message.sku,
        category=message.category,
        brand=message.brand,
        query=message.query,
        channel=message.channel,
    )


def _tag_change(message: feed_pb2.TagChanged) -> TagChanged:
    change = int(message.change)
    return TagChanged(
        dimension=message.dimension,
        value=message.value,
        change=TagChange(change) if change in set(TagChange) else TagChange.UNSPECIFIED,
        definition_version=message.definition_version,
        operator=message.operator,
        reason=message.reason,
        occur_time=_time(message, "occur_time", message.occur_time),
    )


def _time(
    message: (
        facts_pb2.Order
        | facts_pb2.Refund
        | facts_pb2.BehaviorEvent
        | feed_pb2.TagChanged
        | feed_pb2.MemberChanged
    ),
    field: str,
    stamp: timestamp_pb2.Timestamp,
) -> dt.datetime | None:
    """The timestamp `field` of `message` (`stamp`), None when unset."""
    return stamp.ToDatetime(tzinfo=dt.UTC) if message.HasField(field) else None  # type: ignore[arg-type]
