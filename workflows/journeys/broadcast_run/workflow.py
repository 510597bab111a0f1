"""BroadcastRun: one run of a broadcast journey, started by StartBroadcast or by the journey's
Temporal Schedule.

It takes the snapshot (an activity: the entry's fixed snapshot, or a new snapshot of its audience,
idempotent by the run's workflow id), then runs the cohort of that snapshot as a child workflow
under the cohort's own id, `journey/{key}/snapshot/{snapshot_id}`, and waits for it to end. The
wait is what makes the schedule's overlap policy SKIP mean "no second broadcast of the journey
while one runs". The child is abandoned if the run is terminated (the broadcast goes on; stop it by
cancelling the cohort), and cancelled with it if the run is cancelled.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from workflows.journeys.broadcast_run.activities import BroadcastActivities
    from workflows.journeys.broadcast_run.payloads import BroadcastInput, BroadcastOutcome, PrepareRequest
    from workflows.journeys.cohort.payloads import CohortInput, cohort_workflow_id
    from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
    from workflows.journeys.workflow import JOURNEY, TENANT

# A snapshot of a million members takes seconds; the attempt's bound leaves room for a slow one.
PREPARE_TIMEOUT = timedelta(minutes=15)
# Retried for a day: an audience service down for a while delays the broadcast, never drops it.
PREPARE_SCHEDULE_TO_CLOSE = timedelta(days=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn(name="BroadcastRun")
class BroadcastRunWorkflow:
    @workflow.run
    async def run(self, request: BroadcastInput) -> BroadcastOutcome:
        workflow.upsert_search_attributes(
            [TENANT.value_set(request.tenant_id), JOURNEY.value_set(request.journey_key)]
        )
        prepared = await workflow.execute_activity_method(
            BroadcastActivities.prepare,
            PrepareRequest(
                request.tenant_id, request.journey_key, request.version, workflow.info().workflow_id
            ),
            start_to_close_timeout=PREPARE_TIMEOUT,
            schedule_to_close_timeout=PREPARE_SCHEDULE_TO_CLOSE,
            retry_policy=RETRY,
        )
        if not prepared.snapshot:
            return BroadcastOutcome(request.journey_key, prepared.version, detail=prepared.reason)
        cohort_id = cohort_workflow_id(request.journey_key, prepared.snapshot.removeprefix("snapshots/"))
        try:
            cohort = await workflow.start_child_workflow(
                CohortJourneyWorkflow.run,
                CohortInput(
                    tenant_id=request.tenant_id,
                    journey_key=request.journey_key,
                    snapshot=prepared.snapshot,
                    version=prepared.version,
                ),
                id=cohort_id,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            return BroadcastOutcome(
                request.journey_key,
                prepared.version,
                snapshot=prepared.snapshot,
                cohort_workflow_id=cohort_id,
                detail=f"{prepared.snapshot} was broadcast already ({cohort_id})",
            )
        funnel = await cohort
        return BroadcastOutcome(
            request.journey_key,
            prepared.version,
            snapshot=prepared.snapshot,
            cohort_workflow_id=cohort_id,
            state=funnel.state,
            detail=funnel.detail,
            cohort_id=funnel.cohort_id,
        )
