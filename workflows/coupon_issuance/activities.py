"""The coupon issuance's one activity: the tasks service's IssueCouponIssuancePage for one page.

Retrying it is safe: each member's coupon has a request id derived from the operation and the
member, and a page's counts are added once, so a page that ran before its worker died issues and
counts nothing the second time.
"""

from __future__ import annotations

from typing import Any

from memberops.tasks.v1 import tasks_service_pb2
from temporalio import activity

from workflows import service_calls
from workflows.coupon_issuance.payloads import ISSUE_PAGE, IssuePage, PageIssued
from workflows.periodic.activities import completed

# A page of 200 members takes well under a second; a busy database, longer.
CALL_SECONDS = 300.0


class CouponIssuanceActivities:
    def __init__(self, tasks: Any, token_for_tenant: service_calls.TokenForTenant) -> None:
        self._tasks = tasks
        self._token_for_tenant = token_for_tenant

    def all(self) -> list[object]:
        return [self.issue_page]

    @activity.defn(name=ISSUE_PAGE)
    async def issue_page(self, page: IssuePage) -> PageIssued:
        call = self._tasks.IssueCouponIssuancePage(
            tasks_service_pb2.IssueCouponIssuancePageRequest(
                name=f"couponIssuances/{page.request_id}", page_token=page.page_token
            ),
            metadata=service_calls.metadata(self._token_for_tenant, page.tenant_id),
            timeout=CALL_SECONDS,
        )
        reply = await completed("IssueCouponIssuancePage", call)
        issuance = reply.issuance
        return PageIssued(
            next_page_token=reply.next_page_token,
            members=issuance.members,
            issued=issuance.issued,
            skipped=issuance.skipped,
            out_of_stock=issuance.out_of_stock,
            done=issuance.done,
        )
