"""Broadcast runs on the dev server (the time-skipping test server has no schedules), against the
real services and database: the journey's Temporal Schedule follows its state and live version;
a triggered schedule snapshots the audience and runs the cohort to its members, and skips while the
last broadcast still runs; StartBroadcast's core starts one run and one snapshot per request id,
also when called concurrently; a fixed snapshot is broadcast once; a journey that is not active
takes no snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections import Counter
from typing import Any

import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.journeys import broadcasts
from services.journeys.lifecycle import Lifecycle
from tests.audience.helpers import in_batch
from tests.conftest import ACME, TENANT_ACME, unique
from tests.unit.test_journey_definitions import GOOD_CRONS
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.cohort_helpers import broadcast, population, snapshot_population, until_asleep
from tests.workflows.journey_helpers import activate, keep_history, phone_of, running
from workflows.journeys import states, store
from workflows.journeys.broadcast_run.payloads import (
    BroadcastInput,
    BroadcastOutcome,
    schedule_id,
    snapshot_request_id,
)
from workflows.journeys.broadcast_run.workflow import BroadcastRunWorkflow
from workflows.journeys.definition import (
    Broadcast,
    Entry,
    EventMatch,
    JourneyDefinition,
    Send,
    Step,
    Wait,
    validate,
)
from workflows.worker import Resources

HELLO = Step(id="hello", send=Send(template="hello"))
# Between two sends, keeps the cohort running (for a day) after its members got the first.
LINGER = Step(id="linger", wait=Wait(duration="1d"))
BYE = Step(id="bye", send=Send(template="hello"))


@pytest.fixture
def unlimited(resources: Resources) -> Resources:
    """No practical per-minute limit (the tests share the tenant's windows)."""
    rates = {channel: 10**9 for channel in ("sms", "email", "app_push", "wecom")}
    return dataclasses.replace(resources, channels=dataclasses.replace(resources.channels, per_minute=rates))


def delivered(provider: fakes.Provider, ids: list[str]) -> Counter[str]:
    phones = {phone_of(member_id): member_id for member_id in ids}
    with provider.lock:
        return Counter(phones[d.body["to"]] for d in provider.deliveries if d.body.get("to") in phones)


async def audience_of(resources: Resources, count: int) -> tuple[list[str], str]:
    """`count` new members and an audience of them, not snapshotted: (member ids, audience id)."""
    batch, ids = await population(resources.tagging, count)
    audience_id = unique("aud")
    await audience_service_pb2_grpc.AudienceServiceStub(resources.audience).CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=audience_id, rule=in_batch(batch))
        ),
        metadata=ACME,
    )
    return ids, audience_id


def scheduled(audience_id: str, cron: str, *steps: Step) -> JourneyDefinition:
    return broadcast(
        audience_id, *steps, entry=Entry(broadcast=Broadcast(audience=audience_id, schedule=cron))
    )


async def stored_active(db: Database, definition: JourneyDefinition) -> int:
    version = (await store.put_definition(db, TENANT_ACME, definition)).version
    await activate(db, TENANT_ACME, definition.key, version)
    return version


async def move(db: Database, key: str, to_state: str) -> None:
    await states.transition(db, TENANT_ACME, key, to_state, 0, dt.datetime.now(dt.UTC))


async def described(client: Client, key: str) -> ScheduleDescription | None:
    try:
        return await client.get_schedule_handle(schedule_id(TENANT_ACME, key)).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def action_input(client: Client, description: ScheduleDescription) -> tuple[str, str, BroadcastInput]:
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    payload: Any = action.args[0]
    return (
        action.workflow,
        action.id,
        client.data_converter.payload_converter.from_payload(payload, BroadcastInput),
    )


async def snapshots_of(db: Database, audience_id: str) -> list[dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT snapshot_id, request_id, member_count FROM audience.snapshots WHERE audience_id = $1",
            audience_id,
        )
    return [dict(row) for row in rows]


async def cohorts_of(db: Database, key: str) -> list[dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT cohort_id, snapshot_id, workflow_id FROM journeys.cohorts WHERE journey_key = $1", key
        )
    return [dict(row) for row in rows]


