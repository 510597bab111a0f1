"""JourneyControl: one run per change of a journey's state that running members must hear of.

The journeys service commits the state first (so nobody new enrols), then starts this workflow; its
one activity pages through the journey's running members and cohorts and signals or cancels each.
A Temporal workflow rather than a loop in the RPC: thousands of signals neither hold the call nor
get lost when the service dies halfway (the activity is retried from its last heartbeat).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.journeys.control.activities import ControlActivities
    from workflows.journeys.control.payloads import ControlInput, ControlResult


@workflow.defn(name="JourneyControl")
class JourneyControlWorkflow:
    @workflow.run
    async def run(self, request: ControlInput) -> ControlResult:
        return await workflow.execute_activity_method(
            ControlActivities.apply,
            request,
            start_to_close_timeout=timedelta(days=1),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
            ),
        )
