"""The coupon RPCs of TasksService: protobuf in, domain calls, protobuf out.

A mixin of `services.tasks.api.TasksApi`, so the coupon handlers live beside the coupon domain;
TasksApi hands it the coupon services (`_coupons`) and the time (`_clock`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from runtime.auth import current_tenant
from services.tasks.coupons import messages
from services.tasks.coupons.catalog import CouponTemplates
from services.tasks.coupons.member_coupons import Coupons, code_from_name
from services.tasks.coupons.templates import template_id_from_name


@dataclass(frozen=True)
class CouponServices:
    templates: CouponTemplates
    coupons: Coupons


class CouponRpcs:
    _clock: Callable[[], dt.datetime]

    def _coupons(self) -> CouponServices:
        raise NotImplementedError

    async def CreateCouponTemplate(
        self, request: tasks_service_pb2.CreateCouponTemplateRequest, context: Any
    ) -> coupons_pb2.CouponTemplate:
        d = messages.definition_from_proto(request.template, request.HasField("template"))
        return messages.template_to_proto(await self._coupons().templates.create(current_tenant(), d))

    async def UpdateCouponTemplate(
        self, request: tasks_service_pb2.UpdateCouponTemplateRequest, context: Any
    ) -> coupons_pb2.CouponTemplate:
        d = messages.definition_from_proto(request.template, request.HasField("template"))
        updated = await self._coupons().templates.update(current_tenant(), d, request.expected_version)
        return messages.template_to_proto(updated)

    async def GetCouponTemplate(
        self, request: tasks_service_pb2.GetCouponTemplateRequest, context: Any
    ) -> coupons_pb2.CouponTemplate:
        template_id = template_id_from_name(request.name, "name")
        return messages.template_to_proto(await self._coupons().templates.get(current_tenant(), template_id))

    async def ListCouponTemplates(
        self, request: tasks_service_pb2.ListCouponTemplatesRequest, context: Any
    ) -> tasks_service_pb2.ListCouponTemplatesResponse:
        page, token = await self._coupons().templates.list_page(
            current_tenant(), request.page_size, request.page_token, request.show_retired
        )
        return tasks_service_pb2.ListCouponTemplatesResponse(
            templates=[messages.template_to_proto(t) for t in page], next_page_token=token
        )

    async def RetireCouponTemplate(
        self, request: tasks_service_pb2.RetireCouponTemplateRequest, context: Any
    ) -> coupons_pb2.CouponTemplate:
        template_id = template_id_from_name(request.name, "name")
        return messages.template_to_proto(
            await self._coupons().templates.retire(current_tenant(), template_id)
        )

    async def IssueCoupon(
        self, request: tasks_service_pb2.IssueCouponRequest, context: Any
    ) -> coupons_pb2.Coupon:
        template_id = template_id_from_name(request.template, "template")
        now = self._clock()
        coupon = await self._coupons().coupons.issue(
            current_tenant(),
            template_id,
            request.member_id,
            messages.source_from_proto(request.source),
            request.request_id,
            now,
        )
        return messages.coupon_to_proto(coupon, now)

    async def ClaimCoupon(
        self, request: tasks_service_pb2.ClaimCouponRequest, context: Any
    ) -> coupons_pb2.Coupon:
        template_id = template_id_from_name(request.template, "template")
        now = self._clock()
        coupon = await self._coupons().coupons.claim(
            current_tenant(), template_id, request.member_id, request.request_id, now
        )
        return messages.coupon_to_proto(coupon, now)

    async def GetCoupon(
        self, request: tasks_service_pb2.GetCouponRequest, context: Any
    ) -> coupons_pb2.Coupon:
        code = code_from_name(request.name)
        return messages.coupon_to_proto(
            await self._coupons().coupons.get(current_tenant(), code), self._clock()
        )

    async def ListMemberCoupons(
        self, request: tasks_service_pb2.ListMemberCouponsRequest, context: Any
    ) -> tasks_service_pb2.ListMemberCouponsResponse:
        now = self._clock()
        page, token = await self._coupons().coupons.member_page(
            current_tenant(),
            request.member_id,
            list(request.states),
            request.page_size,
            request.page_token,
            now,
        )
        return tasks_service_pb2.ListMemberCouponsResponse(
            coupons=[messages.coupon_to_proto(c, now) for c in page], next_page_token=token
        )

    async def GetCouponStats(
        self, request: tasks_service_pb2.GetCouponStatsRequest, context: Any
    ) -> tasks_service_pb2.GetCouponStatsResponse:
        arms = await self._coupons().coupons.stats(current_tenant(), request.campaign)
        return tasks_service_pb2.GetCouponStatsResponse(arms=[messages.arm_to_proto(a) for a in arms])