async def test_the_schedule_follows_the_journeys_state_and_live_version(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings, journeys_db: Database
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    definition = scheduled(unique("aud"), "0 9 * * 1", HELLO)
    key = definition.key

    async def sync(version: int, d: JourneyDefinition, state: str) -> None:
        await broadcasts.sync_schedule(client, queue, TENANT_ACME, key, version, d, state)

    await sync(1, definition, "draft")
    assert await described(client, key) is None  # a draft has no schedule

    await sync(1, definition, "active")
    first = await described(client, key)
    assert first is not None
    assert action_input(client, first) == (
        "BroadcastRun",
        f"broadcast/{TENANT_ACME}/{key}/scheduled",
        BroadcastInput(TENANT_ACME, key, 1),
    )
    assert first.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert not first.schedule.state.paused
    upcoming = first.info.next_action_times
    assert upcoming and {(t.astimezone(dt.UTC).weekday(), t.hour, t.minute) for t in upcoming} == {(0, 9, 0)}

    await sync(1, definition, "active")  # unchanged: not even updated
    again = await described(client, key)
    assert again is not None and again.info.last_updated_at == first.info.last_updated_at

    # A new live version with another time.
    newer = dataclasses.replace(
        definition, entry=Entry(broadcast=Broadcast(audience="x", schedule="30 8 * * *"))
    )
    await sync(2, newer, "active")
    updated = await described(client, key)
    assert updated is not None and action_input(client, updated)[2] == BroadcastInput(TENANT_ACME, key, 2)
    assert {(t.astimezone(dt.UTC).hour, t.minute) for t in updated.info.next_action_times} == {(8, 30)}

    await sync(2, newer, "paused")
    paused = await described(client, key)
    assert paused is not None and paused.schedule.state.paused
    await sync(2, newer, "paused")
    still = await described(client, key)
    assert still is not None and still.info.last_updated_at == paused.info.last_updated_at

    await sync(2, newer, "active")
    resumed = await described(client, key)
    assert resumed is not None and not resumed.schedule.state.paused

    # A version without a schedule has none; neither has an archived journey (twice is harmless).
    once = dataclasses.replace(newer, entry=Entry(broadcast=Broadcast(audience="x")))
    await sync(3, once, "active")
    assert await described(client, key) is None
    await sync(2, newer, "active")
    assert await described(client, key) is not None
    await sync(2, newer, "archived")
    await sync(2, newer, "archived")
    assert await described(client, key) is None


async def stored_scheduled(
    env: WorkflowEnvironment, settings: Settings, db: Database
) -> tuple[Client, Lifecycle, JourneyDefinition]:
    """A stored draft of a weekly scheduled broadcast, and the lifecycle that moves it."""
    definition = scheduled(unique("aud"), "0 9 * * 1", HELLO)
    await store.put_definition(db, TENANT_ACME, definition)
    return env.client, Lifecycle(db, env.client, settings.temporal_task_queue), definition


async def test_the_lifecycles_transitions_sync_the_schedule(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings, journeys_db: Database
) -> None:
    """What the JourneyService's state changes do to a scheduled broadcast's schedule."""
    client, journeys, definition = await stored_scheduled(dev_server_env, worker_settings, journeys_db)
    key = definition.key
    assert await described(client, key) is None  # a draft has none

    async def schedule() -> tuple[int, bool, list[tuple[int, int]]]:
        description = await described(client, key)
        assert description is not None
        times = [(t.astimezone(dt.UTC).hour, t.minute) for t in description.info.next_action_times]
        return action_input(client, description)[2].version, description.schedule.state.paused, times

    await journeys.activate(TENANT_ACME, key)
    version, paused, times = await schedule()
    assert (version, paused) == (1, False) and times and set(times) == {(9, 0)}
    await journeys.pause(TENANT_ACME, key)
    assert (await schedule())[:2] == (1, True)
    await journeys.resume(TENANT_ACME, key)
    assert (await schedule())[:2] == (1, False)
    newer = dataclasses.replace(
        definition, entry=Entry(broadcast=Broadcast(audience="x", schedule="30 8 * * *"))
    )
    await store.put_definition(journeys_db, TENANT_ACME, newer)
    await journeys.activate(TENANT_ACME, key, 2)
    version, paused, times = await schedule()
    assert (version, paused) == (2, False) and times and set(times) == {(8, 30)}
    await journeys.archive(TENANT_ACME, key)
    assert await described(client, key) is None


async def test_a_triggered_live_version_removes_the_schedule(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings, journeys_db: Database
) -> None:
    """A scheduled broadcast whose next live version enters members one by one broadcasts no more."""
    client, journeys, definition = await stored_scheduled(dev_server_env, worker_settings, journeys_db)
    await journeys.activate(TENANT_ACME, definition.key)
    assert await described(client, definition.key) is not None
    triggered = dataclasses.replace(definition, entry=Entry(event=EventMatch(kind="registered")))
    await store.put_definition(journeys_db, TENANT_ACME, triggered)
    assert (await journeys.activate(TENANT_ACME, definition.key, 2)).live_version == 2
    assert await described(client, definition.key) is None
    await journeys.pause(TENANT_ACME, definition.key)
    assert await described(client, definition.key) is None


@pytest.mark.parametrize(
    ("first", "second", "then"),
    [("pause", "resume", "unpaused"), ("activate", "archive", "none")],
)
async def test_a_sync_arriving_late_syncs_the_journeys_current_state(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    journeys_db: Database,
    monkeypatch: pytest.MonkeyPatch,
    first: str,
    second: str,
    then: str,
) -> None:
    """The first change's sync is held (between its commit and its sync) until the second change
    returned: it must not put back the schedule of the first change's state."""
    client, journeys, definition = await stored_scheduled(dev_server_env, worker_settings, journeys_db)
    key = definition.key
    if first == "pause":
        await journeys.activate(TENANT_ACME, key)
    second_done = asyncio.Event()
    control = Lifecycle._control

    async def held(self: Lifecycle, tenant_id: str, state: states.JourneyState, action: Any) -> str:
        if state.state == {"pause": "paused", "activate": "active"}[first]:
            await second_done.wait()
        return await control(self, tenant_id, state, action)

    monkeypatch.setattr(Lifecycle, "_control", held)
    moving = asyncio.create_task(getattr(journeys, first)(TENANT_ACME, key))
    await eventually(
        lambda: _state_is(journeys_db, key, {"pause": "paused", "activate": "active"}[first]), "first commit"
    )
    await getattr(journeys, second)(TENANT_ACME, key)
    second_done.set()
    await moving
    try:
        description = await described(client, key)
        if then == "none":
            assert description is None
        else:
            assert description is not None and not description.schedule.state.paused
    finally:
        await broadcasts.sync_schedule(
            client, worker_settings.temporal_task_queue, TENANT_ACME, key, 1, None, "archived"
        )


async def _state_is(db: Database, key: str, state: str) -> bool:
    return (await states.get_state(db, TENANT_ACME, key)).state == state


async def test_syncs_of_one_journey_wait_for_each_other(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    journeys_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pause's sync is held inside its call to Temporal; the resume's sync waits for it (a lock of
    the tenant's journey), then reads the resumed state: the schedule ends unpaused."""
    client, journeys, definition = await stored_scheduled(dev_server_env, worker_settings, journeys_db)
    key = definition.key
    await journeys.activate(TENANT_ACME, key)
    gate = asyncio.Event()
    reached = asyncio.Event()
    sync = broadcasts.sync_schedule

    async def held(*args: Any) -> None:
        if args[-1] == "paused":
            reached.set()
            await gate.wait()
        await sync(*args)

    monkeypatch.setattr(broadcasts, "sync_schedule", held)
    pausing = asyncio.create_task(journeys.pause(TENANT_ACME, key))
    await asyncio.wait_for(reached.wait(), 30)
    resuming = asyncio.create_task(journeys.resume(TENANT_ACME, key))
    await eventually(
        lambda: _waiting_for_a_lock(journeys_db, "pg_advisory_xact_lock"), "the resume's sync waits"
    )
    gate.set()
    await pausing
    await resuming
    try:
        description = await described(client, key)
        assert description is not None and not description.schedule.state.paused
    finally:
        await sync(client, worker_settings.temporal_task_queue, TENANT_ACME, key, 1, None, "archived")


async def _waiting_for_a_lock(db: Database, statement: str) -> bool:
    async with db.pool.acquire() as conn:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            f"%{statement}%",
        )
    return bool(waiting)


async def test_a_triggered_schedule_broadcasts_to_a_new_snapshot_and_skips_while_it_runs(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    ids, audience_id = await audience_of(unlimited, 40)
    definition = scheduled(audience_id, "0 9 1 1 *", HELLO, LINGER, BYE)
    version = await stored_active(journeys_db, definition)
    await broadcasts.sync_schedule(client, queue, TENANT_ACME, definition.key, version, definition, "active")
    handle = client.get_schedule_handle(schedule_id(TENANT_ACME, definition.key))
    try:
        async with running(dev_server_env, worker_settings, unlimited):
            await handle.trigger()

            async def everyone_messaged() -> bool:
                return set(delivered(provider, ids)) == set(ids)

            await eventually(everyone_messaged, "did the scheduled broadcast reach every member")
            # The cohort lingers, so the broadcast still runs: the next trigger is skipped.
            await handle.trigger()

            async def skipped() -> ScheduleDescription | None:
                description = await handle.describe()
                return description if description.info.num_actions_skipped_overlap else None

            description = await eventually(skipped, "did the schedule skip the overlapping run")
            assert description.info.num_actions == 1 and description.info.num_actions_skipped_overlap == 1
            (running_run,) = description.info.running_actions
            assert isinstance(running_run, ScheduleActionExecutionStartWorkflow)
            run = client.get_workflow_handle_for(
                BroadcastRunWorkflow.run, running_run.workflow_id, run_id=running_run.first_execution_run_id
            )
            (cohort,) = await cohorts_of(journeys_db, definition.key)
            # Stopping the cohort (once it waits for its members' day to pass) ends the run.
            cohort_run = client.get_workflow_handle(cohort["workflow_id"])
            await until_asleep(cohort_run, "the lingering step")
            await cohort_run.cancel()
            outcome = await run.result()
            await keep_history(run, "broadcast_run_scheduled_and_stopped")
    finally:
        await broadcasts.sync_schedule(
            client, queue, TENANT_ACME, definition.key, version, definition, "archived"
        )
    assert running_run.workflow_id.startswith(f"broadcast/{TENANT_ACME}/{definition.key}/scheduled-")
    (snapshot,) = await snapshots_of(journeys_db, audience_id)
    assert snapshot["member_count"] == 40 and snapshot["request_id"] == snapshot_request_id(
        running_run.workflow_id
    )
    assert outcome == BroadcastOutcome(
        definition.key,
        version,
        snapshot=f"snapshots/{snapshot['snapshot_id']}",
        cohort_workflow_id=f"journey/{definition.key}/snapshot/{snapshot['snapshot_id']}",
        state="stopped",
        cohort_id=cohort["cohort_id"],
    )
    assert cohort["workflow_id"] == outcome.cohort_workflow_id
    assert set(delivered(provider, ids).values()) == {1}


async def test_start_broadcast_starts_one_run_and_one_snapshot_per_request_id(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    ids, audience_id = await audience_of(unlimited, 30)
    definition = broadcast(audience_id, HELLO)
    version = await stored_active(journeys_db, definition)
    request_id = unique("req")

    async def start(for_version: int = version) -> broadcasts.StartedBroadcast:
        return await broadcasts.start_broadcast(
            client, queue, TENANT_ACME, definition.key, for_version, request_id
        )

    async with running(dev_server_env, worker_settings, unlimited):
        started = await asyncio.gather(*(start() for _ in range(4)))
        assert len(set(started)) == 1
        (one,) = set(started)
        handle = client.get_workflow_handle_for(BroadcastRunWorkflow.run, one.workflow_id, run_id=one.run_id)
        outcome = await handle.result()
        await keep_history(handle, "broadcast_run_to_a_new_snapshot")
        # Once the run ended, the request id still names it.
        assert await start() == one
        with pytest.raises(AlreadyExists, match="version"):
            await start(version + 1)
    assert one.workflow_id == f"broadcast/{TENANT_ACME}/{definition.key}/request/{request_id}"
    (snapshot,) = await snapshots_of(journeys_db, audience_id)
    assert (outcome.state, outcome.snapshot) == ("completed", f"snapshots/{snapshot['snapshot_id']}")
    assert delivered(provider, ids) == Counter({member_id: 1 for member_id in ids})
    assert len(await cohorts_of(journeys_db, definition.key)) == 1
    with pytest.raises(InvalidArgument, match="request_id"):
        await broadcasts.start_broadcast(client, queue, TENANT_ACME, definition.key, version, "")


async def test_a_fixed_snapshot_is_broadcast_once(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    ids, audience_id, frozen = await snapshot_population(unlimited, 25)
    definition = broadcast(audience_id, HELLO, entry=Entry(broadcast=Broadcast(snapshot=frozen.name)))
    version = await stored_active(journeys_db, definition)

    async def run_for(request_id: str, history: str = "") -> BroadcastOutcome:
        started = await broadcasts.start_broadcast(
            client, queue, TENANT_ACME, definition.key, version, request_id
        )
        handle = client.get_workflow_handle_for(BroadcastRunWorkflow.run, started.workflow_id)
        outcome = await handle.result()
        if history:
            await keep_history(handle, history)
        return outcome

    async with running(dev_server_env, worker_settings, unlimited):
        first = await run_for(unique("req"))
        second = await run_for(unique("req"), "broadcast_run_snapshot_broadcast_already")
    cohort_id = f"journey/{definition.key}/snapshot/{frozen.name.removeprefix('snapshots/')}"
    assert (first.state, first.snapshot, first.cohort_workflow_id) == ("completed", frozen.name, cohort_id)
    assert (second.state, second.cohort_workflow_id) == ("not_started", cohort_id)
    assert "broadcast already" in second.detail
    assert delivered(provider, ids) == Counter({member_id: 1 for member_id in ids})
    assert await snapshots_of(journeys_db, audience_id) == [
        {
            "snapshot_id": frozen.name.removeprefix("snapshots/"),
            "request_id": frozen.request_id,
            "member_count": 25,
        }
    ]


async def test_a_journey_that_is_not_active_takes_no_snapshot(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    _, audience_id = await audience_of(unlimited, 5)
    definition = broadcast(audience_id, HELLO)
    version = await stored_active(journeys_db, definition)
    await move(journeys_db, definition.key, "paused")
    async with running(dev_server_env, worker_settings, unlimited):
        started = await broadcasts.start_broadcast(
            client, queue, TENANT_ACME, definition.key, version, unique("r")
        )
        outcome = await client.get_workflow_handle_for(BroadcastRunWorkflow.run, started.workflow_id).result()
    assert (outcome.state, outcome.snapshot, outcome.detail) == (
        "not_started",
        "",
        f"journey {definition.key!r} is paused, not active",
    )
    assert await snapshots_of(journeys_db, audience_id) == []


async def test_a_version_that_is_not_live_takes_no_snapshot(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
) -> None:
    """A run of a stored version never made live (a leftover schedule, `temporal workflow start`)
    broadcasts nothing; its cohort's `open` would refuse it too."""
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    _, audience_id = await audience_of(unlimited, 5)
    definition = broadcast(audience_id, HELLO)
    await stored_active(journeys_db, definition)
    await store.put_definition(journeys_db, TENANT_ACME, dataclasses.replace(definition, name="v2"))
    async with running(dev_server_env, worker_settings, unlimited):
        started = await broadcasts.start_broadcast(client, queue, TENANT_ACME, definition.key, 2, unique("r"))
        outcome = await client.get_workflow_handle_for(BroadcastRunWorkflow.run, started.workflow_id).result()
    assert (outcome.state, outcome.snapshot, outcome.detail) == (
        "not_started",
        "",
        "version 2 is not live (version 1 is)",
    )
    assert await snapshots_of(journeys_db, audience_id) == []
    assert await cohorts_of(journeys_db, definition.key) == []


async def test_every_cron_validation_takes_is_a_schedule_temporal_takes(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    for cron in GOOD_CRONS:
        definition = scheduled(unique("aud"), cron, HELLO)
        validate(definition)
        try:
            await broadcasts.sync_schedule(
                client, queue, TENANT_ACME, definition.key, 1, definition, "active"
            )
            description = await described(client, definition.key)
            assert description is not None and description.info.next_action_times, cron
        finally:
            await broadcasts.sync_schedule(client, queue, TENANT_ACME, definition.key, 1, None, "archived")


async def test_a_schedule_temporal_refuses_is_a_failed_precondition_and_the_state_stays(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings, journeys_db: Database
) -> None:
    """A version stored before validation knew better (written here without validation): the
    activation commits, the sync is refused and the call says so; the journey can still be archived."""
    client = dev_server_env.client
    journeys = Lifecycle(journeys_db, client, worker_settings.temporal_task_queue)
    definition = scheduled(unique("aud"), "61 * * * *", HELLO)
    async with journeys_db.transaction(TENANT_ACME) as conn:
        await store.add_version(conn, TENANT_ACME, definition, None)
    with pytest.raises(FailedPrecondition, match="Temporal refuses its schedule"):
        await journeys.activate(TENANT_ACME, definition.key)
    assert (await states.get_state(journeys_db, TENANT_ACME, definition.key)).state == "active"
    assert await described(client, definition.key) is None
    assert (await journeys.archive(TENANT_ACME, definition.key)).state == "archived"
