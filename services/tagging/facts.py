"""Orders, refunds and behaviour events: each recorded once, each appended to the feed with it.

Retries are safe by natural key: an order or refund id seen before with the same content returns
the stored fact; with different content it is ALREADY_EXISTS (the caller reused an id). Event ids
seen before are dropped and counted as duplicates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from runtime import checks
from runtime.db import Database
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Violations
from services.tagging import event_store, feed_store, member_store, order_store, refresh_store
from services.tagging.domain import (
    BehaviorEvent,
    EventKind,
    FeedKind,
    Order,
    OrderInput,
    OrderState,
    Refund,
    RefundInput,
    RefundLine,
)
from services.tagging.realtime import RealTimeTags, input_bits
from services.tagging.rules import Input

MAX_LINES = 500
MAX_QUANTITY = 100_000
# 10^12 minor units (ten billion yuan or euros): larger is a unit mistake, not an order.
MAX_AMOUNT = 10**12
MAX_EVENTS = 1000
MAX_TEXT = 64
MAX_QUERY = 256
MAX_PAYMENT_METHOD = 32
MAX_COUPON_CODES = 10
# A coupon code as the shop reports it; nothing JSON would escape, so order_rows writes it as it is.
COUPON_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def content_hash(fact: object) -> str:
    """A stable digest of a dataclass input: what a retry must repeat exactly."""
    canonical = json.dumps(dataclasses.asdict(fact), sort_keys=True, default=str, separators=(",", ":"))  # type: ignore[call-overload]
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_digest(order: OrderInput) -> str:
    """The content digest a retry of the order must repeat: `content_hash(order)`'s canonical JSON
    without dataclasses.asdict's deep copy (a third of an import's time), and without the coupon
    codes when there are none, so an order recorded before orders had codes retries as itself."""
    canonical: dict[str, Any] = {
        "amount_minor": order.amount_minor,
        "lines": [
            {
                "brand": line.brand,
                "category": line.category,
                "line_id": line.line_id,
                "quantity": line.quantity,
                "sku": line.sku,
                "unit_price_minor": line.unit_price_minor,
            }
            for line in order.lines
        ],
        "member_id": order.member_id,
        "order_id": order.order_id,
        "paid_time": None if order.paid_time is None else str(order.paid_time),
        "payment_method": order.payment_method,
        "store": order.store,
    }
    if order.coupon_codes:
        canonical["coupon_codes"] = list(order.coupon_codes)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def validate_coupon_codes(codes: Sequence[str], violations: Violations, path: str) -> None:
    """At most MAX_COUPON_CODES distinct codes, each COUPON_CODE."""
    if len(codes) > MAX_COUPON_CODES:
        violations.add(path, f"must hold at most {MAX_COUPON_CODES} codes")
    seen: set[str] = set()
    for i, code in enumerate(codes[:MAX_COUPON_CODES]):
        if not COUPON_CODE.fullmatch(code):
            violations.add(f"{path}[{i}]", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -")
        elif code in seen:
            violations.add(f"{path}[{i}]", "appears twice in the order")
        seen.add(code)


def _amount(value: int, violations: Violations, path: str) -> None:
    if not 0 <= value <= MAX_AMOUNT:
        violations.add(path, f"must be between 0 and {MAX_AMOUNT}")


def validate_order(order: OrderInput, now: dt.datetime) -> None:
    v, p = Violations(), "order"
    checks.natural_id(order.order_id, v, f"{p}.order_id")
    checks.natural_id(order.member_id, v, f"{p}.member_id")
    checks.past_time(order.paid_time, now, v, f"{p}.paid_time")
    _amount(order.amount_minor, v, f"{p}.amount_minor")
    checks.text(order.store, MAX_TEXT, v, f"{p}.store")
    checks.text(order.payment_method, MAX_PAYMENT_METHOD, v, f"{p}.payment_method")
    if not 1 <= len(order.lines) <= MAX_LINES:
        v.add(f"{p}.lines", f"must hold 1-{MAX_LINES} lines")
    seen: set[str] = set()
    for i, line in enumerate(order.lines[:MAX_LINES]):
        lp = f"{p}.lines[{i}]"
        if not 1 <= len(line.line_id) <= MAX_TEXT:
            v.add(f"{lp}.line_id", f"must be 1-{MAX_TEXT} characters")
        elif line.line_id in seen:
            v.add(f"{lp}.line_id", "appears twice in the order")
        seen.add(line.line_id)
        for name in ("sku", "category", "brand"):
            checks.text(getattr(line, name), MAX_TEXT, v, f"{lp}.{name}")
        if not 1 <= line.quantity <= MAX_QUANTITY:
            v.add(f"{lp}.quantity", f"must be between 1 and {MAX_QUANTITY}")
        _amount(line.unit_price_minor, v, f"{lp}.unit_price_minor")
    validate_coupon_codes(order.coupon_codes, v, f"{p}.coupon_codes")
    v.raise_if_any()


def validate_refund(refund: RefundInput, now: dt.datetime) -> None:
    """What can be checked without the order: shape, ids, amounts."""
    v, p = Violations(), "refund"
    checks.natural_id(refund.refund_id, v, f"{p}.refund_id")
    checks.natural_id(refund.order_id, v, f"{p}.order_id")
    checks.past_time(refund.refund_time, now, v, f"{p}.refund_time")
    _amount(refund.amount_minor, v, f"{p}.amount_minor")
    if len(refund.lines) > MAX_LINES:
        v.add(f"{p}.lines", f"must hold at most {MAX_LINES} lines")
    seen: set[str] = set()
    for i, line in enumerate(refund.lines[:MAX_LINES]):
        if line.line_id in seen:
            v.add(f"{p}.lines[{i}].line_id", "appears twice in the refund")
        seen.add(line.line_id)
        if not 1 <= line.quantity <= MAX_QUANTITY:
            v.add(f"{p}.lines[{i}].quantity", f"must be between 1 and {MAX_QUANTITY}")
    v.raise_if_any()


def plan_refund(refund: RefundInput, order: OrderState) -> tuple[tuple[RefundLine, ...], int]:
    """The lines and amount this refund takes off `order`; refuses to refund more than is left."""
    assert refund.refund_time is not None
    v = Violations()
    if refund.refund_time < order.paid_time:
        v.add("refund.refund_time", "must not be before the order was paid")
    left = {line_id: order.bought[line_id] - order.refunded.get(line_id, 0) for line_id in order.bought}
    if refund.lines:
        lines = refund.lines
        for i, line in enumerate(lines):
            if line.line_id not in left:
                v.add(f"refund.lines[{i}].line_id", f"order {order.order_id} has no line {line.line_id!r}")
            elif line.quantity > left[line.line_id]:
                v.add(f"refund.lines[{i}].quantity", f"only {left[line.line_id]} left to refund on this line")
    else:
        lines = tuple(RefundLine(line_id, quantity) for line_id, quantity in sorted(left.items()) if quantity)
    amount_left = order.amount_minor - order.refunded_amount_minor
    amount = refund.amount_minor if refund.lines or refund.amount_minor else amount_left
    if amount > amount_left:
        v.add("refund.amount_minor", f"only {amount_left} left to refund on order {order.order_id}")
    if not lines and not amount:
        v.add("refund", f"order {order.order_id} is already refunded in full")
    v.raise_if_any()
    return lines, amount


def validate_events(events: list[BehaviorEvent], now: dt.datetime) -> None:
    v = Violations()
    if not 1 <= len(events) <= MAX_EVENTS:
        raise InvalidArgument.field("events", f"must hold 1-{MAX_EVENTS} events")
    kinds = {k.value for k in EventKind if k != EventKind.UNSPECIFIED}
    for i, event in enumerate(events):
        p = f"events[{i}]"
        checks.natural_id(event.event_id, v, f"{p}.event_id")
        checks.natural_id(event.member_id, v, f"{p}.member_id")
        if event.kind not in kinds:
            v.add(f"{p}.kind", f"must be one of {', '.join(EventKind(k).name for k in sorted(kinds))}")
        checks.past_time(event.occur_time, now, v, f"{p}.occur_time")
        for name in ("sku", "category", "brand", "channel"):
            checks.text(getattr(event, name), MAX_TEXT, v, f"{p}.{name}")
        checks.text(event.query, MAX_QUERY, v, f"{p}.query")
    v.raise_if_any()


def order_payload(order: OrderInput, member_order_number: int) -> dict[str, Any]:
    """The feed entry of an order; `member_order_number` is 1 for the member's first order. The
    coupon codes only when there are any (an entry without the key has none)."""
    payload: dict[str, Any] = {
        "order_id": order.order_id,
        "member_order_number": member_order_number,
        "member_id": order.member_id,
        "paid_time": order.paid_time.isoformat() if order.paid_time else None,
        "amount_minor": order.amount_minor,
        "store": order.store,
        "payment_method": order.payment_method,
        "lines": [dataclasses.asdict(line) for line in order.lines],
    }
    if order.coupon_codes:
        payload["coupon_codes"] = list(order.coupon_codes)
    return payload


def refund_payload(refund: Refund, order: OrderState) -> dict[str, Any]:
    """The feed entry of a refund, with where the order stands after it (`order` as before it), so
    a consumer can take back its share of what the order earned without reading the order."""
    refunded_amount = order.refunded_amount_minor + refund.amount_minor
    returned = dict(order.refunded)
    for line in refund.lines:
        returned[line.line_id] = returned.get(line.line_id, 0) + line.quantity
    all_returned = all(returned.get(line_id, 0) >= q for line_id, q in order.bought.items())
    return {
        "refund_id": refund.refund_id,
        "order_id": refund.order_id,
        "member_id": refund.member_id,
        "refund_time": refund.refund_time.isoformat(),
        "amount_minor": refund.amount_minor,
        "lines": [dataclasses.asdict(line) for line in refund.lines],
        "order_amount_minor": order.amount_minor,
        "order_refunded_amount_minor": refunded_amount,
        # An order of some amount is refunded in full when its amount is (as the tag rules count
        # orders); one of no amount, when every item came back.
        "order_refunded_in_full": (
            refunded_amount >= order.amount_minor if order.amount_minor > 0 else all_returned
        ),
    }


def _earliest_times(events: Sequence[BehaviorEvent], now: dt.datetime) -> dict[str, dt.datetime]:
    """Each member's earliest event time: what the tag changes their refresh makes are dated by
    (the earliest, as refresh_store.queue_refresh merges them: history never becomes news)."""
    earliest: dict[str, dt.datetime] = {}
    for event in events:
        time = event.occur_time or now
        earliest[event.member_id] = min(earliest.get(event.member_id, time), time)
    return earliest


class Facts:
    def __init__(self, db: Database, realtime: RealTimeTags) -> None:
        self._db = db
        self._realtime = realtime

    async def record_order(self, tenant_id: str, order: OrderInput, now: dt.datetime) -> Order:
        validate_order(order, now)
        digest = order_digest(order)
        async with self._db.transaction(tenant_id) as conn:
            number = await order_store.insert_order(conn, tenant_id, order, digest)
            if number is not None:
                await feed_store.append_feed(
                    conn,
                    tenant_id,
                    FeedKind.ORDER_RECORDED,
                    order.member_id,
                    order.order_id,
                    order_payload(order, number),
                )
                await refresh_store.queue_refresh(
                    conn, tenant_id, [order.member_id], input_bits(Input.ORDERS), order.paid_time or now
                )
                recorded = True
            elif await order_store.order_hash(conn, order.order_id) != digest:
                raise AlreadyExists(f"orders/{order.order_id} was recorded before with different content")
            else:
                recorded = False
            stored = await order_store.get_order(conn, order.order_id)
        assert stored is not None
        if recorded:
            await self._realtime.refreshed(tenant_id, [order.member_id], Input.ORDERS, now)
        return stored

    async def record_refund(self, tenant_id: str, refund: RefundInput, now: dt.datetime) -> Refund:
        validate_refund(refund, now)
        assert refund.refund_time is not None
        digest = content_hash(refund)
        async with self._db.transaction(tenant_id) as conn:
            # Locking the order serialises refunds of one order, so "what is left" cannot race.
            order = await order_store.lock_order_state(conn, refund.order_id)
            if order is None:
                raise FailedPrecondition(
                    f"refund.order_id: orders/{refund.order_id} has not been recorded; "
                    "record an order before its refunds"
                )
            previous = await order_store.refund_hash(conn, refund.refund_id)
            if previous is not None:
                if previous != digest:
                    raise AlreadyExists(
                        f"refunds/{refund.refund_id} was recorded before with different content"
                    )
                stored = await order_store.get_refund(conn, refund.refund_id)
                assert stored is not None
                return stored
            lines, amount = plan_refund(refund, order)
            recorded = Refund(
                refund.refund_id, order.order_id, order.member_id, refund.refund_time, amount, lines
            )
            await order_store.insert_refund(conn, tenant_id, recorded, digest)
            await feed_store.append_feed(
                conn,
                tenant_id,
                FeedKind.REFUND_RECORDED,
                order.member_id,
                refund.refund_id,
                refund_payload(recorded, order),
            )
            await refresh_store.queue_refresh(
                conn, tenant_id, [order.member_id], input_bits(Input.ORDERS), refund.refund_time
            )
        await self._realtime.refreshed(tenant_id, [order.member_id], Input.ORDERS, now)
        return recorded

    async def record_events(
        self, tenant_id: str, events: list[BehaviorEvent], now: dt.datetime
    ) -> tuple[int, int]:
        """Returns (recorded, duplicates)."""
        validate_events(events, now)
        first_of_id: dict[str, BehaviorEvent] = {}
        for event in events:
            first_of_id.setdefault(event.event_id, event)
        unique = list(first_of_id.values())
        async with self._db.transaction(tenant_id) as conn:
            missing = await member_store.missing_members(conn, sorted({e.member_id for e in unique}))
            if missing:
                first = next(i for i, e in enumerate(events) if e.member_id in missing)
                raise InvalidArgument.field(
                    f"events[{first}].member_id",
                    f"unknown member(s) {', '.join(sorted(missing)[:5])}: upsert members before their events",
                )
            recorded = await event_store.insert_events(conn, tenant_id, unique)
            members = sorted({e.member_id for e in unique})
            if recorded:
                await refresh_store.queue_refresh(
                    conn, tenant_id, members, input_bits(Input.EVENTS), _earliest_times(unique, now)
                )
        if recorded:
            await self._realtime.refreshed(tenant_id, members, Input.EVENTS, now)
        return recorded, len(events) - recorded
