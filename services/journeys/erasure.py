"""Erasing a member's data in the journeys service (called by tagging's EraseMember): the member's
running journeys are stopped, then its rows move to the pseudonym (erasure_store.py).

Runs are terminated, not cancelled: a cancelled run goes on to record that it stopped, under the
member's id, after its rows were moved; a terminated one writes nothing more. They are found by the
journeys' own rows (active enrolments, the dispatcher's starts) and by Temporal's visibility
(the member search attribute every member run sets), so a run that has not enrolled yet is found
too. A run that already ended needs nothing, so a repeat is harmless. Broadcast cohorts are not
stopped for one member: its place in a cohort ends in the schema (erasure_store.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from runtime.db import Database
from runtime.erasure import checked
from runtime.errors import Unavailable
from services.journeys import erasure_store

REASON = "member erased"


def running_query(tenant_id: str, member_id: str) -> str:
    """The visibility query of the member's running runs. Both ids are checked natural ids (tenant
    ids by `config.TENANT_ID`), which hold no quote."""
    return (
        f"MemberOpsTenant = '{tenant_id}' AND MemberOpsMember = '{member_id}' AND ExecutionStatus = 'Running'"
    )


class Erasures:
    def __init__(self, db: Database, temporal: Callable[[], Awaitable[Client]]) -> None:
        self._db = db
        self._temporal = temporal

    async def erase(self, tenant_id: str, member_id: str, pseudonym: str) -> dict[str, int]:
        """The rows changed, by table; nothing when the member has nothing left here."""
        erasure = checked(member_id, pseudonym)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            known = await erasure_store.member_workflows(conn, member_id)
        try:
            client = await self._temporal()
            found = [w.id async for w in client.list_workflows(running_query(tenant_id, member_id))]
            await _terminate(client, {*known, *found})
        except RPCError as error:
            raise Unavailable(f"Temporal could not stop the member's journeys: {error.message}") from error
        async with self._db.transaction(tenant_id) as conn:
            return await erasure_store.erase(conn, tenant_id, erasure)


async def _terminate(client: Client, workflow_ids: Iterable[str]) -> None:
    """Terminates the current run of each id; one that ended (or never ran) needs nothing."""
    for workflow_id in sorted(workflow_ids):
        try:
            await client.get_workflow_handle(workflow_id).terminate(reason=REASON)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
