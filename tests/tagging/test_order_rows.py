"""order_rows.plain_rows, the import's straight way from a message to COPY rows, against the full
way (conversion, RecordOrder's validation, content_hash): whatever it accepts, the full way accepts
with the same rows and digest; ordinary orders, boundaries included, take it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from memberops.tagging.v1 import facts_pb2

from runtime.checks import CLOCK_SKEW, EARLIEST
from runtime.errors import InvalidArgument
from services.tagging.api import order_from_proto
from services.tagging.fact_imports import rows_of, wire_digest
from services.tagging.facts import MAX_AMOUNT, MAX_LINES, MAX_QUANTITY, validate_order
from services.tagging.order_rows import latest_micros, plain_rows
from tests.tagging.facts_helpers import an_order

NOW = dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC)


def at(moment: dt.datetime, nanos: int | None = None) -> facts_pb2.Order:
    order = an_order("m-1", "o-1")
    order.paid_time.FromDatetime(moment)
    if nanos is not None:
        order.paid_time.nanos = nanos
    return order


def with_line(**fields: Any) -> facts_pb2.Order:
    order = an_order("m-1", "o-1")
    for name, value in fields.items():
        setattr(order.lines[0], name, value)
    return order


def many_lines(count: int) -> facts_pb2.Order:
    lines = [facts_pb2.OrderLine(line_id=str(i), quantity=1) for i in range(count)]
    return an_order("m-1", "o-1", lines=lines)


# Orders the straight way takes: each is valid.
PLAIN = {
    "ordinary": an_order("m-1", "o-1"),
    "empty texts": an_order("m-1", "o-1", store="", payment_method=""),
    "longest texts": an_order("m-1", "o-" + "x" * 62, store="s" * 64, payment_method="p" * 32),
    "earliest": at(EARLIEST),
    "latest": at(NOW + CLOCK_SKEW),
    "nanoseconds": at(dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC), nanos=123_456_789),
    "whole second": at(dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC)),
    "largest": with_line(quantity=MAX_QUANTITY, unit_price_minor=MAX_AMOUNT),
    "zero price": with_line(unit_price_minor=0),
    "most lines": many_lines(MAX_LINES),
    "printable": with_line(sku="a/b <c> & 'd' ~ {e}"),
    "coupon codes": an_order("m-1", "o-1", coupon_codes=["SAVE-20", "x_1"]),
    "most coupon codes": an_order("m-1", "o-1", coupon_codes=[f"C{i}" for i in range(10)]),
    "longest coupon code": an_order("m-1", "o-1", coupon_codes=["c" * 64]),
}
# Orders it leaves to the full way: valid ones whose text JSON escapes, and invalid ones.
FULL_WAY = {
    "non-ASCII": an_order("m-1", "o-1", store="天猫"),
    "quote": with_line(sku='a"b'),
    "backslash": with_line(brand="a\\b"),
    "delete": with_line(category="a\x7f"),
    "tab": with_line(category="a\tb"),
    "bad order id": an_order("m-1", "o 1"),
    "bad member id": an_order("", "o-1"),
    "negative amount": an_order("m-1", "o-1", amount_minor=-1),
    "too large amount": an_order("m-1", "o-1", amount_minor=MAX_AMOUNT + 1),
    "long store": an_order("m-1", "o-1", store="s" * 65),
    "long payment method": an_order("m-1", "o-1", payment_method="p" * 33),
    "no lines": an_order("m-1", "o-1", lines=[]),
    "too many lines": many_lines(MAX_LINES + 1),
    "no paid time": an_order("m-1", "o-1", paid_time=None),
    "before the earliest": at(EARLIEST - dt.timedelta(microseconds=1)),
    "after the latest": at(NOW + CLOCK_SKEW + dt.timedelta(microseconds=1)),
    "bad nanos": at(dt.datetime(2025, 5, 6, tzinfo=dt.UTC), nanos=1_000_000_000),
    "line id empty": with_line(line_id=""),
    "line id twice": with_line(line_id="2"),
    "long sku": with_line(sku="k" * 65),
    "no quantity": with_line(quantity=0),
    "too large quantity": with_line(quantity=MAX_QUANTITY + 1),
    "negative price": with_line(unit_price_minor=-1),
    "empty coupon code": an_order("m-1", "o-1", coupon_codes=[""]),
    "long coupon code": an_order("m-1", "o-1", coupon_codes=["c" * 65]),
    "coupon code with a quote": an_order("m-1", "o-1", coupon_codes=['a"b']),
    "coupon code twice": an_order("m-1", "o-1", coupon_codes=["A", "B", "A"]),
    "too many coupon codes": an_order("m-1", "o-1", coupon_codes=[f"C{i}" for i in range(11)]),
}


def full_way(order: facts_pb2.Order, wire: str) -> tuple[Any, ...] | None:
    """The full way's rows (order row, line rows), or None when it rejects the order."""
    try:
        converted = order_from_proto(order)
        validate_order(converted, NOW)
    except InvalidArgument:
        return None
    rows = rows_of(3, converted, wire)
    assert rows.order is not None
    return readable(rows.order), rows.lines


def readable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """An order row with its payload text completed (as the insert does) and parsed."""
    return (*row[:-1], json.loads(row[-1] + "7}"))


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_orders_take_the_straight_way_to_the_same_rows(name: str) -> None:
    order = PLAIN[name]
    wire = wire_digest(order)
    plain = plain_rows(order, 3, wire, latest_micros(NOW))
    assert plain is not None
    assert (readable(plain[0]), plain[1]) == full_way(order, wire)
    payload = readable(plain[0])[-1]
    assert (payload["member_order_number"], payload["backfilled"]) == (7, True)


@pytest.mark.parametrize("name", sorted(FULL_WAY))
def test_other_orders_go_the_full_way(name: str) -> None:
    assert plain_rows(FULL_WAY[name], 3, "", latest_micros(NOW)) is None


def test_valid_orders_the_straight_way_leaves_are_valid_the_full_way() -> None:
    for name in ("non-ASCII", "quote", "backslash", "delete", "tab"):
        assert full_way(FULL_WAY[name], "") is not None, name
