"""The shipped journeys' coupon templates (shipped.SHIPPED_COUPON_TEMPLATES), created in the tasks
service for a tenant that lacks them, before any shipped journey can be activated (activation
checks that an issue_coupon step's template exists).

Idempotent by the template id, CreateCouponTemplate's natural key: the same content again returns
the template; a tenant that changed its own (UpdateCouponTemplate) gets ALREADY_EXISTS, and its
version is left as it is, as a tenant's own `win-back` audience is.
"""

from __future__ import annotations

import grpc
from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc

from runtime.peer_calls import bearer
from workflows.journeys.shipped import SHIPPED_COUPON_TEMPLATES


async def ensure_coupon_templates(channel: grpc.aio.Channel, token: str) -> tuple[str, ...]:
    """The template ids this call created or found as shipped (not those a tenant changed)."""
    stub = tasks_service_pb2_grpc.TasksServiceStub(channel)
    ensured: list[str] = []
    for template in SHIPPED_COUPON_TEMPLATES:
        try:
            await stub.CreateCouponTemplate(
                tasks_service_pb2.CreateCouponTemplateRequest(template=template),
                metadata=bearer(token),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            continue
        ensured.append(template.template_id)
    return tuple(ensured)
