"""Journey states on a worker: a draft enrols nobody, activation enrols, a pause holds running members
before their next step and refuses new ones, resuming continues them, archiving lets them finish or
stops them, and a pause racing an enrolment never leaves an enrolled member unpaused.

The races are ordered by the database's locks, not by timing: a gate holds one side inside its
transaction until the other is seen waiting for the row lock in pg_stat_activity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Connection, Database
from runtime.errors import Aborted, FailedPrecondition, NotFound
from services.journeys import request_store
from services.journeys.lifecycle import Lifecycle
from tests.conftest import TENANT_ACME, TENANT_GLOBEX, unique
from tests.waiting import eventually
from tests.workflows import cohort_helpers
from tests.workflows.journey_helpers import figures, journey, running, seed_member
from tests.workflows.test_dispatcher import dispatcher, enrolled, enrolments, following, record_order
from workflows.journeys import client, states, store
from workflows.journeys.cohort import store as cohort_store
from workflows.journeys.control.payloads import ControlResult, control_workflow_id
from workflows.journeys.definition import Entry, EventMatch, JourneyDefinition, Send, Step, Wait
from workflows.journeys.payloads import Funnel, JourneyInput
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

STEPS = (Step(id="wait-1d", wait=Wait(duration="1d")), Step(id="hello", send=Send(template="hello")))


def lifecycle(env: WorkflowEnvironment, settings: Settings, db: Database) -> Lifecycle:
    return Lifecycle(db, env.client, settings.temporal_task_queue)


async def start_member(
    env: WorkflowEnvironment, settings: Settings, definition: JourneyDefinition, member_id: str
) -> WorkflowHandle[JourneyWorkflow, Funnel]:
    """A member run started by hand, without a version (the live one)."""
    return await client.start_member_journey(
        env.client,
        settings.temporal_task_queue,
        definition,
        JourneyInput(tenant_id=TENANT_ACME, journey_key=definition.key, member_id=member_id),
    )


async def refused_run(env: WorkflowEnvironment, handle: WorkflowHandle[JourneyWorkflow, Funnel]) -> Funnel:
    """The funnel of a run that enrols nobody, awaited with time skipping kept locked. Awaiting a
    time-skipping handle's result unlocks it until the SDK locks it again, one RPC after the run
    closed; in between nothing holds the lock and the test server skips through every timer of
    the other runs: a member waiting a day goes on, and a paused member (no timer but its 10-year
    execution timeout) times out. A refused run needs no time to pass."""
    with env.auto_time_skipping_disabled():
        return await handle.result()


async def until(handle: WorkflowHandle[Any, Any], what: str, holds: Callable[[Funnel], bool]) -> Funnel:
    async def reached() -> Funnel | None:
        funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
        return funnel if holds(funnel) else None

    return await eventually(reached, what)


async def controlled(
    env: WorkflowEnvironment, key: str, state: states.JourneyState, action: str
) -> ControlResult:
    """The result of the control run the transition started."""
    workflow_id = control_workflow_id(TENANT_ACME, key, state.revision, action)  # type: ignore[arg-type]
    result: ControlResult = await env.client.get_workflow_handle(
        workflow_id, result_type=ControlResult
    ).result()
    return result


async def stored(db: Database, *steps: Step, **changes: Any) -> JourneyDefinition:
    definition = journey(*(steps or STEPS), **changes)
    await store.put_definition(db, TENANT_ACME, definition)
    return definition


async def active(
    env: WorkflowEnvironment, settings: Settings, resources: Resources, db: Database
) -> tuple[JourneyDefinition, str, Lifecycle]:
    """An active journey, a member in tagging to run it, and the lifecycle that moves it."""
    definition = await stored(db)
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    journeys = lifecycle(env, settings, db)
    await journeys.activate(TENANT_ACME, definition.key)
    return definition, member_id, journeys


# --- states without a worker ------------------------------------------------------------------


async def test_moves_follow_draft_active_paused_archived_and_repeats_change_nothing(
    journeys_db: Database,
) -> None:
    definition = await stored(journeys_db)
    key, now = definition.key, dt.datetime.now(dt.UTC)

    async def move(to_state: str, version: int = 0) -> states.JourneyState:
        return await states.transition(journeys_db, TENANT_ACME, key, to_state, version, now)

    assert await states.get_state(journeys_db, TENANT_ACME, key) == states.draft(key)
    with pytest.raises(FailedPrecondition, match="only an active journey can be paused"):
        await move("paused")
    active = await move("active")
    assert (active.state, active.live_version, active.revision) == ("active", 1, 1)
    assert await move("active", 1) == active
    # A new version goes live while active; resuming a paused journey keeps its live version.
    await store.put_definition(journeys_db, TENANT_ACME, journey(*STEPS[:1], key=key))
    assert (await move("active")).live_version == 2
    paused = await move("paused")
    assert await move("paused") == paused
    with pytest.raises(FailedPrecondition, match="resume it before another version"):
        await move("active", 1)
    with pytest.raises(FailedPrecondition, match="only activation takes a version"):
        await move("paused", 2)
    resumed = await move("active")
    assert (resumed.state, resumed.live_version, resumed.revision) == ("active", 2, paused.revision + 1)
    archived = await move("archived")
    assert await move("archived") == archived
    for to_state in ("active", "paused"):
        with pytest.raises(FailedPrecondition, match="archived"):
            await move(to_state)
    with pytest.raises(FailedPrecondition):
        await move("draft")
    assert await states.get_state(journeys_db, TENANT_ACME, key) == archived


async def test_a_resume_arriving_after_a_newer_activation_keeps_it(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    journeys_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resume called while the journey was paused with version 1, landing after another operator
    resumed and made version 2 live: any read of the state outside the transition's lock is stale
    (here every such read answers what the late resume saw)."""
    definition = await stored(journeys_db)
    journeys = lifecycle(time_skipping_env, worker_settings, journeys_db)
    await journeys.activate(TENANT_ACME, definition.key)
    seen = await journeys.pause(TENANT_ACME, definition.key)
    await journeys.resume(TENANT_ACME, definition.key)
    await store.put_definition(journeys_db, TENANT_ACME, journey(*STEPS[:1], key=definition.key))
    newer = await journeys.activate(TENANT_ACME, definition.key, 2)

    async def stale(db: Database, tenant_id: str, key: str) -> states.JourneyState:
        return seen

    monkeypatch.setattr(states, "get_state", stale)
    assert await journeys.resume(TENANT_ACME, definition.key) == newer
    assert (newer.state, newer.live_version) == ("active", 2)


