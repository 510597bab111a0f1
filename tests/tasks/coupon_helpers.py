"""Coupon templates and coupons over gRPC, for the coupon tests."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub


def stamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(at)
    return message


def template(**fields: Any) -> coupons_pb2.CouponTemplate:
    """A valid template (10.00 off orders from 50.00, valid 30 days from issue) with `fields` set."""
    values: dict[str, Any] = {
        "template_id": unique("ct"),
        "display_name": "10 off 50",
        "amount_off": coupons_pb2.AmountOff(amount_minor=1000),
        "threshold_minor": 5000,
        "valid_days": 30,
    }
    values.update(fields)
    return coupons_pb2.CouponTemplate(**values)


async def create(stub: TasksStub, metadata: Any = ACME, **fields: Any) -> coupons_pb2.CouponTemplate:
    request = tasks_service_pb2.CreateCouponTemplateRequest(template=template(**fields))
    return await stub.CreateCouponTemplate(request, metadata=metadata)


async def issue(
    stub: TasksStub,
    template_id: str,
    member_id: str,
    request_id: str | None = None,
    campaign: str = "",
    arm: str = "",
    metadata: Any = ACME,
) -> coupons_pb2.Coupon:
    request = tasks_service_pb2.IssueCouponRequest(
        template=f"couponTemplates/{template_id}",
        member_id=member_id,
        source=coupons_pb2.CouponSource(campaign=campaign, arm=arm),
        request_id=request_id or unique("iss"),
    )
    return await stub.IssueCoupon(request, metadata=metadata)


async def claim(
    stub: TasksStub, template_id: str, member_id: str, request_id: str | None = None, metadata: Any = ACME
) -> coupons_pb2.Coupon:
    request = tasks_service_pb2.ClaimCouponRequest(
        template=f"couponTemplates/{template_id}", member_id=member_id, request_id=request_id or unique("clm")
    )
    return await stub.ClaimCoupon(request, metadata=metadata)
