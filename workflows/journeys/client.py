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


def workflow_id(tenant_id: str, journey_key: str, member_id: str) -> str:
    """`journey/{tenant}/{key}/member/{member}`: one namespace holds every tenant, and two shops
    may both have a member `m-1` in a journey `new-customer` (runs started before the tenant was
    part of the id keep theirs, `journey/{key}/member/{member}`; the dispatcher signals the id the
    enrolment recorded)."""
    return f"journey/{tenant_id}/{journey_key}/member/{member_id}"


def reuse_policy(definition: JourneyDefinition) -> WorkflowIDReusePolicy:
    """A new run of the id may start once the last one ended, whatever the re-entry policy: the
    enrolment row decides whether it enrols (never, after_exit, the cooldown). Rejecting
    duplicates under `never` let a run that enrolled nobody (started on a draft, or losing a race
    with a pause) keep its member out of the journey for good."""
    del definition  # one policy for every journey; the enrolment row holds the re-entry policy
    return WorkflowIDReusePolicy.ALLOW_DUPLICATE


async def start_member_journey(
    client: Client, task_queue: str, definition: JourneyDefinition, request: JourneyInput
) -> WorkflowHandle[JourneyWorkflow, Funnel]:
    """Starts the member's run; raises WorkflowAlreadyStartedError while one runs."""
    return await client.start_workflow(
        JourneyWorkflow.run,
        request,
        id=workflow_id(request.tenant_id, request.journey_key, request.member_id),
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
