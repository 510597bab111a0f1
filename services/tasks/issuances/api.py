"""The coupon issuance RPCs of TasksService: protobuf in, domain calls, protobuf out.

A mixin of `services.tasks.api.TasksApi` (like `coupons.api.CouponRpcs`); TasksApi hands it the
issuances (`_issuances`) and the time (`_clock`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from runtime.auth import current_tenant
from services.tasks.issuances import messages
from services.tasks.issuances.issuances import Issuances


class IssuanceRpcs:
    _clock: Callable[[], dt.datetime]

    def _issuances(self) -> Issuances:
        raise NotImplementedError

    async def IssueCouponToAudience(
        self, request: tasks_service_pb2.IssueCouponToAudienceRequest, context: Any
    ) -> coupons_pb2.CouponIssuance:
        asked = messages.asked_from_proto(request)
        return messages.issuance_to_proto(await self._issuances().start(current_tenant(), asked))

    async def GetCouponIssuance(
        self, request: tasks_service_pb2.GetCouponIssuanceRequest, context: Any
    ) -> coupons_pb2.CouponIssuance:
        request_id = messages.request_id_from_name(request.name)
        return messages.issuance_to_proto(await self._issuances().get(current_tenant(), request_id))

    async def IssueCouponIssuancePage(
        self, request: tasks_service_pb2.IssueCouponIssuancePageRequest, context: Any
    ) -> tasks_service_pb2.IssueCouponIssuancePageResponse:
        request_id = messages.request_id_from_name(request.name)
        issuance, next_token = await self._issuances().issue_page(
            current_tenant(), request_id, request.page_token, self._clock()
        )
        return tasks_service_pb2.IssueCouponIssuancePageResponse(
            issuance=messages.issuance_to_proto(issuance), next_page_token=next_token
        )
