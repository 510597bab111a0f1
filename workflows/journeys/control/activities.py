"""The journey control activity: signals (or cancels) every running member and cohort of a journey.

Runs of one journey are serialised by a PostgreSQL lock, and each checks before every page
that its state revision is still the journey's current one: two quick changes (pause, then resume)
can therefore never deliver their signals out of order, as the older run stops before the newer
one starts signalling. Progress (the last member signalled) is heartbeated, so a retry goes on
from there; signalling a run twice does no harm (pause and resume set a flag).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from runtime.db import Database
from workflows.journeys import states
from workflows.journeys.control.payloads import ControlInput, ControlResult

# Member runs read per page, and Temporal calls in flight at once.
PAGE_SIZE = 500
IN_FLIGHT = 64
HEARTBEAT_SECONDS = 5.0


class ControlActivities:
    def __init__(self, db: Database, client: Client, page_size: int = PAGE_SIZE) -> None:
        self._db = db
        self._client = client
        self._page_size = page_size

    def all(self) -> list[object]:
        return [self.apply]

    @activity.defn(name="journeys.control")
    async def apply(self, request: ControlInput) -> ControlResult:
        details = activity.info().heartbeat_details
        progress: dict[str, Any] = dict(details[0]) if details else {"after_member": "", "members": 0}
        async with self._serialised(request), _heartbeating(progress):
            if not await self._current(request):
                return ControlResult(superseded=True)
            while True:
                page = await self._members(request, progress["after_member"])
                await self._all(
                    self._member_call(request, workflow_id, run_id) for _, workflow_id, run_id in page
                )
                if page:
                    progress["after_member"] = page[-1][0]
                    progress["members"] += len(page)
                    activity.heartbeat(progress)
                if len(page) < self._page_size:
                    break
                if not await self._current(request):
                    return ControlResult(members=progress["members"], superseded=True)
            cohorts = await self._cohorts(request)
            await self._all(self._cohort_call(request, workflow_id) for workflow_id in cohorts)
        return ControlResult(members=progress["members"], cohorts=len(cohorts))

    @contextlib.asynccontextmanager
    async def _serialised(self, request: ControlInput) -> AsyncIterator[None]:
        """Holds the journey's control lock while the run signals: a transaction lock in a
        transaction kept open meanwhile (it writes nothing), so however the attempt ends (done,
        failed, cancelled, its worker gone) the lock goes with the transaction."""
        async with self._db.transaction(request.tenant_id) as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                "\x1f".join(("journey-control", request.tenant_id, request.journey_key)),
            )
            yield

    async def _current(self, request: ControlInput) -> bool:
        found = await states.get_states(self._db, request.tenant_id, [request.journey_key])
        return found[request.journey_key].revision == request.revision

    async def _members(self, request: ControlInput, after_member: str) -> list[tuple[str, str, str]]:
        """The next page of the journey's running member runs, by member id (the partial index of
        active enrolments)."""
        async with self._db.transaction(request.tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                """SELECT member_id, workflow_id, run_id FROM journeys.enrolments
                   WHERE tenant_id = $1 AND journey_key = $2 AND state = 'active' AND member_id > $3
                   ORDER BY member_id LIMIT $4""",
                request.tenant_id,
                request.journey_key,
                after_member,
                self._page_size,
            )
        return [(row["member_id"], row["workflow_id"], row["run_id"]) for row in rows]

    async def _cohorts(self, request: ControlInput) -> list[str]:
        async with self._db.transaction(request.tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                """SELECT workflow_id FROM journeys.cohorts
                   WHERE tenant_id = $1 AND journey_key = $2 AND state = 'active' ORDER BY cohort_id""",
                request.tenant_id,
                request.journey_key,
            )
        return [row["workflow_id"] for row in rows]

    async def _member_call(self, request: ControlInput, workflow_id: str, run_id: str) -> None:
        await _tell(self._client.get_workflow_handle(workflow_id, run_id=run_id), request)

    async def _cohort_call(self, request: ControlInput, workflow_id: str) -> None:
        # A cohort continues as new: its current run, whichever it is.
        await _tell(self._client.get_workflow_handle(workflow_id), request)

    async def _all(self, calls: Any) -> None:
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def one(call: Awaitable[None]) -> None:
            async with limit:
                await call

        await asyncio.gather(*(one(call) for call in calls))


async def _tell(handle: WorkflowHandle[Any, Any], request: ControlInput) -> None:
    """Signals `pause`/`resume` (both workflows have them) or cancels; a run that ended meanwhile
    needs nothing."""
    try:
        if request.action == "stop":
            await handle.cancel()
        else:
            await handle.signal(request.action)
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise


@contextlib.asynccontextmanager
async def _heartbeating(progress: dict[str, Any]) -> AsyncIterator[None]:
    """Heartbeats while the run waits for the lock or for slow calls, not only between pages."""

    async def beat() -> None:
        while True:
            activity.heartbeat(progress)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
