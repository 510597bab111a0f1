"""Coupon templates: what a coupon is worth, how long it is valid, how many there are and who may
claim one, validated and versioned (free of SQL and gRPC).

A template is plain data (`Definition`), stored as JSON per version like a task definition. The
template id is the natural key: creating the same content again returns it, other content is
ALREADY_EXISTS. An update stores a new version unless the content is unchanged (a retried update
is harmless); the discount kind never changes and the stock never drops below what was issued.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgument, Violations

TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
AUDIENCE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
# Tagging's rule for a dimension and the length of a value (services/tagging/catalog.py).
DIMENSION = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_TAG_VALUE = 64
MAX_THRESHOLDS = 100
MAX_DISPLAY_NAME = 128
MAX_AMOUNT = 10**10
MAX_THRESHOLD = 10**12
MAX_VALID_DAYS = 3650
MAX_STOCK = 100_000_000
MAX_PER_MEMBER = 1000
MAX_FILTER_VALUES = 100
MAX_FILTER_TEXT = 64


class DiscountKind(enum.IntEnum):
    AMOUNT_OFF = 1
    PERCENT_OFF = 2
    FREE_SHIPPING = 3


class State(enum.IntEnum):
    """The numbers of memberops.tasks.v1.CouponTemplateState."""

    ACTIVE = 1
    RETIRED = 2


@dataclass(frozen=True)
class Discount:
    kind: DiscountKind
    # AMOUNT_OFF: minor units off.
    amount_minor: int = 0
    # PERCENT_OFF: 1-99, and the cap in minor units (0: none).
    percent: int = 0
    max_discount_minor: int = 0


@dataclass(frozen=True)
class Definition:
    template_id: str
    display_name: str
    # None: the request named none (a violation).
    discount: Discount | None
    threshold_minor: int
    # The threshold by the member's tag of `tag_dimension` at issue (value -> threshold).
    tag_dimension: str = ""
    tag_thresholds: tuple[tuple[str, int], ...] = ()
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    valid_days: int = 0
    # 0: unlimited.
    total_stock: int = 0
    # The effective limit (a request's 0 is read as 1).
    per_member_limit: int = 1
    categories: tuple[str, ...] = ()
    skus: tuple[str, ...] = ()
    claimable: bool = False
    claim_audience_id: str = ""

    def threshold_for(self, tag_value: str | None) -> int:
        """The threshold of a member holding `tag_value` of the tag dimension (None: no value)."""
        if tag_value is not None:
            for value, threshold in self.tag_thresholds:
                if value == tag_value:
                    return threshold
        return self.threshold_minor

    def validity(self, issue_time: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """[valid_from, valid_until) of a coupon issued at `issue_time`."""
        if self.valid_days:
            return issue_time, issue_time + dt.timedelta(days=self.valid_days)
        assert self.valid_until is not None
        return self.valid_from or issue_time, self.valid_until


@dataclass(frozen=True)
class Template:
    definition: Definition
    state: State
    version: int
    issued: int
    used: int
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def template_id(self) -> str:
        return self.definition.template_id

    @property
    def stock_left(self) -> int | None:
        """None: unlimited."""
        total = self.definition.total_stock
        return None if total == 0 else max(total - self.issued, 0)


# --- validation ----------------------------------------------------------------------------------


def validate(d: Definition, v: Violations | None = None) -> None:
    """Every violation of the definition, named by its path in the request (`template.<field>`)."""
    v = v or Violations()
    if not TEMPLATE_ID.match(d.template_id):
        v.add("template.template_id", "must be 1-63 characters: a lower-case letter, then a-z, 0-9, _ or -")
    if len(d.display_name) > MAX_DISPLAY_NAME:
        v.add("template.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    _discount(d.discount, v)
    if not 0 <= d.threshold_minor <= MAX_THRESHOLD:
        v.add("template.threshold_minor", f"must be 0-{MAX_THRESHOLD:,}")
    _tag_thresholds(d, v)
    _validity(d, v)
    if not 0 <= d.total_stock <= MAX_STOCK:
        v.add("template.total_stock", f"must be 0 (unlimited) to {MAX_STOCK:,}")
    if not 1 <= d.per_member_limit <= MAX_PER_MEMBER:
        v.add("template.per_member_limit", f"must be 1-{MAX_PER_MEMBER} (0 means 1)")
    _filter_values(d.categories, "template.categories", v)
    _filter_values(d.skus, "template.skus", v)
    if d.claim_audience_id and not AUDIENCE_ID.match(d.claim_audience_id):
        v.add("template.claim_audience", "must be a resource name of the form audiences/{audience_id}")
    elif d.claim_audience_id and not d.claimable:
        v.add("template.claim_audience", "is only for claimable templates")
    v.raise_if_any()


def _discount(discount: Discount | None, v: Violations) -> None:
    if discount is None:
        v.add("template.discount", "needs exactly one of amount_off, percent_off or free_shipping")
    elif discount.kind is DiscountKind.AMOUNT_OFF:
        if not 1 <= discount.amount_minor <= MAX_AMOUNT:
            v.add("template.amount_off.amount_minor", f"must be 1-{MAX_AMOUNT:,}")
    elif discount.kind is DiscountKind.PERCENT_OFF:
        if not 1 <= discount.percent <= 99:
            v.add("template.percent_off.percent", "must be 1-99")
        if not 0 <= discount.max_discount_minor <= MAX_AMOUNT:
            v.add("template.percent_off.max_discount_minor", f"must be 0 (no cap) to {MAX_AMOUNT:,}")


def _tag_thresholds(d: Definition, v: Violations) -> None:
    if not d.tag_dimension and not d.tag_thresholds:
        return
    if not DIMENSION.match(d.tag_dimension):
        v.add("template.tag_thresholds.dimension", "must be a dimension of tagging's catalog")
    if not 1 <= len(d.tag_thresholds) <= MAX_THRESHOLDS:
        v.add("template.tag_thresholds.thresholds", f"must have 1-{MAX_THRESHOLDS} entries")
    for value, threshold in d.tag_thresholds:
        path = f"template.tag_thresholds.thresholds[{json.dumps(value)}]"
        if not value or len(value) > MAX_TAG_VALUE or not value.isprintable():
            v.add(path, f"a tag value must be 1-{MAX_TAG_VALUE} printable characters")
        elif not 0 <= threshold <= MAX_THRESHOLD:
            v.add(path, f"must be 0-{MAX_THRESHOLD:,}")


def _validity(d: Definition, v: Violations) -> None:
    if (d.valid_until is None) == (d.valid_days == 0):
        v.add("template.valid_until", "needs exactly one of valid_until and valid_days")
        return
    if d.valid_days:
        if not 1 <= d.valid_days <= MAX_VALID_DAYS:
            v.add("template.valid_days", f"must be 1-{MAX_VALID_DAYS}")
        if d.valid_from is not None:
            v.add("template.valid_from", "is only for a fixed window (valid_until)")
    elif d.valid_from is not None and d.valid_until is not None and d.valid_from >= d.valid_until:
        v.add("template.valid_until", "must be after valid_from")


def _filter_values(values: tuple[str, ...], path: str, v: Violations) -> None:
    if len(values) > MAX_FILTER_VALUES:
        v.add(path, f"must have at most {MAX_FILTER_VALUES} values")
        return
    for i, value in enumerate(values):
        if not value or len(value) > MAX_FILTER_TEXT or not value.isprintable():
            v.add(f"{path}[{i}]", f"must be 1-{MAX_FILTER_TEXT} printable characters")
    if len(set(values)) != len(values):
        v.add(path, "must not repeat a value")


# --- stored form ---------------------------------------------------------------------------------


def to_body(d: Definition) -> dict[str, Any]:
    """The JSON a version stores: plain values only, so it reads back as the same definition."""
    assert d.discount is not None
    return {
        "display_name": d.display_name,
        "discount": {
            "kind": int(d.discount.kind),
            "amount_minor": d.discount.amount_minor,
            "percent": d.discount.percent,
            "max_discount_minor": d.discount.max_discount_minor,
        },
        "threshold_minor": d.threshold_minor,
        "tag_dimension": d.tag_dimension,
        "tag_thresholds": sorted([value, t] for value, t in d.tag_thresholds),
        "valid_from": None if d.valid_from is None else d.valid_from.isoformat(),
        "valid_until": None if d.valid_until is None else d.valid_until.isoformat(),
        "valid_days": d.valid_days,
        "total_stock": d.total_stock,
        "per_member_limit": d.per_member_limit,
        "categories": list(d.categories),
        "skus": list(d.skus),
        "claimable": d.claimable,
        "claim_audience_id": d.claim_audience_id,
    }


def from_body(template_id: str, body: Mapping[str, Any]) -> Definition:
    discount = body["discount"]

    def moment(value: str | None) -> dt.datetime | None:
        return None if value is None else dt.datetime.fromisoformat(value)

    return Definition(
        template_id=template_id,
        display_name=body["display_name"],
        discount=Discount(
            kind=DiscountKind(discount["kind"]),
            amount_minor=discount["amount_minor"],
            percent=discount["percent"],
            max_discount_minor=discount["max_discount_minor"],
        ),
        threshold_minor=body["threshold_minor"],
        tag_dimension=body["tag_dimension"],
        tag_thresholds=tuple((value, t) for value, t in body["tag_thresholds"]),
        valid_from=moment(body["valid_from"]),
        valid_until=moment(body["valid_until"]),
        valid_days=body["valid_days"],
        total_stock=body["total_stock"],
        per_member_limit=body["per_member_limit"],
        categories=tuple(body["categories"]),
        skus=tuple(body["skus"]),
        claimable=body["claimable"],
        claim_audience_id=body["claim_audience_id"],
    )


def content_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def template_id_from_name(name: str, path: str) -> str:
    template_id = name.removeprefix("couponTemplates/")
    if not name.startswith("couponTemplates/") or not TEMPLATE_ID.match(template_id):
        raise InvalidArgument.field(path, "must be a resource name of the form couponTemplates/{template_id}")
    return template_id
