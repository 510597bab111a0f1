"""Looks a member up through the tagging service; journeys build on the same activity pattern."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.member_lookup.activities import TaggingActivities
    from workflows.member_lookup.payloads import MemberLookupInput, MemberSummary


@workflow.defn(name="MemberLookup")
class MemberLookupWorkflow:
    @workflow.run
    async def run(self, request: MemberLookupInput) -> MemberSummary:
        return await workflow.execute_activity_method(
            TaggingActivities.get_member,
            request,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=20),
        )