async def test_activation_with_version_0_makes_live_only_the_version_it_checked(
    journeys_db: Database,
) -> None:
    definition = await stored(journeys_db)
    now = dt.datetime.now(dt.UTC)
    await store.put_definition(journeys_db, TENANT_ACME, journey(*STEPS[:1], key=definition.key))
    with pytest.raises(Aborted, match="version 2 live, not the version 1 that was checked"):
        await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 0, now, checked=1)
    assert (await states.get_state(journeys_db, TENANT_ACME, definition.key)).state == "draft"
    live = await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 0, now, checked=2)
    assert live.live_version == 2


async def test_unknown_journeys_and_versions_are_not_found(journeys_db: Database) -> None:
    definition = await stored(journeys_db)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(NotFound):
        await states.get_state(journeys_db, TENANT_ACME, unique("missing"))
    with pytest.raises(NotFound):
        await states.transition(journeys_db, TENANT_ACME, unique("missing"), "active", 0, now)
    with pytest.raises(NotFound):
        await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 7, now)
    assert await states.get_state(journeys_db, TENANT_ACME, definition.key) == states.draft(definition.key)


async def test_live_definitions_are_the_live_versions_of_the_states_asked_for(journeys_db: Database) -> None:
    drafted, live, paused = [await stored(journeys_db) for _ in range(3)]
    now = dt.datetime.now(dt.UTC)
    for definition in (live, paused):
        await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 1, now)
        await store.put_definition(journeys_db, TENANT_ACME, journey(*STEPS[:1], key=definition.key))
    await states.transition(journeys_db, TENANT_ACME, paused.key, "paused", 0, now)
    keys = (drafted.key, live.key, paused.key)
    active = await states.live_definitions(journeys_db, TENANT_ACME, keys)
    assert [(s.definition, s.version, st.state) for s, st in active] == [(live, 1, "active")]
    following = await states.live_definitions(
        journeys_db, TENANT_ACME, keys, ("active", "paused", "archived")
    )
    assert sorted((st.journey_key, s.version) for s, st in following) == sorted(
        [(live.key, 1), (paused.key, 1)]
    )
    found = await states.get_states(journeys_db, TENANT_ACME, keys)
    assert [found[k].state for k in keys] == ["draft", "active", "paused"]
    # A run without a version takes the live one, not the latest (2).
    assert (await states.live_definition(journeys_db, TENANT_ACME, live.key)).version == 1
    assert (await states.live_definition(journeys_db, TENANT_ACME, drafted.key)).version == 1


async def test_only_the_live_version_enrols_members_and_opens_cohorts(journeys_db: Database) -> None:
    """A stored version never made live (or replaced) takes no one, whoever starts a run of it."""
    definition = await stored(journeys_db)
    await store.put_definition(journeys_db, TENANT_ACME, journey(*STEPS[:1], key=definition.key))
    now = dt.datetime.now(dt.UTC)
    await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 1, now)

    async def enrol(version: int) -> store.EnrolmentRow | store.Refusal:
        return await store.enrol(
            journeys_db,
            TENANT_ACME,
            definition,
            version,
            unique("m"),
            unique("wf"),
            unique("run"),
            "treated",
            now,
        )

    async def open_cohort(version: int) -> tuple[cohort_store.Cohort, bool] | str:
        workflow_id = unique("wf")
        return await cohort_store.open_cohort(
            journeys_db, TENANT_ACME, definition.key, version, unique("snap"), workflow_id, unique("run"), now
        )

    assert await enrol(2) == store.Refusal("version 2 is not live (version 1 is)")
    assert await open_cohort(2) == "version 2 is not live (version 1 is)"
    assert isinstance(await enrol(1), store.EnrolmentRow)
    opened = await open_cohort(1)
    assert not isinstance(opened, str) and opened[1]
    await states.transition(journeys_db, TENANT_ACME, definition.key, "active", 2, now)
    assert await enrol(1) == store.Refusal("version 1 is not live (version 2 is)")
    assert await open_cohort(1) == "version 1 is not live (version 2 is)"


async def test_seeded_journeys_are_drafts_and_reseeding_keeps_an_operators_state(
    journeys_db: Database,
) -> None:
    shipped, kept = journey(*STEPS), journey(*STEPS)
    await store.seed_definitions(journeys_db, frozenset({TENANT_ACME}), (shipped, kept))
    now = dt.datetime.now(dt.UTC)
    active = await states.transition(journeys_db, TENANT_ACME, kept.key, "active", 0, now)
    await store.seed_definitions(journeys_db, frozenset({TENANT_ACME}), (shipped, kept))
    found = await states.get_states(journeys_db, TENANT_ACME, [shipped.key, kept.key])
    assert found == {shipped.key: states.draft(shipped.key), kept.key: active}


# --- on a worker --------------------------------------------------------------------------------


async def test_a_draft_enrols_nobody_and_activation_enrols(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition = await stored(journeys_db)
    # The same member once the journey is active: a run refused on the draft enrolled nobody, so it
    # keeps nobody out (the journey allows no re-entry, and the enrolment row is what holds that).
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    journeys = lifecycle(time_skipping_env, worker_settings, journeys_db)
    async with running(time_skipping_env, worker_settings, resources):
        drafted = await refused_run(
            time_skipping_env, await start_member(time_skipping_env, worker_settings, definition, member_id)
        )
        active = await journeys.activate(TENANT_ACME, definition.key)
        assert await journeys.activate(TENANT_ACME, definition.key) == active
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        funnel = await handle.result()
    assert (drafted.state, drafted.detail) == ("not_enrolled", "journey is not active")
    assert (funnel.state, funnel.version) == ("completed", 1)
    assert figures(funnel, "hello")["entered"] == 1


async def test_a_pause_holds_running_members_before_their_next_step_and_refuses_new_ones(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition, member_id, journeys = await active(time_skipping_env, worker_settings, resources, journeys_db)
    newcomer = unique()
    await seed_member(resources.tagging, newcomer)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        await until(handle, "the member waits a day", lambda f: f.current_step == "wait-1d")
        paused = await journeys.pause(TENANT_ACME, definition.key)
        assert await journeys.pause(TENANT_ACME, definition.key) == paused
        assert await controlled(time_skipping_env, definition.key, paused, "pause") == ControlResult(
            members=1
        )
        await until(handle, "the member is paused", lambda f: f.state == "paused")
        newcomers = await refused_run(
            time_skipping_env, await start_member(time_skipping_env, worker_settings, definition, newcomer)
        )
        # Two days later the wait is over, and the member still holds before `hello`.
        await time_skipping_env.sleep(dt.timedelta(days=2))
        held = await handle.query(JourneyWorkflow.funnel)
        resumed = await journeys.resume(TENANT_ACME, definition.key)
        assert await controlled(time_skipping_env, definition.key, resumed, "resume") == ControlResult(
            members=1
        )
        funnel = await handle.result()
    assert (held.state, held.current_step, [s.step_id for s in held.steps]) == (
        "paused",
        "wait-1d",
        ["wait-1d"],
    )
    assert (newcomers.state, newcomers.detail) == ("not_enrolled", "journey is not active")
    assert (resumed.state, resumed.live_version, resumed.revision) == ("active", 1, paused.revision + 1)
    assert funnel.state == "completed" and figures(funnel, "hello")["entered"] == 1


async def test_a_pause_and_a_quick_resume_leave_running_members_going(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    definition, member_id, journeys = await active(time_skipping_env, worker_settings, resources, journeys_db)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        await until(handle, "the member waits a day", lambda f: f.current_step == "wait-1d")
        paused = await journeys.pause(TENANT_ACME, definition.key)
        resumed = await journeys.resume(TENANT_ACME, definition.key)
        # Whichever control run signals first, the resume's signals come last (or the pause's run
        # saw the newer revision and sent nothing).
        results = [
            await controlled(time_skipping_env, definition.key, paused, "pause"),
            await controlled(time_skipping_env, definition.key, resumed, "resume"),
        ]
        held = await handle.query(JourneyWorkflow.funnel)
        funnel = await handle.result()
    assert results[1] == ControlResult(members=1)
    assert results[0] in (ControlResult(members=1), ControlResult(superseded=True))
    assert held.state == "active" and funnel.state == "completed"


@pytest.mark.parametrize("stop_running", [False, True])
async def test_archiving_lets_running_members_finish_or_stops_them(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    stop_running: bool,
) -> None:
    definition, member_id, journeys = await active(time_skipping_env, worker_settings, resources, journeys_db)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        await until(handle, "the member waits a day", lambda f: f.current_step == "wait-1d")
        archived = await journeys.archive(TENANT_ACME, definition.key, stop_running=stop_running)
        action = "stop" if stop_running else "resume"
        assert await controlled(time_skipping_env, definition.key, archived, action) == ControlResult(
            members=1
        )
        newcomers = await refused_run(
            time_skipping_env, await start_member(time_skipping_env, worker_settings, definition, unique())
        )
        funnel = await handle.result()
        with pytest.raises(FailedPrecondition):
            await journeys.resume(TENANT_ACME, definition.key)
    rows = await enrolments(journeys_db, definition.key, member_id)
    assert newcomers.detail == "journey is not active"
    if stop_running:
        assert funnel.state == "stopped" and [r["state"] for r in rows] == ["stopped"]
    else:
        assert funnel.state == "completed" and figures(funnel, "hello")["entered"] == 1


async def test_illegal_moves_are_failed_preconditions(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, journeys_db: Database
) -> None:
    definition = await stored(journeys_db)
    journeys = lifecycle(time_skipping_env, worker_settings, journeys_db)
    for move in (journeys.pause, journeys.resume):
        with pytest.raises(FailedPrecondition):
            await move(TENANT_ACME, definition.key)
    await journeys.archive(TENANT_ACME, definition.key)
    with pytest.raises(FailedPrecondition):
        await journeys.activate(TENANT_ACME, definition.key)
    assert (await states.get_state(journeys_db, TENANT_ACME, definition.key)).state == "archived"


# --- a pause racing an enrolment ------------------------------------------------------------------


class Gate:
    """Holds a coroutine at a point until the test opens it."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.open.wait()


async def waiting_for_state_row(db: Database, statement: str) -> bool:
    """Whether a transaction waits for a row lock of journey_states in `statement`."""
    async with db.pool.acquire() as conn:
        waiting = await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND query LIKE '%journey_states%' AND query LIKE $1""",
            f"%{statement}%",
        )
    return bool(waiting)


async def test_an_enrolment_holding_the_state_row_is_paused_by_the_pause_that_waited_for_it(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definition, member_id, journeys = await active(time_skipping_env, worker_settings, resources, journeys_db)
    gate = Gate()
    entry_refusal: Callable[[Connection, str, str, int], Awaitable[store.Refusal | None]] = (
        store.entry_refusal
    )

    async def gated(conn: Connection, tenant_id: str, key: str, version: int) -> store.Refusal | None:
        refused = await entry_refusal(conn, tenant_id, key, version)  # holds the row FOR SHARE from here
        if key == definition.key:
            await gate.hold()
        return refused

    monkeypatch.setattr(store, "entry_refusal", gated)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        await asyncio.wait_for(gate.reached.wait(), 30)
        pausing = asyncio.create_task(journeys.pause(TENANT_ACME, definition.key))
        await eventually(lambda: waiting_for_state_row(journeys_db, "FOR UPDATE"), "the pause waits")
        gate.open.set()
        paused = await pausing
        assert await controlled(time_skipping_env, definition.key, paused, "pause") == ControlResult(
            members=1
        )
        funnel = await until(handle, "the member is paused", lambda f: f.state == "paused")
        await handle.cancel()
    assert funnel.current_step in ("", "wait-1d")


async def test_an_enrolment_waiting_for_a_pause_sees_it_and_enrols_nobody(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definition, member_id, journeys = await active(time_skipping_env, worker_settings, resources, journeys_db)
    gate = Gate()
    read_state = states.read_state

    async def gated(conn: Connection, tenant_id: str, key: str, lock: str = "") -> states.JourneyState:
        state = await read_state(conn, tenant_id, key, lock)  # the pause holds the row FOR UPDATE
        if lock == "UPDATE" and key == definition.key:
            await gate.hold()
        return state

    monkeypatch.setattr(states, "read_state", gated)
    async with running(time_skipping_env, worker_settings, resources):
        pausing = asyncio.create_task(journeys.pause(TENANT_ACME, definition.key))
        await asyncio.wait_for(gate.reached.wait(), 30)
        handle = await start_member(time_skipping_env, worker_settings, definition, member_id)
        await eventually(lambda: waiting_for_state_row(journeys_db, "FOR SHARE"), "the enrolment waits")
        gate.open.set()
        await pausing
        funnel = await handle.result()
    assert (funnel.state, funnel.detail) == ("not_enrolled", "journey is not active")
    assert await enrolments(journeys_db, definition.key, member_id) == []


# --- locks are per tenant --------------------------------------------------------------------------


async def _done_or_blocked(db: Database, work: Awaitable[object], holder: int) -> str:
    """Runs `work` while another tenant holds its lock on the backend `holder`: "done", or
    "blocked" once a backend waits for an advisory lock that backend holds. (Any advisory wait in
    the cluster was read as "blocked": in a full run, another test's recompute waiting for its
    dimension's lock was.)"""
    task = asyncio.ensure_future(work)

    async def seen() -> str | None:
        if task.done():
            return "done"
        async with db.pool.acquire() as conn:
            waiting = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'
                     AND $1::int = ANY (pg_blocking_pids(pid))""",
                holder,
            )
        return "blocked" if waiting else None

    outcome = await eventually(seen, "the other tenant's write finished or waited")
    if outcome == "done":
        task.result()
    return outcome


@pytest.mark.parametrize("lock", ["definition", "enrolment"])
async def test_a_tenant_never_waits_for_another_tenants_journey_locks(
    journeys_db: Database, monkeypatch: pytest.MonkeyPatch, lock: str
) -> None:
    """Acme holds the lock of its journey `key` (of its member `m`) inside put_definition (enrol);
    Globex's write of its own journey of the same key (member) goes ahead."""
    key, member_id, now = unique("j"), unique("m"), dt.datetime.now(dt.UTC)
    definition = journey(*STEPS, key=key)
    for tenant_id in (TENANT_ACME, TENANT_GLOBEX):
        await store.put_definition(journeys_db, tenant_id, definition)
        await states.transition(journeys_db, tenant_id, key, "active", 0, now)
    gate = Gate()
    held = {"definition": "latest_version", "enrolment": "entry_refusal"}[lock]
    inner = getattr(store, held)
    holders: list[int] = []

    async def holding(conn: Connection, tenant_id: str, *args: Any) -> Any:
        if tenant_id == TENANT_ACME:
            holders.append(conn.get_server_pid())
            await gate.hold()
        return await inner(conn, tenant_id, *args)

    monkeypatch.setattr(store, held, holding)

    async def write(tenant_id: str) -> object:
        if lock == "definition":
            return await store.put_definition(journeys_db, tenant_id, journey(*STEPS[:1], key=key))
        return await store.enrol(
            journeys_db, tenant_id, definition, 1, member_id, unique("wf"), unique("run"), "treated", now
        )

    acme = asyncio.ensure_future(write(TENANT_ACME))
    try:
        await asyncio.wait_for(gate.reached.wait(), 30)
        outcome = await _done_or_blocked(journeys_db, write(TENANT_GLOBEX), holders[0])
    finally:
        gate.open.set()
        await acme
    assert outcome == "done"


async def test_a_tenant_never_waits_for_another_tenants_request_id(journeys_db: Database) -> None:
    request_id = unique("req")
    async with journeys_db.transaction(TENANT_ACME) as conn:
        await request_store.lock(conn, TENANT_ACME, request_id)

        async def other() -> None:
            async with journeys_db.transaction(TENANT_GLOBEX) as theirs:
                await request_store.lock(theirs, TENANT_GLOBEX, request_id)

        assert await _done_or_blocked(journeys_db, other(), conn.get_server_pid()) == "done"


# --- the dispatcher -----------------------------------------------------------------------------


async def test_the_dispatcher_enrols_into_active_journeys_only(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    order_entry = Entry(event=EventMatch(kind="order"))
    live, drafted, paused = [await stored(journeys_db, *STEPS, entry=order_entry) for _ in range(3)]
    journeys = lifecycle(dev_server_env, worker_settings, journeys_db)
    for definition in (live, paused):
        await journeys.activate(TENANT_ACME, definition.key)
    await journeys.pause(TENANT_ACME, paused.key)
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    keys = (live.key, drafted.key, paused.key)
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, *keys) as d,
    ):
        await following(journeys_db, d.id)
        await record_order(resources, member_id, 5_000)
        await enrolled(journeys_db, live.key, member_id)
        # The round that started it is committed with everything it dispatched.
        dispatched = await eventually(lambda: dispatched_keys(journeys_db, member_id), "the round's record")
        handle = dev_server_env.client.get_workflow_handle(
            client.workflow_id(TENANT_ACME, live.key, member_id)
        )
        await handle.cancel()
    assert dispatched == [live.key]
    for definition in (drafted, paused):
        assert await enrolments(journeys_db, definition.key, member_id) == []


async def dispatched_keys(db: Database, member_id: str) -> list[str]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT journey_key FROM journeys.dispatches WHERE tenant_id = $1 AND member_id = $2",
            TENANT_ACME,
            member_id,
        )
    return [row["journey_key"] for row in rows]


# --- cohorts (on the dev server: a broadcast journey's transition also syncs its schedule) --------


async def test_a_pause_holds_a_running_cohort_and_archiving_with_stop_stops_it(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    _, audience_id, frozen = await cohort_helpers.snapshot_population(resources, 5)
    definition = cohort_helpers.broadcast(audience_id, *STEPS)
    journeys = lifecycle(dev_server_env, worker_settings, journeys_db)
    async with running(dev_server_env, worker_settings, resources):
        handle = await cohort_helpers.start(
            dev_server_env, worker_settings, journeys_db, definition, frozen.name
        )
        await cohort_helpers.until(handle, "the wait", lambda f: cohort_helpers.step(f, "wait-1d") != {})
        paused = await journeys.pause(TENANT_ACME, definition.key)
        assert await controlled(dev_server_env, definition.key, paused, "pause") == ControlResult(cohorts=1)
        await cohort_helpers.until(handle, "the pause", lambda f: f.state == "paused")
        archived = await journeys.archive(TENANT_ACME, definition.key, stop_running=True)
        assert await controlled(dev_server_env, definition.key, archived, "stop") == ControlResult(cohorts=1)
        funnel = await handle.result()
    assert funnel.state == "stopped"
