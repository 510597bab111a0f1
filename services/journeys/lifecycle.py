"""Activating, pausing, resuming and archiving a journey: the state in the database first, then
what running members, cohorts and broadcast schedules must hear of it.

The state is committed before anything is signalled, so from that moment nobody new enrols (see
`workflows/journeys/states.py`). Running member runs and cohorts are then told by a JourneyControl
workflow (one per state revision and action), not by this call: a journey can have thousands of
runs, and a workflow neither holds the RPC nor forgets half of them when the service dies. A
repeated call finds the same revision and starts the same control run again (a no-op), which also
finishes the job of a call that died between its commit and its start.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import temporalio.client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from runtime import logs
from runtime.db import Database
from services.journeys import broadcasts
from workflows.journeys import states
from workflows.journeys.control.payloads import Action, ControlInput, control_workflow_id
from workflows.journeys.control.workflow import JourneyControlWorkflow
from workflows.journeys.states import JourneyState

log = logs.get_logger("memberops.journeys.lifecycle")


def action_for(state: JourneyState, stop_running: bool = False) -> Action:
    """What running members are told in `state`: a paused journey holds them; an active one and an
    archived one let them go on (an archived journey's members finish, unless stopped). Every
    control run converges them to the current state, so a run superseded by a newer one loses
    nothing."""
    if state.state == "paused":
        return "pause"
    if state.state == "archived" and stop_running:
        return "stop"
    return "resume"


class Lifecycle:
    def __init__(self, db: Database, client: temporalio.client.Client, task_queue: str) -> None:
        self._db = db
        self._client = client
        self._task_queue = task_queue

    async def activate(
        self,
        tenant_id: str,
        journey_key: str,
        version: int = 0,
        checked: int = 0,
        request: states.Request | None = None,
    ) -> JourneyState:
        """Makes `version` (0: the latest stored one; for a paused journey, its live one) live;
        `checked`: the version 0 was resolved to and checked (see `states.transition`)."""
        return await self._move(tenant_id, journey_key, "active", version, checked=checked, request=request)

    async def pause(
        self, tenant_id: str, journey_key: str, request: states.Request | None = None
    ) -> JourneyState:
        """No new entries; running members and cohorts hold before their next step."""
        return await self._move(tenant_id, journey_key, "paused", request=request)

    async def resume(
        self, tenant_id: str, journey_key: str, request: states.Request | None = None
    ) -> JourneyState:
        """A paused journey goes on with its live version; held members continue. Decided under the
        state row's lock: a resume never puts back a live version replaced since it was called."""
        return await self._move(tenant_id, journey_key, "active", resume=True, request=request)

    async def archive(
        self,
        tenant_id: str,
        journey_key: str,
        stop_running: bool = False,
        request: states.Request | None = None,
    ) -> JourneyState:
        """No new entries; running members finish, or are stopped (`stopped`) with `stop_running`."""
        return await self._move(
            tenant_id, journey_key, "archived", stop_running=stop_running, request=request
        )

    async def _move(
        self,
        tenant_id: str,
        journey_key: str,
        to_state: str,
        version: int = 0,
        *,
        stop_running: bool = False,
        resume: bool = False,
        checked: int = 0,
        request: states.Request | None = None,
    ) -> JourneyState:
        """The move, then its control run and schedule sync. A repeated request id moves nothing and
        answers the first call's live version; its control run and sync are those of the state
        as it is now (each idempotent), so a retry still finishes a first call that died after
        its commit."""
        state = await states.transition(
            self._db,
            tenant_id,
            journey_key,
            to_state,
            version,
            dt.datetime.now(dt.UTC),
            resume=resume,
            checked=checked,
            request=request,
        )
        workflow_id = await self._control(tenant_id, state, action_for(state, stop_running))
        # Every move, whatever the live version is: a scheduled broadcast replaced by a triggered
        # version (or archived) loses its schedule.
        await broadcasts.sync_journey(self._db, self._client, self._task_queue, tenant_id, journey_key)
        log.info(
            "journey state",
            tenant=tenant_id,
            journey=journey_key,
            state=state.state,
            live_version=state.live_version,
            revision=state.revision,
            workflow_id=workflow_id,
        )
        return state

    async def _control(self, tenant_id: str, state: JourneyState, action: Action) -> str:
        """Starts the control run of this revision and action (or finds it started or done)."""
        workflow_id = control_workflow_id(tenant_id, state.journey_key, state.revision, action)
        # Done already (REJECT_DUPLICATE): the repeat of a transition that holds.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self._client.start_workflow(
                JourneyControlWorkflow.run,
                ControlInput(tenant_id, state.journey_key, state.revision, action),
                id=workflow_id,
                task_queue=self._task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        return workflow_id
