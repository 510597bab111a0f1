"""Starts an issuance's workflow on Temporal, with the service's one lazily connected client."""

from __future__ import annotations

import contextlib

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from runtime.temporal_client import LazyClient, answered
from workflows.coupon_issuance.payloads import IssuanceInput, workflow_id
from workflows.coupon_issuance.workflow import CouponIssuanceWorkflow

TENANT = SearchAttributeKey.for_keyword("MemberOpsTenant")


class WorkflowStarts:
    """`issuances.Starter` over Temporal: the id `coupon-issuance/{tenant}/{request_id}` is started
    once; a run that failed may be started again (it resumes: pages done are counted already)."""

    def __init__(self, temporal: LazyClient, task_queue: str) -> None:
        self._temporal = temporal
        self._task_queue = task_queue

    async def start(self, tenant_id: str, request_id: str) -> None:
        client = await self._temporal.get()
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await answered(
                client.start_workflow(
                    CouponIssuanceWorkflow.run,
                    IssuanceInput(tenant_id, request_id),
                    id=workflow_id(tenant_id, request_id),
                    task_queue=self._task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT, tenant_id)]),
                )
            )
