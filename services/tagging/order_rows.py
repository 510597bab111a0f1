"""An imported order straight from its wire message to its COPY rows, for the common case.

Converting each order to an OrderInput, validating it field by field and hashing its content
through a dict and json.dumps took most of an import batch's Python time (~35 µs an order).
`plain_rows` reads each field of the message once, checks it against RecordOrder's rules with
plain comparisons, and writes the content hash's canonical JSON directly; it answers None for
any order it cannot vouch for (a rule broken, a text JSON would escape), which then goes the full
way (fact_imports: conversion, `facts.validate_order`, `order_digest`), so errors are named as
they always were. What it accepts, the full way accepts with the same rows and the same digest
(tests/tagging/test_order_rows.py compares the two).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from runtime.checks import CLOCK_SKEW, EARLIEST, NATURAL_ID
from services.tagging.domain import OrderInput
from services.tagging.facts import (
    COUPON_CODE,
    MAX_AMOUNT,
    MAX_COUPON_CODES,
    MAX_LINES,
    MAX_PAYMENT_METHOD,
    MAX_QUANTITY,
    MAX_TEXT,
    order_payload,
)

# The payload's last key: the insert statement appends the number and the closing brace.
NUMBER_KEY = '"member_order_number":'
# Text json.dumps writes as it is (ensure_ascii escapes the rest, and quotes and backslashes).
_VERBATIM = re.compile(r'[^\x20-\x7e]|["\\]')
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROS = 1_000_000
_EARLIEST_MICROS = int((EARLIEST - _EPOCH).total_seconds()) * _MICROS

# (n, order_id, member_id, paid_time, amount_minor, store, payment_method, content digest, wire digest,
#  coupon codes (None for none, stored as NULL), feed payload but its member order number: see
#  payload_head)
OrderRow = tuple[int, str, str, dt.datetime, int, str, str, str, str, list[str] | None, str]
# (order_id, line_n, line_id, sku, category, brand, quantity, unit_price_minor)
LineRow = tuple[str, int, str, str, str, str, int, int]


def latest_micros(now: dt.datetime) -> int:
    """The latest paid time `checks.past_time` accepts at `now`, in microseconds since the epoch."""
    return (now + CLOCK_SKEW - _EPOCH) // dt.timedelta(microseconds=1)


def plain_rows(message: Any, n: int, wire_digest: str, latest: int) -> tuple[OrderRow, list[LineRow]] | None:
    """The order row and line rows of a valid order `message` (index `n` of its batch, paid at
    the latest at `latest`, see latest_micros); None when it must go the full way."""
    order_id = message.order_id
    member_id = message.member_id
    amount = message.amount_minor
    store = message.store
    method = message.payment_method
    lines = message.lines
    if (
        not NATURAL_ID.match(order_id)
        or not NATURAL_ID.match(member_id)
        or not 0 <= amount <= MAX_AMOUNT
        or len(store) > MAX_TEXT
        or len(method) > MAX_PAYMENT_METHOD
        or not 1 <= len(lines) <= MAX_LINES
        or not message.HasField("paid_time")
    ):
        return None
    paid = message.paid_time
    nanos = paid.nanos
    if not 0 <= nanos < 1_000_000_000:
        return None
    micros = paid.seconds * _MICROS + nanos // 1000
    if not _EARLIEST_MICROS <= micros <= latest:
        return None
    rows: list[LineRow] = []
    texts = [store, method]
    parts: list[str] = []
    seen: set[str] = set()
    for line_n, line in enumerate(lines):
        line_id, sku, category, brand = line.line_id, line.sku, line.category, line.brand
        quantity, price = line.quantity, line.unit_price_minor
        if (
            not 1 <= len(line_id) <= MAX_TEXT
            or line_id in seen
            or len(sku) > MAX_TEXT
            or len(category) > MAX_TEXT
            or len(brand) > MAX_TEXT
            or not 1 <= quantity <= MAX_QUANTITY
            or not 0 <= price <= MAX_AMOUNT
        ):
            return None
        seen.add(line_id)
        texts += (line_id, sku, category, brand)
        rows.append((order_id, line_n, line_id, sku, category, brand, quantity, price))
        parts.append(
            f'{{"brand":"{brand}","category":"{category}","line_id":"{line_id}","quantity":{quantity},'
            f'"sku":"{sku}","unit_price_minor":{price}}}'
        )
    if _VERBATIM.search("".join(texts)):
        return None
    codes: list[str] | None = None
    codes_json = ""
    if message.coupon_codes:
        codes = list(message.coupon_codes)
        if len(codes) > MAX_COUPON_CODES or len(set(codes)) < len(codes):
            return None
        if not all(COUPON_CODE.fullmatch(code) for code in codes):
            return None
        # COUPON_CODE holds nothing JSON escapes; the key sorts between amount_minor and lines.
        codes_json = '"coupon_codes":["' + '","'.join(codes) + '"],'
    paid_time = _EPOCH + dt.timedelta(microseconds=micros)
    lines_json = ",".join(parts)
    canonical = (
        f'{{"amount_minor":{amount},{codes_json}"lines":[{lines_json}],"member_id":"{member_id}",'
        f'"order_id":"{order_id}","paid_time":"{paid_time}","payment_method":"{method}",'
        f'"store":"{store}"}}'
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    # facts.order_payload's keys (jsonb keeps no order; the lines' are the digest's).
    payload = (
        f'{{"order_id":"{order_id}","member_id":"{member_id}","paid_time":"{paid_time.isoformat()}",'
        f'"amount_minor":{amount},"store":"{store}","payment_method":"{method}","lines":[{lines_json}],'
        f'{codes_json}"backfilled":true,{NUMBER_KEY}'
    )
    row = (n, order_id, member_id, paid_time, amount, store, method, digest, wire_digest, codes, payload)
    return row, rows


def payload_head(order: OrderInput) -> str:
    """An imported order's feed payload (facts.order_payload, marked backfilled) as JSON text up to
    its member order number, which the insert statement counts and closes the object with."""
    payload = order_payload(order, 0)
    del payload["member_order_number"]
    text = json.dumps({**payload, "backfilled": True}, separators=(",", ":"))
    return f"{text[:-1]},{NUMBER_KEY}"
