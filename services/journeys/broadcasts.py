"""Broadcasts on demand and on a schedule: what StartBroadcast and the journey's state changes do
in Temporal.

`start_broadcast` starts one BroadcastRun per (tenant, journey, request id): the run's id derives
from them, so a repeated or concurrent call gets the same run. `sync_schedule` makes the journey's
Temporal Schedule (`broadcast/{tenant}/{key}`) match the journey: an active broadcast journey with
a cron `schedule` has one, starting BroadcastRun of the live version in UTC with overlap SKIP (a
run waits for its cohort, so no second broadcast starts while one runs); a paused journey's is
paused; any other journey has none. Both are idempotent. `sync_journey` is what the lifecycle
calls after each state change: it syncs from the journey's state as it is then, one sync of a
journey at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from runtime.db import Database
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from workflows.journeys import states, store
from workflows.journeys.broadcast_run.payloads import (
    BroadcastInput,
    requested_run_id,
    schedule_id,
    scheduled_run_id,
)
from workflows.journeys.broadcast_run.workflow import BroadcastRunWorkflow
from workflows.journeys.definition import JourneyDefinition

STATES = ("draft", "active", "paused", "archived")
MAX_REQUEST_ID = 128
# A run missed while Temporal was down is started if it is at most this late, once.
CATCHUP_WINDOW = timedelta(hours=1)
# Memo of the runs the schedule starts: the cron and version that made the action, so an unchanged
# journey leaves its schedule untouched (and `temporal workflow describe` shows both).
SCHEDULE_MEMO = "memberops_broadcast_schedule"
# Memo of a requested run: the version it was asked for (a request id reused for another version
# is refused, not answered with the first run).
VERSION_MEMO = "memberops_broadcast_version"


@dataclass(frozen=True)
class StartedBroadcast:
    """The BroadcastRun of a StartBroadcast call: the same for every call with its request id."""

    workflow_id: str
    run_id: str


def check_request_id(request_id: str) -> None:
    if not 1 <= len(request_id) <= MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"is required: 1-{MAX_REQUEST_ID} characters")


async def find_broadcast(
    client: Client, tenant_id: str, journey_key: str, request_id: str
) -> tuple[StartedBroadcast, int] | None:
    """The BroadcastRun `request_id` started (running or ended) and the version it broadcasts, or
    None: what a retried StartBroadcast answers, whatever the journey's state is now."""
    check_request_id(request_id)
    workflow_id = requested_run_id(tenant_id, journey_key, request_id)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    version = await description.memo_value(VERSION_MEMO, 0)
    return StartedBroadcast(workflow_id, description.run_id), int(version)


async def start_broadcast(
    client: Client,
    task_queue: str,
    tenant_id: str,
    journey_key: str,
    version: int,
    request_id: str,
) -> StartedBroadcast:
    """Starts the journey's BroadcastRun for `request_id`, or finds the one it started: running
    (conflict policy USE_EXISTING) or ended (reuse policy REJECT_DUPLICATE). The caller has checked
    that the journey is an active broadcast journey; the run checks again. AlreadyExists when the
    request id started a run of another version."""
    check_request_id(request_id)
    workflow_id = requested_run_id(tenant_id, journey_key, request_id)
    try:
        handle = await client.start_workflow(
            BroadcastRunWorkflow.run,
            BroadcastInput(tenant_id, journey_key, version),
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            memo={VERSION_MEMO: version},
        )
        run_id = handle.result_run_id
    except WorkflowAlreadyStartedError as error:
        run_id = error.run_id
    assert run_id, "Temporal names the run it started or found"
    description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    started_for = await description.memo_value(VERSION_MEMO, None)
    if started_for != version:
        raise AlreadyExists(
            f"request_id {request_id!r} started a broadcast of version {started_for}, not {version}"
        )
    return StartedBroadcast(workflow_id, run_id)


async def sync_journey(
    db: Database, client: Client, task_queue: str, tenant_id: str, journey_key: str
) -> None:
    """Makes the journey's schedule match the journey as it is now. Under a lock of the tenant's
    journey held for the whole sync, it reads the current state and live version and syncs from
    those: syncs of quick changes (a pause then a resume, an activation then an archive) run one
    after the other, and whichever runs last reads the latest state, so none can leave the
    schedule of an older state behind. FailedPrecondition when Temporal refuses the schedule (the
    state change stays committed; repeating the call, or the next change, syncs again)."""
    async with db.transaction(tenant_id) as conn:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            "\x1f".join(("journey-schedule", tenant_id, journey_key)),
        )
        state = await states.read_state(conn, tenant_id, journey_key)
        live = None
        if state.live_version:
            row = await conn.fetchrow(
                """SELECT version, content::text AS content, format_version FROM journeys.definitions
                   WHERE tenant_id = $1 AND journey_key = $2 AND version = $3""",
                tenant_id,
                journey_key,
                state.live_version,
            )
            live = None if row is None else store.stored(row).definition
        try:
            await sync_schedule(
                client, task_queue, tenant_id, journey_key, state.live_version, live, state.state
            )
        except RPCError as error:
            if error.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            raise FailedPrecondition(
                f"journeys/{journey_key} is {state.state}, but Temporal refuses its schedule: {error.message}"
            ) from error


async def sync_schedule(
    client: Client,
    task_queue: str,
    tenant_id: str,
    journey_key: str,
    version: int,
    definition: JourneyDefinition | None,
    state: str,
) -> None:
    """Makes the journey's schedule match its state and live `version` (`definition`, None when
    there is none): created or updated while active, paused while paused, deleted for a draft, an
    archived journey or a definition without a cron `schedule`. An unchanged journey changes
    nothing. Callers other than tests go through `sync_journey`, which orders the syncs."""
    if state not in STATES:
        raise ValueError(f"unknown journey state {state!r}")
    sid = schedule_id(tenant_id, journey_key)
    broadcast = definition.entry.broadcast if definition is not None else None
    cron = broadcast.schedule if broadcast is not None else ""
    if not cron or state not in ("active", "paused"):
        await _delete(client, sid)
        return
    wanted = _schedule(tenant_id, journey_key, version, cron, task_queue, paused=state == "paused")
    fingerprint = _fingerprint(cron, version)

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        if _matches(client, current.description, wanted, fingerprint):
            return None
        return ScheduleUpdate(schedule=wanted)

    # A schedule deleted between the create and the update is made again (once); `sync_journey`
    # keeps a journey's syncs from overlapping.
    for _ in range(2):
        try:
            await client.create_schedule(sid, wanted)
            return
        except ScheduleAlreadyRunningError:
            pass
        try:
            await client.get_schedule_handle(sid).update(update)
            return
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise


def _fingerprint(cron: str, version: int) -> str:
    return f"{cron} (UTC), version {version}"


def _schedule(
    tenant_id: str, journey_key: str, version: int, cron: str, task_queue: str, *, paused: bool
) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            BroadcastRunWorkflow.run,
            BroadcastInput(tenant_id, journey_key, version),
            id=scheduled_run_id(tenant_id, journey_key),
            task_queue=task_queue,
            memo={SCHEDULE_MEMO: _fingerprint(cron, version)},
        ),
        spec=ScheduleSpec(cron_expressions=[cron], time_zone_name="UTC"),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
        state=ScheduleState(paused=paused, note="journey paused" if paused else "journey active"),
    )


def _matches(client: Client, current: ScheduleDescription, wanted: Schedule, fingerprint: str) -> bool:
    """Whether the schedule already is what `wanted` would make it. The server keeps a cron as
    calendars, so the action's memo (cron and version) stands for the spec."""
    action, want = current.schedule.action, wanted.action
    if not isinstance(action, ScheduleActionStartWorkflow) or not isinstance(
        want, ScheduleActionStartWorkflow
    ):
        return False
    memo = action.memo or {}
    made = memo.get(SCHEDULE_MEMO)
    if made is not None and not isinstance(made, str):
        made = client.data_converter.payload_converter.from_payload(made)
    return (
        made == fingerprint
        and (action.workflow, action.id, action.task_queue) == (want.workflow, want.id, want.task_queue)
        and current.schedule.state.paused == wanted.state.paused
        and current.schedule.policy.overlap == wanted.policy.overlap
        and current.schedule.policy.catchup_window == wanted.policy.catchup_window
    )


async def _delete(client: Client, sid: str) -> None:
    """Deletes the schedule if there is one. A server without schedules (the time-skipping test
    server) holds none, so there is nothing to delete."""
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as error:
        if error.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.UNIMPLEMENTED):
            raise
