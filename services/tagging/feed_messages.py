"""Feed entries as FeedEntry messages: the one place where the JSON stored in tagging.feed becomes
the typed payload consumers read.

The stored form stays jsonb (written by SQL and Python in the same transaction as the fact); its
keys are the protobuf field names, so each payload kind maps field by field. A key an old entry
lacks is left unset in the message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from memberops.tagging.v1 import facts_pb2, feed_pb2

from services.tagging.domain import FeedEntry, FeedKind

_TAG_CHANGES = {"added": feed_pb2.TAG_CHANGE_ADDED, "removed": feed_pb2.TAG_CHANGE_REMOVED}


def feed_entry_to_proto(entry: FeedEntry) -> feed_pb2.FeedEntry:
    message = feed_pb2.FeedEntry(
        cursor=entry.cursor,
        kind=int(entry.kind),  # type: ignore[arg-type]
        member_id=entry.member_id,
        subject_id=entry.subject_id,
    )
    message.create_time.FromDatetime(entry.create_time)
    message.traceparent = entry.traceparent
    payload = entry.payload
    # Imports (and the tag refreshes they make) write the mark into the stored payload.
    message.backfilled = bool(payload.get("backfilled"))
    if entry.kind == FeedKind.MEMBER_CHANGED:
        message.member_changed.revision = int(payload.get("revision", 0))
        _time(payload, "occur_time", message.member_changed.occur_time)
    elif entry.kind == FeedKind.ORDER_RECORDED:
        _order(payload, message.order_recorded)
    elif entry.kind == FeedKind.REFUND_RECORDED:
        _refund(payload, message.refund_recorded)
    elif entry.kind == FeedKind.EVENT_RECORDED:
        _event(payload, message.event_recorded)
    elif entry.kind == FeedKind.TAG_CHANGED:
        _tag_change(payload, message.tag_changed)
    return message


def _order(payload: Mapping[str, Any], message: feed_pb2.OrderRecorded) -> None:
    message.member_order_number = int(payload.get("member_order_number") or 0)
    order = message.order
    order.order_id = _text(payload, "order_id")
    order.member_id = _text(payload, "member_id")
    _time(payload, "paid_time", order.paid_time)
    order.amount_minor = int(payload.get("amount_minor") or 0)
    order.store = _text(payload, "store")
    order.payment_method = _text(payload, "payment_method")
    for line in payload.get("lines") or ():
        order.lines.add(
            line_id=_text(line, "line_id"),
            sku=_text(line, "sku"),
            category=_text(line, "category"),
            brand=_text(line, "brand"),
            quantity=int(line.get("quantity") or 0),
            unit_price_minor=int(line.get("unit_price_minor") or 0),
        )
    order.coupon_codes.extend(str(code) for code in payload.get("coupon_codes") or ())


def _refund(payload: Mapping[str, Any], message: feed_pb2.RefundRecorded) -> None:
    refund = message.refund
    refund.refund_id = _text(payload, "refund_id")
    refund.order_id = _text(payload, "order_id")
    refund.member_id = _text(payload, "member_id")
    _time(payload, "refund_time", refund.refund_time)
    refund.amount_minor = int(payload.get("amount_minor") or 0)
    for line in payload.get("lines") or ():
        refund.lines.add(line_id=_text(line, "line_id"), quantity=int(line.get("quantity") or 0))
    if "order_refunded_in_full" in payload:
        message.order_standing.amount_minor = int(payload.get("order_amount_minor") or 0)
        message.order_standing.refunded_amount_minor = int(payload.get("order_refunded_amount_minor") or 0)
        message.order_standing.refunded_in_full = bool(payload["order_refunded_in_full"])


def _event(payload: Mapping[str, Any], message: facts_pb2.BehaviorEvent) -> None:
    message.event_id = _text(payload, "event_id")
    message.member_id = _text(payload, "member_id")
    message.kind = int(payload.get("kind") or 0)  # type: ignore[assignment]
    _time(payload, "occur_time", message.occur_time)
    for name in ("sku", "category", "brand", "query", "channel"):
        setattr(message, name, _text(payload, name))


def _tag_change(payload: Mapping[str, Any], message: feed_pb2.TagChanged) -> None:
    message.dimension = _text(payload, "dimension")
    message.value = _text(payload, "value")
    message.change = _TAG_CHANGES.get(_text(payload, "change"), feed_pb2.TAG_CHANGE_UNSPECIFIED)
    message.definition_version = int(payload.get("definition_version") or 0)
    message.operator = _text(payload, "operator")
    message.reason = _text(payload, "reason")
    _time(payload, "occur_time", message.occur_time)


def _text(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    return "" if value is None else str(value)


def _time(payload: Mapping[str, Any], key: str, stamp: timestamp_pb2.Timestamp) -> None:
    """Sets `stamp` from an ISO 8601 text (Python's isoformat or PostgreSQL's JSON form)."""
    value = payload.get(key)
    if value:
        parsed = dt.datetime.fromisoformat(str(value))
        stamp.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
