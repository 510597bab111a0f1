"""What an operator does to a journey as a whole: activate a version, pause, resume, archive, start
a broadcast. The state changes are `lifecycle.Lifecycle`'s and the broadcast runs
`broadcasts.start_broadcast`'s; this module adds what the API promises around them: a version goes
live only while everything it names exists (FAILED_PRECONDITION otherwise: the operator fixes the
journey or the audience), and a broadcast starts only for an active broadcast journey."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.service import RPCError, RPCStatusCode

from runtime.db import Database
from runtime.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.journeys import broadcasts
from services.journeys.broadcasts import StartedBroadcast
from services.journeys.journey_store import JourneyRow
from services.journeys.journeys import Journeys
from services.journeys.lifecycle import Lifecycle
from services.journeys.temporal import LazyClient
from workflows.journeys import states

_T = TypeVar("_T")
# Temporal did not answer: the state may be committed, and repeating the call finishes the job.
_NO_ANSWER = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)


async def _temporal(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except RPCError as error:
        if error.status in _NO_ANSWER:
            raise Unavailable(f"Temporal did not answer: {error.message}") from error
        raise


class Operations:
    def __init__(self, db: Database, journeys: Journeys, temporal: LazyClient, task_queue: str) -> None:
        self._db = db
        self._journeys = journeys
        self._temporal = temporal
        self._task_queue = task_queue

    async def _lifecycle(self) -> Lifecycle:
        return Lifecycle(self._db, await self._temporal.get(), self._task_queue)

    async def _moved(
        self, tenant_id: str, key: str, move: Callable[[Lifecycle], Awaitable[states.JourneyState]]
    ) -> JourneyRow:
        state = await _temporal(move(await self._lifecycle()))
        return await self._journeys.get(tenant_id, key, state.live_version)

    async def activate(self, tenant_id: str, key: str, version: int) -> JourneyRow:
        """Makes `version` live once its references hold: exactly the version checked (version 0
        resolved here is ABORTED if it means another one by the time the state changes)."""
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (the latest) or a version number")
        target = version or await self._default_version(tenant_id, key)
        row = await self._journeys.get(tenant_id, key, target)
        broken = await self._journeys.broken_references(tenant_id, row.definition)
        if broken:
            listed = "; ".join(f"{v.field}: {v.description}" for v in broken)
            raise FailedPrecondition(f"journeys/{key} version {row.version} cannot go live: {listed}")
        return await self._moved(
            tenant_id, key, lambda life: life.activate(tenant_id, key, version, checked=row.version)
        )

    async def _default_version(self, tenant_id: str, key: str) -> int:
        """What activation without a version makes live: a paused journey's live version, else 0
        (the latest)."""
        current = await states.get_state(self._db, tenant_id, key)
        return current.live_version if current.state == "paused" else 0

    async def pause(self, tenant_id: str, key: str) -> JourneyRow:
        return await self._moved(tenant_id, key, lambda life: life.pause(tenant_id, key))

    async def resume(self, tenant_id: str, key: str) -> JourneyRow:
        return await self._moved(tenant_id, key, lambda life: life.resume(tenant_id, key))

    async def archive(self, tenant_id: str, key: str, stop_running: bool) -> JourneyRow:
        return await self._moved(tenant_id, key, lambda life: life.archive(tenant_id, key, stop_running))

    async def start_broadcast(
        self, tenant_id: str, key: str, request_id: str
    ) -> tuple[StartedBroadcast, int]:
        """The BroadcastRun of `request_id` and the live version it broadcasts. A retry gets the
        first answer whatever the journey's state is now: the request id is checked and its run
        looked up before the state (UNAVAILABLE while Temporal does not answer, since only Temporal
        knows whether the id started a run)."""
        broadcasts.check_request_id(request_id)
        client = await self._temporal.get()
        first = await _temporal(broadcasts.find_broadcast(client, tenant_id, key, request_id))
        if first is not None:
            return first
        current = await states.get_state(self._db, tenant_id, key)
        if current.state != "active":
            raise FailedPrecondition(f"journeys/{key} is {current.state}: only an active journey broadcasts")
        live = await self._journeys.get(tenant_id, key, current.live_version)
        if live.definition.entry.broadcast is None:
            raise FailedPrecondition(
                f"journeys/{key} enters members one by one: its entry is not a broadcast"
            )
        started = await _temporal(
            broadcasts.start_broadcast(client, self._task_queue, tenant_id, key, live.version, request_id)
        )
        return started, live.version
