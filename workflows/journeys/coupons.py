"""Journeys and the tasks service's coupons: the IssueCoupon request an issue_coupon step makes, the
coupon as the run keeps it, and the fields a message shows of it.

A coupon's source is the journey (`campaign`, see `campaign`) and the member's report arm, so
GetCouponStats answers the report's coupons per arm (see report_coupons.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from zoneinfo import ZoneInfo

import grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from workflows.journeys.payloads import IssueCouponRequest, IssuedCoupon

# Refusals an issued coupon is never going to get past, answered rather than retried: no stock
# (RESOURCE_EXHAUSTED), the member at the template's limit or a retired template
# (FAILED_PRECONDITION), a template that does not exist (NOT_FOUND, deleted in tasks after the
# journey was activated).
REFUSALS = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
)
# The tasks service's request ids hold at most this many characters.
MAX_REQUEST_ID = 128


def campaign(journey_key: str) -> str:
    """The coupons' campaign, as GetCouponStats is asked for it."""
    return f"journeys/{journey_key}"


def request_id(tenant_id: str, journey_key: str, enrolment_id: int, step_id: str) -> str:
    """One per tenant, journey, enrolment and step: readable when it fits, a hash of the four
    otherwise (a long key and step id would not)."""
    readable = f"journey:{journey_key}:{enrolment_id}:{step_id}"
    if len(readable) <= MAX_REQUEST_ID - len(tenant_id) - 1:
        return f"{tenant_id}/{readable}"
    digest = hashlib.sha256("\x1f".join((tenant_id, journey_key, str(enrolment_id), step_id)).encode())
    return f"journey:{digest.hexdigest()}"


def issue_request(request: IssueCouponRequest) -> tasks_service_pb2.IssueCouponRequest:
    return tasks_service_pb2.IssueCouponRequest(
        template=f"couponTemplates/{request.issue_coupon.template}",
        member_id=request.member_id,
        source=coupons_pb2.CouponSource(campaign=campaign(request.journey_key), arm=request.arm),
        request_id=request_id(request.tenant_id, request.journey_key, request.enrolment_id, request.step_id),
    )


def major(minor: int) -> str:
    """Minor units as a message shows them: `50` for 5000, `12.50` for 1250."""
    whole, cents = divmod(minor, 100)
    return str(whole) if not cents else f"{whole}.{cents:02d}"


def discount(coupon: coupons_pb2.Coupon) -> str:
    kind = coupon.WhichOneof("discount")
    if kind == "amount_off":
        return major(coupon.amount_off.amount_minor)
    if kind == "percent_off":
        return f"{coupon.percent_off.percent}%"
    if kind == "free_shipping":
        return "free shipping"
    return ""


def issued(coupon: coupons_pb2.Coupon) -> IssuedCoupon:
    valid_until = coupon.valid_until.ToDatetime(tzinfo=dt.UTC) if coupon.HasField("valid_until") else None
    return IssuedCoupon(
        code=coupon.code,
        threshold_minor=coupon.threshold_minor,
        discount=discount(coupon),
        valid_until=valid_until,
    )


def field_values(coupon: IssuedCoupon, tz: ZoneInfo) -> dict[str, str]:
    """The coupon fields of a message (definition.COUPON_FIELDS): the threshold in major units,
    the last day of validity in the member's zone (a coupon valid until midnight is valid through
    the day before)."""
    until = ""
    if coupon.valid_until is not None:
        last = coupon.valid_until.astimezone(tz) - dt.timedelta(microseconds=1)
        until = last.date().isoformat()
    return {
        "coupon_code": coupon.code,
        "coupon_threshold": major(coupon.threshold_minor),
        "coupon_discount": coupon.discount,
        "coupon_valid_until": until,
    }
