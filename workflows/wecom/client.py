"""Starting or waking a tenant's WeCom sync (`wecom-sync/{tenant}`) with signal-with-start, so a
signal always finds a run: the journeys service after a connector put or a resync request, the
callback endpoint after storing a callback. Names only (no workflow import), so the service does not
load the worker's code."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from workflows.wecom.payloads import WeComSyncInput

WORKFLOW = "WeComSync"
# Signals: something to push (a connector put), callbacks stored to pull, a full reconciliation
# started (its request id; the sync's row says what to do, the signal only wakes the sync).
WAKE = "wake"
CALLBACKS = "callbacks"
RESYNC = "resync"


def workflow_id(tenant_id: str) -> str:
    return f"wecom-sync/{tenant_id}"


async def signal(client: Client, task_queue: str, tenant_id: str, name: str, *args: str) -> None:
    """Signals the tenant's running sync, starting it first when none runs (a stopped or failed
    one's id is reused: the sync's state is in the database, not in the run)."""
    await client.start_workflow(
        WORKFLOW,
        WeComSyncInput(tenant_id),
        id=workflow_id(tenant_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal=name,
        start_signal_args=list(args),
    )
