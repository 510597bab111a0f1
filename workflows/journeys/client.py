"""Starting a member's journey or a broadcast from code (the dispatcher, tests, scripts); operators
use the `temporal` CLI with the same id and input (see the README and docs/journeys.md)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from workflows.journeys.cohort.payloads import CohortFunnel, CohortInput, cohort_workflow_id
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import JourneyDefinition
from workflows.journeys.payloads import Funnel, JourneyInput
from workflows.journeys.workflow import JourneyWorkflow


def workflow_id(journey_key: str, member_id: str) -> str:
    return f"journey/{journey_key}/member/{member_id}"


def reuse_policy(definition: JourneyDefinition) -> WorkflowIDReusePolicy:
    """`never` re-entry rejects any second run of the id; `after_exit` allows one after the last
    ended (the enrolment row still enforces the cooldown)."""
    if definition.reentry.policy == "never":
        return WorkflowIDReusePolicy.REJECT_DUPLICATE
    return WorkflowIDReusePolicy.ALLOW_DUPLICATE


async def start_member_journey(
    client: Client, task_queue: str, definition: JourneyDefinition, request: JourneyInput
) -> WorkflowHandle[JourneyWorkflow, Funnel]:
    """Starts the member's run; raises WorkflowAlreadyStartedError while one runs (or ever ran,
    under `never`)."""
    return await client.start_workflow(
        JourneyWorkflow.run,
        request,
        id=workflow_id(request.journey_key, request.member_id),
        task_queue=task_queue,
        id_reuse_policy=reuse_policy(definition),
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def start_broadcast(
    client: Client, task_queue: str, request: CohortInput
) -> WorkflowHandle[CohortJourneyWorkflow, CohortFunnel]:
    """Starts the cohort of (journey, snapshot); raises WorkflowAlreadyStartedError when it runs or
    ran (a broadcast goes to a snapshot once; the cohort's row refuses it too)."""
    snapshot_id = request.snapshot.removeprefix("snapshots/")
    if not request.snapshot.startswith("snapshots/") or not snapshot_id:
        raise ValueError("a broadcast started from code names its snapshot: snapshots/{snapshot_id}")
    return await client.start_workflow(
        CohortJourneyWorkflow.run,
        request,
        id=cohort_workflow_id(request.journey_key, snapshot_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )
