"""The coupon issuance: every page of the operation's snapshot issued, in order, by the tasks
service (IssueCouponIssuancePage), until it answers that the operation is done.

The workflow touches no database and keeps no counts of its own: the tasks service's row holds
them (GetCouponIssuance reads it with no worker running). Resumable: a failed page is retried by
Temporal, a worker that dies is replaced by the history, and a page issued again issues nothing
twice. After `pages_per_run` pages the run continues as new with the next page's token.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.coupon_issuance.payloads import ISSUE_PAGE, WORKFLOW, IssuanceInput, IssuePage, PageIssued

START_TO_CLOSE = timedelta(minutes=10)
HEARTBEAT = timedelta(minutes=1)
# A page that keeps failing (the service down) is retried for hours; a permanent error fails the run.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=10), maximum_attempts=50
)


@workflow.defn(name=WORKFLOW)
class CouponIssuanceWorkflow:
    @workflow.run
    async def run(self, issuance: IssuanceInput) -> PageIssued:
        token = issuance.page_token
        for _ in range(max(1, issuance.pages_per_run)):
            issued: PageIssued = await workflow.execute_activity(
                ISSUE_PAGE,
                IssuePage(issuance.tenant_id, issuance.request_id, token),
                result_type=PageIssued,
                start_to_close_timeout=START_TO_CLOSE,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RETRY,
            )
            if issued.done or not issued.next_page_token:
                return issued
            token = issued.next_page_token
        workflow.continue_as_new(dataclasses.replace(issuance, page_token=token))
