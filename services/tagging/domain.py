"""The tagging service's domain types: members and their facts, independent of wire and storage."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class Gender(enum.IntEnum):
    UNSPECIFIED = 0
    FEMALE = 1
    MALE = 2
    OTHER = 3


class CityTier(enum.IntEnum):
    UNSPECIFIED = 0
    TIER_1 = 1
    NEW_TIER_1 = 2
    TIER_2 = 3
    TIER_3 = 4
    TIER_4 = 5
    TIER_5 = 6


class Channel(enum.IntEnum):
    UNSPECIFIED = 0
    SMS = 1
    EMAIL = 2
    APP_PUSH = 3
    WECOM = 4


class EventKind(enum.IntEnum):
    UNSPECIFIED = 0
    VIEW = 1
    CART = 2
    FAVOURITE = 3
    SEARCH = 4
    CLICK = 5
    SHARE = 6
    SIGN_IN = 7


class FeedKind(enum.IntEnum):
    UNSPECIFIED = 0
    MEMBER_CHANGED = 1
    ORDER_RECORDED = 2
    REFUND_RECORDED = 3
    EVENT_RECORDED = 4
    TAG_CHANGED = 5


@dataclass(frozen=True)
class Profile:
    gender: int = Gender.UNSPECIFIED
    birthday: dt.date | None = None
    city: str = ""
    city_tier: int = CityTier.UNSPECIFIED
    register_time: dt.datetime | None = None
    register_channel: str = ""
    nickname: str = ""
    level: str = ""


@dataclass(frozen=True)
class Contact:
    phone: str = ""
    email: str = ""
    preferred_channel: int = Channel.UNSPECIFIED
    opted_out_channels: tuple[int, ...] = ()
    time_zone: str = ""
    # The member as a WeCom external contact, and the staff userid owning the relationship.
    wecom_external_userid: str = ""
    wecom_staff_userid: str = ""


@dataclass(frozen=True)
class MemberInput:
    """What a caller sends to create or replace a member."""

    member_id: str
    profile: Profile = field(default_factory=Profile)
    attributes: dict[str, Any] = field(default_factory=dict)
    contact: Contact = field(default_factory=Contact)


@dataclass(frozen=True)
class Member:
    member_id: str
    profile: Profile
    attributes: dict[str, Any]
    contact: Contact
    revision: int
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True)
class OrderLine:
    line_id: str
    sku: str = ""
    category: str = ""
    brand: str = ""
    quantity: int = 1
    unit_price_minor: int = 0


@dataclass(frozen=True)
class OrderInput:
    order_id: str
    member_id: str
    paid_time: dt.datetime | None
    amount_minor: int
    lines: tuple[OrderLine, ...]
    store: str = ""
    payment_method: str = ""
    # Coupon codes used on the order, as the shop reported them (facts.order_digest leaves them
    # out of the content when empty, so an order recorded before they existed retries as itself).
    coupon_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Order:
    order_id: str
    member_id: str
    paid_time: dt.datetime
    amount_minor: int
    lines: tuple[OrderLine, ...]
    store: str
    payment_method: str
    refunded_amount_minor: int
    record_time: dt.datetime
    coupon_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefundLine:
    line_id: str
    quantity: int


@dataclass(frozen=True)
class RefundInput:
    refund_id: str
    order_id: str
    refund_time: dt.datetime | None
    amount_minor: int
    # Empty: the whole order, every unit not refunded before.
    lines: tuple[RefundLine, ...] = ()


@dataclass(frozen=True)
class Refund:
    refund_id: str
    order_id: str
    member_id: str
    refund_time: dt.datetime
    amount_minor: int
    lines: tuple[RefundLine, ...]


@dataclass(frozen=True)
class OrderState:
    """An order as a refund sees it: what was bought and what is already refunded, per line."""

    order_id: str
    member_id: str
    paid_time: dt.datetime
    amount_minor: int
    refunded_amount_minor: int
    bought: dict[str, int]
    refunded: dict[str, int]


@dataclass(frozen=True)
class BehaviorEvent:
    event_id: str
    member_id: str
    kind: int
    occur_time: dt.datetime | None
    sku: str = ""
    category: str = ""
    brand: str = ""
    query: str = ""
    channel: str = ""


@dataclass(frozen=True)
class FeedEntry:
    cursor: str
    kind: FeedKind
    member_id: str
    subject_id: str
    payload: dict[str, Any]
    create_time: dt.datetime
    # The W3C trace context of the traced call that wrote it (runtime/tracing.py), else "".
    traceparent: str = ""
