"""CouponViolation rows as protobuf messages (ListCouponViolations)."""

from __future__ import annotations

from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from services.tasks.coupons.writeoff_store import ViolationRow


def violation_to_proto(row: ViolationRow) -> coupons_pb2.CouponViolation:
    message = coupons_pb2.CouponViolation(
        order_id=row.order_id,
        member_id=row.member_id,
        code=row.code,
        reason=row.reason,  # type: ignore[arg-type]
    )
    message.paid_time.FromDatetime(row.paid_time)
    message.create_time.FromDatetime(row.create_time)
    return message


def violations_response(
    rows: list[ViolationRow], token: str
) -> tasks_service_pb2.ListCouponViolationsResponse:
    return tasks_service_pb2.ListCouponViolationsResponse(
        violations=[violation_to_proto(r) for r in rows], next_page_token=token
    )
