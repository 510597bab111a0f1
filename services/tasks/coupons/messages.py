"""Coupon templates and coupons between protobuf and the domain."""

from __future__ import annotations

import datetime as dt

from memberops.tasks.v1 import coupons_pb2

from runtime import checks
from runtime.errors import InvalidArgument, Violations
from services.tasks.coupons.coupon_store import ArmRow, CouponRow
from services.tasks.coupons.issuing import Source
from services.tasks.coupons.member_coupons import state_at
from services.tasks.coupons.templates import (
    AUDIENCE_ID,
    Definition,
    Discount,
    DiscountKind,
    Template,
)
from services.tasks.messages import stamp

_AUDIENCE_PREFIX = "audiences/"


def _moment(message: coupons_pb2.CouponTemplate, name: str, v: Violations) -> dt.datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    path = f"template.{name}"
    value = checks.timestamp(getattr(message, name), v, path)
    if value is not None and value < checks.EARLIEST:
        v.add(path, f"must not be before {checks.EARLIEST.date()}")
        return None
    return value


def _discount(message: coupons_pb2.CouponTemplate) -> Discount | None:
    which = message.WhichOneof("discount")
    if which == "amount_off":
        return Discount(DiscountKind.AMOUNT_OFF, amount_minor=message.amount_off.amount_minor)
    if which == "percent_off":
        off = message.percent_off
        return Discount(
            DiscountKind.PERCENT_OFF, percent=off.percent, max_discount_minor=off.max_discount_minor
        )
    if which == "free_shipping":
        return Discount(DiscountKind.FREE_SHIPPING)
    return None


def definition_from_proto(message: coupons_pb2.CouponTemplate, present: bool) -> Definition:
    """The definition a request's `template` asks for (INVALID_ARGUMENT naming `template.<field>`);
    output-only fields are ignored. The domain validates the rest (templates.validate)."""
    if not present:
        raise InvalidArgument.field("template", "is required")
    v = Violations()
    valid_from = _moment(message, "valid_from", v)
    valid_until = _moment(message, "valid_until", v)
    audience = message.claim_audience
    audience_id = audience.removeprefix(_AUDIENCE_PREFIX)
    if audience and (not audience.startswith(_AUDIENCE_PREFIX) or not AUDIENCE_ID.match(audience_id)):
        v.add("template.claim_audience", "must be a resource name of the form audiences/{audience_id}")
    v.raise_if_any()
    tags = message.tag_thresholds
    return Definition(
        template_id=message.template_id,
        display_name=message.display_name,
        discount=_discount(message),
        threshold_minor=message.threshold_minor,
        tag_dimension=tags.dimension,
        tag_thresholds=tuple(sorted(tags.thresholds.items())),
        valid_from=valid_from,
        valid_until=valid_until,
        valid_days=message.valid_days,
        total_stock=message.total_stock,
        per_member_limit=message.per_member_limit or 1,
        categories=tuple(message.categories),
        skus=tuple(message.skus),
        claimable=message.claimable,
        claim_audience_id=audience_id,
    )


def _set_discount(message: coupons_pb2.CouponTemplate | coupons_pb2.Coupon, d: Discount) -> None:
    if d.kind is DiscountKind.AMOUNT_OFF:
        message.amount_off.amount_minor = d.amount_minor
    elif d.kind is DiscountKind.PERCENT_OFF:
        message.percent_off.percent = d.percent
        message.percent_off.max_discount_minor = d.max_discount_minor
    else:
        message.free_shipping.SetInParent()


def template_to_proto(t: Template) -> coupons_pb2.CouponTemplate:
    d = t.definition
    stock_left = t.stock_left
    message = coupons_pb2.CouponTemplate(
        name=f"couponTemplates/{d.template_id}",
        template_id=d.template_id,
        display_name=d.display_name,
        threshold_minor=d.threshold_minor,
        valid_days=d.valid_days,
        total_stock=d.total_stock,
        per_member_limit=d.per_member_limit,
        categories=d.categories,
        skus=d.skus,
        claimable=d.claimable,
        claim_audience=f"{_AUDIENCE_PREFIX}{d.claim_audience_id}" if d.claim_audience_id else "",
        state=int(t.state),  # type: ignore[arg-type]
        version=t.version,
        issued=t.issued,
        stock_left=stock_left or 0,
        unlimited=stock_left is None,
        used=t.used,
        create_time=stamp(t.create_time),
        update_time=stamp(t.update_time),
    )
    assert d.discount is not None
    _set_discount(message, d.discount)
    if d.tag_dimension:
        message.tag_thresholds.dimension = d.tag_dimension
        message.tag_thresholds.thresholds.update(dict(d.tag_thresholds))
    if d.valid_from is not None:
        message.valid_from.CopyFrom(stamp(d.valid_from))
    if d.valid_until is not None:
        message.valid_until.CopyFrom(stamp(d.valid_until))
    return message


def source_from_proto(message: coupons_pb2.CouponSource) -> Source:
    return Source(campaign=message.campaign, arm=message.arm)


def coupon_to_proto(c: CouponRow, now: dt.datetime) -> coupons_pb2.Coupon:
    message = coupons_pb2.Coupon(
        name=f"coupons/{c.code}",
        code=c.code,
        template_id=c.template_id,
        template_version=c.template_version,
        member_id=c.member_id,
        state=int(state_at(c, now)),  # type: ignore[arg-type]
        threshold_minor=c.threshold_minor,
        categories=c.categories,
        skus=c.skus,
        valid_from=stamp(c.valid_from),
        valid_until=stamp(c.valid_until),
        source=coupons_pb2.CouponSource(campaign=c.source_campaign, arm=c.source_arm),
        order_id=c.order_id or "",
        request_id=c.request_id,
        issue_time=stamp(c.issue_time),
    )
    kind = DiscountKind(c.discount_kind)
    _set_discount(message, Discount(kind, c.amount_minor, c.percent, c.max_discount_minor))
    if c.use_time is not None:
        message.use_time.CopyFrom(stamp(c.use_time))
    return message


def arm_to_proto(arm: ArmRow) -> coupons_pb2.CouponArmStats:
    return coupons_pb2.CouponArmStats(
        arm=arm.arm, issued=arm.issued, used=arm.used, order_amount_minor=arm.order_amount_minor
    )
