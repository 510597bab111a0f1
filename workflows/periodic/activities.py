"""The periodic jobs' activities: each is one call of a service's idempotent batch RPC.

A tag recompute of a large tenant runs for minutes inside one unary call, so the activity
heartbeats while it waits: a worker that dies is noticed within the heartbeat timeout rather than
at the end of the start-to-close timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import tagging_service_pb2
from memberops.tasks.v1 import tasks_service_pb2
from temporalio import activity

from workflows import service_calls
from workflows.periodic.payloads import (
    EVALUATE_LEVELS,
    EXPIRE_POINTS,
    GRANT_LEVEL_BENEFITS,
    RECOMPUTE_TAGS,
    JobRequest,
    JobResult,
)

HEARTBEAT_SECONDS = 10.0
# A recompute of 1M members takes about a minute; the first one of a tenant about four.
LONG_CALL_SECONDS = 3 * 3600.0

_T = TypeVar("_T")


async def _heartbeating(call: Awaitable[_T]) -> _T:
    """Awaits `call`, heartbeating every HEARTBEAT_SECONDS until it is done."""
    task = asyncio.ensure_future(call)
    while True:
        done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
        if done:
            return task.result()
        activity.heartbeat()


async def completed(method: str, call: Awaitable[_T]) -> _T:
    """The reply of a service call, heartbeating meanwhile; a permanent failure is not retried."""
    try:
        return await _heartbeating(call)
    except grpc.aio.AioRpcError as error:
        raise service_calls.permanent(method, error) from error


class PeriodicActivities:
    def __init__(self, tagging: Any, tasks: Any, token_for_tenant: service_calls.TokenForTenant) -> None:
        self._tagging = tagging
        self._tasks = tasks
        self._token_for_tenant = token_for_tenant

    def all(self) -> list[object]:
        return [self.recompute_tags, self.expire_points, self.evaluate_levels, self.grant_level_benefits]

    @activity.defn(name=RECOMPUTE_TAGS)
    async def recompute_tags(self, request: JobRequest) -> JobResult:
        """Every active fact, rule and model dimension, incrementally: the members whose facts
        changed or whose value time may have moved since the previous run, everyone for RFM
        (only changes are written; the result is a full recompute's)."""
        call = self._tagging.RecomputeTags(
            tagging_service_pb2.RecomputeTagsRequest(),
            metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
            timeout=LONG_CALL_SECONDS,
        )
        reply = await completed("RecomputeTags", call)
        added = sum(r.added_count for r in reply.results)
        removed = sum(r.removed_count for r in reply.results)
        return JobResult(RECOMPUTE_TAGS, f"{len(reply.results)} dimensions, +{added} -{removed} tags")

    @activity.defn(name=EXPIRE_POINTS)
    async def expire_points(self, request: JobRequest) -> JobResult:
        """Empties the lots expired by `as_of`; a lot is expired once, so a rerun changes nothing."""
        call = self._tasks.ExpirePoints(
            tasks_service_pb2.ExpirePointsRequest(as_of=_timestamp(request)),
            metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
            timeout=LONG_CALL_SECONDS,
        )
        reply = await completed("ExpirePoints", call)
        return JobResult(EXPIRE_POINTS, f"{reply.expired_lots} lots, {reply.expired_points} points expired")

    @activity.defn(name=EVALUATE_LEVELS)
    async def evaluate_levels(self, request: JobRequest) -> JobResult:
        """Applies the downgrades of the last evaluation period whose grace has passed by `as_of`;
        a rerun finds them applied and changes nothing."""
        call = self._tasks.EvaluateLevels(
            tasks_service_pb2.EvaluateLevelsRequest(as_of=_timestamp(request)),
            metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
            timeout=LONG_CALL_SECONDS,
        )
        reply = await completed("EvaluateLevels", call)
        return JobResult(
            EVALUATE_LEVELS,
            f"{reply.members_evaluated} members, {reply.upgraded} up, {reply.downgraded} down",
        )

    @activity.defn(name=GRANT_LEVEL_BENEFITS)
    async def grant_level_benefits(self, request: JobRequest) -> JobResult:
        """Grants the coupons of level benefits due in the month of `as_of`; each is granted once
        per member, benefit and month (birthday: year), so a rerun grants nothing more."""
        call = self._tasks.GrantLevelBenefits(
            tasks_service_pb2.GrantLevelBenefitsRequest(as_of=_timestamp(request)),
            metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
            timeout=LONG_CALL_SECONDS,
        )
        reply = await completed("GrantLevelBenefits", call)
        return JobResult(
            GRANT_LEVEL_BENEFITS,
            f"{reply.monthly_coupons} monthly and {reply.birthday_coupons} birthday coupons, "
            f"{reply.out_of_stock} out of stock",
        )


def _timestamp(request: JobRequest) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(request.as_of)
    return stamp
