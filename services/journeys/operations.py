"""What an operator does to a journey as a whole: activate a version, pause, resume, archive, start
a broadcast. The state changes are `lifecycle.Lifecycle`'s and the broadcast runs
`broadcasts.start_broadcast`'s; this module adds what the API promises around them: a version goes
live only while everything it names exists (FAILED_PRECONDITION otherwise: the operator fixes the
journey or the audience), and a broadcast starts only for an active broadcast journey."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from runtime.db import Database
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.temporal_client import LazyClient, answered
from services.journeys import broadcasts, request_store
from services.journeys.broadcasts import StartedBroadcast
from services.journeys.journey_store import JourneyRow
from services.journeys.journeys import MAX_REQUEST_ID, Journeys
from services.journeys.lifecycle import Lifecycle
from workflows.journeys import states


def _request(
    tenant_id: str, key: str, request_id: str, method: str, *content: object
) -> request_store.Move | None:
    """The lifecycle call's request id (None without one), hashed with what the call asks."""
    if not request_id:
        return None
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")
    request_hash = hashlib.sha256("\x1f".join((method, key, *map(str, content))).encode()).hexdigest()
    return request_store.Move(tenant_id, request_id, method, request_hash, key)


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
        state = await answered(move(await self._lifecycle()))
        return await self._journeys.get(tenant_id, key, state.live_version)

    async def activate(self, tenant_id: str, key: str, version: int, request_id: str = "") -> JourneyRow:
        """Makes `version` live once its references hold: exactly the version checked (version 0
        resolved here is ABORTED if it means another one by the time the state changes). A retry
        of `request_id` answers the version the first call made live, unchecked and unmoved."""
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (the latest) or a version number")
        request = _request(tenant_id, key, request_id, "activate", version)
        if request is not None and await self._answered(tenant_id, request):
            return await self._moved(
                tenant_id, key, lambda life: life.activate(tenant_id, key, request=request)
            )
        target = version or await self._default_version(tenant_id, key)
        row = await self._journeys.get(tenant_id, key, target)
        broken = await self._journeys.broken_references(tenant_id, row.definition)
        if broken:
            listed = "; ".join(f"{v.field}: {v.description}" for v in broken)
            raise FailedPrecondition(f"journeys/{key} version {row.version} cannot go live: {listed}")
        return await self._moved(
            tenant_id,
            key,
            lambda life: life.activate(tenant_id, key, version, checked=row.version, request=request),
        )

    async def _default_version(self, tenant_id: str, key: str) -> int:
        """What activation without a version makes live: a paused journey's live version, else 0
        (the latest)."""
        current = await states.get_state(self._db, tenant_id, key)
        return current.live_version if current.state == "paused" else 0

    async def pause(self, tenant_id: str, key: str, request_id: str = "") -> JourneyRow:
        request = _request(tenant_id, key, request_id, "pause")
        return await self._moved(tenant_id, key, lambda life: life.pause(tenant_id, key, request))

    async def resume(self, tenant_id: str, key: str, request_id: str = "") -> JourneyRow:
        request = _request(tenant_id, key, request_id, "resume")
        return await self._moved(tenant_id, key, lambda life: life.resume(tenant_id, key, request))

    async def archive(self, tenant_id: str, key: str, stop_running: bool, request_id: str = "") -> JourneyRow:
        request = _request(tenant_id, key, request_id, "archive", stop_running)
        return await self._moved(
            tenant_id, key, lambda life: life.archive(tenant_id, key, stop_running, request)
        )

    async def _answered(self, tenant_id: str, request: request_store.Move) -> bool:
        """Whether the request id has an answer already (the transition checks it is this call's)."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await request_store.find(conn, tenant_id, request.request_id) is not None

    async def start_broadcast(
        self, tenant_id: str, key: str, request_id: str
    ) -> tuple[StartedBroadcast, int]:
        """The BroadcastRun of `request_id` and the live version it broadcasts. A retry gets the
        first answer whatever the journey's state is now: the request id is checked and its run
        looked up before the state (UNAVAILABLE while Temporal does not answer, since only Temporal
        knows whether the id started a run)."""
        broadcasts.check_request_id(request_id)
        client = await self._temporal.get()
        first = await answered(broadcasts.find_broadcast(client, tenant_id, key, request_id))
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
        started = await answered(
            broadcasts.start_broadcast(client, self._task_queue, tenant_id, key, live.version, request_id)
        )
        return started, live.version
