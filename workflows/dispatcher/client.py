"""Starting a tenant's dispatcher (`make up` does it for every configured tenant); operators see it
with `temporal workflow describe --workflow-id dispatcher/{tenant}`."""

from __future__ import annotations

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from workflows.dispatcher.payloads import DispatcherInput
from workflows.dispatcher.workflow import DispatcherWorkflow


def dispatcher_id(tenant_id: str) -> str:
    return f"dispatcher/{tenant_id}"


async def ensure_dispatcher(client: Client, task_queue: str, request: DispatcherInput) -> bool:
    """Starts the tenant's dispatcher unless one runs; True when this call started it. Running it
    again starts nothing (and a dispatcher that was stopped resumes from its stored cursors)."""
    workflow_id = dispatcher_id(request.tenant_id)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            return False
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
    await client.start_workflow(
        DispatcherWorkflow.run,
        request,
        id=workflow_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        # Two callers racing: the second one gets the first one's run.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return True
