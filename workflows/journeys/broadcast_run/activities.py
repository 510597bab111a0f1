"""The BroadcastRun's one activity: which snapshot the run broadcasts to, taking it when the entry
names an audience. CreateSnapshot is idempotent by its request id, which derives from the run's
workflow id, so a retried attempt (even one whose first call is still running) gets the first
snapshot back instead of a second."""

from __future__ import annotations

import grpc
from memberops.audience.v1 import audience_service_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime.errors import NotFound
from workflows import service_calls
from workflows.journeys import states
from workflows.journeys import store as journeys_store
from workflows.journeys.broadcast_run.payloads import Prepared, PrepareRequest, snapshot_request_id

# A snapshot of a large audience is one set-based statement that takes a while (seconds for a
# million members); a call past this is retried and finds the snapshot by its request id.
SNAPSHOT_TIMEOUT_SECONDS = 600.0


class BroadcastActivities(service_calls.ServiceActivities):
    def all(self) -> list[object]:
        return [self.prepare]

    @activity.defn(name="broadcasts.prepare")
    async def prepare(self, request: PrepareRequest) -> Prepared:
        """The snapshot of this run: the entry's fixed one, or a new snapshot of its audience. A
        journey that is not active, or a version that is not its live one (0 means the live one),
        gets none: no snapshot is taken for a broadcast that would not open (the cohort's `open`
        checks both again, under the state row's lock)."""
        try:
            state = await states.get_state(self._db, request.tenant_id, request.journey_key)
            if state.state != "active":
                return Prepared(
                    request.version or state.live_version,
                    reason=f"journey {request.journey_key!r} is {state.state}, not active",
                )
            if request.version not in (0, state.live_version):
                return Prepared(
                    request.version,
                    reason=f"version {request.version} is not live (version {state.live_version} is)",
                )
            stored = await journeys_store.get_definition(
                self._db, request.tenant_id, request.journey_key, request.version or state.live_version
            )
        except NotFound as error:
            raise ApplicationError(error.message, type="NOT_FOUND", non_retryable=True) from error
        broadcast = stored.definition.entry.broadcast
        if broadcast is None:
            raise ApplicationError(
                f"entry: journey {request.journey_key!r} version {stored.version} is not a broadcast",
                type="INVALID_ARGUMENT",
                non_retryable=True,
            )
        if broadcast.snapshot:
            return Prepared(stored.version, snapshot=broadcast.snapshot)
        try:
            snapshot = await self._audience.CreateSnapshot(
                audience_service_pb2.CreateSnapshotRequest(
                    audience=f"audiences/{broadcast.audience}",
                    request_id=snapshot_request_id(request.workflow_id),
                ),
                metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
                timeout=SNAPSHOT_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("CreateSnapshot", error) from error
        return Prepared(stored.version, snapshot=snapshot.name, created=True)
