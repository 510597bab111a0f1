"""The dispatcher on the dev server, against the real services and database: an order recorded through
tagging enrols the member into new-customer (its goal window from the order's paid time) and a
second order is its goal; entering a dynamic audience enrols into win-back; a worker restarted
mid-feed, with the round it lost dispatched again, enrols nobody twice; an order of a member of a
running broadcast converts the member in its cohort, once even when the round is dispatched again,
and an order of anyone else changes nothing there.

The dispatcher follows the feeds in wall-clock time (tagging's outbox, audience's maintainer), so
these tests wait for a state with a deadline; none of them compares a duration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.audience.helpers import in_batch
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.facts_helpers import stamp
from tests.waiting import eventually
from tests.workflows.cohort_helpers import broadcast, snapshot_population, until
from tests.workflows.cohort_helpers import members as cohort_members
from tests.workflows.cohort_helpers import start as start_broadcast
from tests.workflows.journey_helpers import activate, journey, keep_history, running, seed_member
from workflows.dispatcher import store as dispatch_store
from workflows.dispatcher.payloads import DispatcherFunnel, DispatcherInput, DispatcherStatus
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys import client, store
from workflows.journeys.cohort.payloads import CohortFunnel
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import (
    AudienceEntry,
    Entry,
    EventMatch,
    Goal,
    JourneyDefinition,
    Reentry,
    Send,
    Step,
    Wait,
)
from workflows.journeys.payloads import Funnel, JourneyInput
from workflows.journeys.shipped import NEW_CUSTOMER, WIN_BACK
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources


async def enrolments(db: Database, journey_key: str, member_id: str) -> list[dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT state, arm, gmv_minor, run_id, entry_event_id FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = $2 AND member_id = $3 ORDER BY entry_number""",
            TENANT_ACME,
            journey_key,
            member_id,
        )
    return [dict(row) for row in rows]


async def enrolled(db: Database, journey_key: str, member_id: str, state: str = "") -> list[dict[str, Any]]:
    """The member's enrolments once there is one (in `state`, when given)."""

    async def probe() -> list[dict[str, Any]] | None:
        rows = await enrolments(db, journey_key, member_id)
        return rows if rows and (not state or rows[-1]["state"] == state) else None

    return await eventually(probe, f"{member_id} in {journey_key} {state}")


@asynccontextmanager
async def dispatcher(
    env: WorkflowEnvironment, settings: Settings, db: Database, *keys: str, report_every_seconds: int = 0
) -> AsyncIterator[WorkflowHandle[DispatcherWorkflow, None]]:
    """A dispatcher of its own (own id, so own cursors) for the test's journeys, following the
    feeds from their end once a worker runs its first round; terminated afterwards."""
    dispatcher_id = unique("dispatcher")
    handle = await env.client.start_workflow(
        DispatcherWorkflow.run,
        DispatcherInput(
            tenant_id=TENANT_ACME,
            journey_keys=keys,
            idle_seconds=2,
            report_every_seconds=report_every_seconds,
        ),
        id=dispatcher_id,
        task_queue=settings.temporal_task_queue,
    )

    try:
        yield handle
    finally:
        await handle.terminate()


async def following(db: Database, dispatcher_id: str) -> dict[str, str]:
    """The dispatcher's cursors once its first round stored them (entries after them are its)."""

    async def stored() -> dict[str, str] | None:
        found = await dispatch_store.cursors(db, TENANT_ACME, dispatcher_id)
        return found if len(found) == 2 else None

    return await eventually(stored, "the dispatcher's cursors")


def tagging_stub(resources: Resources) -> tagging_service_pb2_grpc.TaggingServiceAsyncStub:
    return tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging)


async def record_order(
    resources: Resources, member_id: str, amount_minor: int, paid: dt.datetime | None = None
) -> str:
    order_id = unique("o")
    line = facts_pb2.OrderLine(
        line_id="1", sku="tea-1", category="tea", quantity=1, unit_price_minor=amount_minor
    )
    order = facts_pb2.Order(
        order_id=order_id,
        member_id=member_id,
        paid_time=stamp(paid or dt.datetime.now(dt.UTC)),
        amount_minor=amount_minor,
        lines=[line],
    )
    await tagging_stub(resources).RecordOrder(
        tagging_service_pb2.RecordOrderRequest(order=order), metadata=ACME
    )
    return order_id


async def test_a_first_order_enrols_into_new_customer_and_a_second_order_is_its_goal(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    await store.put_definition(journeys_db, TENANT_ACME, NEW_CUSTOMER)
    await activate(journeys_db, TENANT_ACME, NEW_CUSTOMER.key)
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(
            dev_server_env, worker_settings, journeys_db, NEW_CUSTOMER.key, report_every_seconds=1
        ) as d,
    ):
        await following(journeys_db, d.id)
        # Paid a minute before it reaches MemberOps: still news, and the goal window starts then.
        paid = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
        await record_order(resources, member_id, 9_800, paid)
        (entered,) = await enrolled(journeys_db, NEW_CUSTOMER.key, member_id)
        handle = dev_server_env.client.get_workflow_handle_for(
            JourneyWorkflow.run, client.workflow_id(TENANT_ACME, NEW_CUSTOMER.key, member_id)
        )
        started_with = await _input(dev_server_env, handle)
        # The order it entered on is no goal: the member stays in the journey.
        funnel = await eventually(lambda: _state(handle, "active"), "the member active")
        assert not funnel.converted
        await record_order(resources, member_id, 12_345)
        result = await handle.result()
        await keep_history(handle, "dispatched_new_customer")
        status = await eventually(lambda: _totals(d, "signalled", 1), "the signal in the dispatcher's totals")

        async def reported() -> DispatcherFunnel | None:
            shown: DispatcherFunnel = await d.query(DispatcherWorkflow.funnel)
            figures = {r.journey_key: r for r in shown.journeys}.get(NEW_CUSTOMER.key)
            return shown if figures and figures.treated.conversions + figures.holdout.conversions else None

        shown = await eventually(reported, "the conversion in the dispatcher's funnel")
    # Terminated by now: rounds that enrolled and signalled, reports of the journeys' figures.
    await keep_history(d, "dispatcher_enrols_and_signals")
    assert (result.state, result.converted, result.gmv_minor) == ("converted", True, 12_345)
    assert entered["entry_event_id"].startswith("tagging:")
    assert (started_with.entry_event_id, started_with.entry_time) == (entered["entry_event_id"], paid)
    (row,) = await enrolments(journeys_db, NEW_CUSTOMER.key, member_id)
    assert (row["state"], row["gmv_minor"], row["run_id"]) == ("converted", 12_345, entered["run_id"])
    assert status.totals.started >= 1
    assert [r.journey_key for r in shown.journeys] == [NEW_CUSTOMER.key]


async def test_entering_a_dynamic_audience_enrols_into_win_back(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    batch = unique("batch")
    audiences = audience_service_pb2_grpc.AudienceServiceStub(resources.audience)
    created = await audiences.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=unique("win-back"), rule=in_batch(batch), dynamic=True)
        ),
        metadata=ACME,
    )
    # The shipped win-back, watching this test's audience.
    win_back = dataclasses.replace(
        WIN_BACK, key=unique("win-back"), entry=Entry(audience=AudienceEntry(audience=created.audience_id))
    )
    await store.put_definition(journeys_db, TENANT_ACME, win_back)
    await activate(journeys_db, TENANT_ACME, win_back.key)
    member_id, outsider = unique(), unique()
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, win_back.key) as d,
    ):
        await following(journeys_db, d.id)
        await seed_member(resources.tagging, outsider, attributes={"batch": unique("batch")})
        await seed_member(resources.tagging, member_id, attributes={"batch": batch})
        (row,) = await enrolled(journeys_db, win_back.key, member_id)
        handle = dev_server_env.client.get_workflow_handle_for(
            JourneyWorkflow.run, client.workflow_id(TENANT_ACME, win_back.key, member_id)
        )
        # Its first step waits for 10:00 member-local.
        funnel = await eventually(lambda: _step(handle, "offer-hour"), "the offer's hour")
    assert row["entry_event_id"].startswith("audience:") and row["state"] == "active"
    assert funnel.arm == row["arm"]
    assert await enrolments(journeys_db, win_back.key, outsider) == []


async def _input(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> JourneyInput:
    """What the run was started with, as its history has it."""
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (request,) = await env.client.data_converter.decode(started.input.payloads, [JourneyInput])
    assert isinstance(request, JourneyInput)
    return request


async def _step(handle: WorkflowHandle[JourneyWorkflow, Funnel], step_id: str) -> Funnel | None:
    funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
    return funnel if funnel.current_step == step_id else None


async def _state(handle: WorkflowHandle[JourneyWorkflow, Funnel], state: str) -> Funnel | None:
    funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
    return funnel if funnel.state == state else None


async def _totals(
    handle: WorkflowHandle[DispatcherWorkflow, None], field: str, at_least: int
) -> DispatcherStatus | None:
    """The dispatcher's status once its totals count `at_least` of `field` (a round's counts are
    added when the round returns, which may be after its effects are visible)."""
    status: DispatcherStatus = await handle.query(DispatcherWorkflow.status)
    return status if getattr(status.totals, field) >= at_least else None


async def test_a_lost_round_dispatched_again_after_a_restart_enrols_nobody_twice(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    order_entry = Entry(event=EventMatch(kind="order"))
    stays = journey(Step(id="wait-1d", wait=Wait(duration="1d")), entry=order_entry)
    # Allows re-entry at once: only the entry event's own enrolment keeps a replay from entering again.
    again = journey(
        Step(id="hello", send=Send(template="hello")), entry=order_entry, reentry=Reentry("after_exit")
    )
    for definition in (stays, again):
        await store.put_definition(journeys_db, TENANT_ACME, definition)
        await activate(journeys_db, TENANT_ACME, definition.key)
    first, second, later = unique(), unique(), unique()
    for member_id in (first, second, later):
        await seed_member(resources.tagging, member_id)
    async with dispatcher(dev_server_env, worker_settings, journeys_db, stays.key, again.key) as d:
        dispatcher_id = d.id
        async with running(dev_server_env, worker_settings, resources):
            before = await following(journeys_db, dispatcher_id)
            for member_id in (first, second):
                await record_order(resources, member_id, 5_000)
            runs = {
                member_id: (
                    (await enrolled(journeys_db, stays.key, member_id))[0]["run_id"],
                    (await enrolled(journeys_db, again.key, member_id, "completed"))[0]["run_id"],
                )
                for member_id in (first, second)
            }
        # The worker is gone. What a crash before the round's commit leaves: the cursors where they
        # were before those orders, and no record of the runs the round started.
        async with journeys_db.transaction(TENANT_ACME) as conn:
            await conn.execute(
                """UPDATE journeys.dispatch_cursors SET cursor = $3
                   WHERE tenant_id = $1 AND dispatcher = $2 AND feed = 'tagging'""",
                TENANT_ACME,
                dispatcher_id,
                before["tagging"],
            )
            await conn.execute(
                "DELETE FROM journeys.dispatches WHERE tenant_id = $1 AND journey_key = ANY($2::text[])",
                TENANT_ACME,
                [stays.key, again.key],
            )
        await record_order(resources, later, 7_000)
        async with running(dev_server_env, worker_settings, resources):
            await enrolled(journeys_db, stays.key, later)
            await enrolled(journeys_db, again.key, later, "completed")
            # Both replayed orders skipped for both journeys, in the round that started `later`'s.
            await eventually(lambda: _totals(d, "skipped", 4), "the replay's skips")
            histories = {
                member_id: [
                    execution.run_id
                    async for execution in dev_server_env.client.list_workflows(
                        f'WorkflowId="{client.workflow_id(TENANT_ACME, again.key, member_id)}"'
                    )
                ]
                for member_id in (first, second)
            }
    # One run across two workers, the second redoing a lost round.
    await keep_history(d, "dispatcher_round_lost_and_redone")
    for member_id in (first, second):
        (stayed,) = await enrolments(journeys_db, stays.key, member_id)
        (entered,) = await enrolments(journeys_db, again.key, member_id)
        assert (stayed["run_id"], entered["run_id"]) == runs[member_id]
        assert (stayed["state"], entered["state"]) == ("active", "completed")
    # The replayed orders were recognised without asking Temporal for a run.
    assert all(len(ids) == 1 for ids in histories.values()), histories
    assert [len(await enrolments(journeys_db, key, later)) for key in (stays.key, again.key)] == [1, 1]


async def test_an_entry_event_enrols_once_even_where_re_entry_is_allowed(journeys_db: Database) -> None:
    definition = journey(Step(id="hello", send=Send(template="hello")), reentry=Reentry("after_exit"))
    await store.put_definition(journeys_db, TENANT_ACME, definition)
    await activate(journeys_db, TENANT_ACME, definition.key)
    member_id, now = unique(), dt.datetime.now(dt.UTC)

    async def enrol(run_id: str, event_id: str) -> store.EnrolmentRow | store.Refusal:
        workflow_id = client.workflow_id(TENANT_ACME, definition.key, member_id)
        return await store.enrol(
            journeys_db, TENANT_ACME, definition, 1, member_id, workflow_id, run_id, "treated", now, event_id
        )

    first = await enrol("run-1", "tagging:1-1")
    assert isinstance(first, store.EnrolmentRow)
    await store.finish(journeys_db, TENANT_ACME, first.enrolment_id, "completed", now, None, 0)
    assert await enrol("run-2", "tagging:1-1") == store.Refusal("entered this journey on this event already")
    again = await enrol("run-3", "tagging:1-2")
    assert isinstance(again, store.EnrolmentRow) and again.entry_number == 2


@asynccontextmanager
async def broadcasting(
    env: WorkflowEnvironment, settings: Settings, db: Database, definition: JourneyDefinition, snapshot: str
) -> AsyncIterator[WorkflowHandle[CohortJourneyWorkflow, CohortFunnel]]:
    """The broadcast's cohort (activated and started), terminated afterwards: on the dev server its
    members would wait in real time."""
    handle = await start_broadcast(env, settings, db, definition, snapshot)
    try:
        yield handle
    finally:
        await handle.terminate()


async def test_an_order_converts_a_broadcast_member_in_its_cohort_once_and_an_outsiders_changes_nothing(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    ids, audience_id, frozen = await snapshot_population(resources, 4)
    outsider = unique()
    await seed_member(resources.tagging, outsider)
    # Its members wait a day in the cohort; an order within three days of entering is its goal.
    definition = broadcast(
        audience_id,
        Step(id="wait-1d", wait=Wait(duration="1d")),
        goal=Goal(event=EventMatch(kind="order"), attribution="3d"),
    )
    buyer, later = ids[0], ids[1]
    async with (
        dispatcher(dev_server_env, worker_settings, journeys_db, definition.key) as d,
        broadcasting(dev_server_env, worker_settings, journeys_db, definition, frozen.name) as cohort,
    ):
        async with running(dev_server_env, worker_settings, resources):
            before = await following(journeys_db, d.id)
            await until(cohort, "all four in", lambda f: f.state == "active" and _entered(f) == 4)
            # The outsider's order is dispatched before (or in the same round as) the buyer's.
            await record_order(resources, outsider, 5_000)
            await record_order(resources, buyer, 12_345)
            converted = await until(cohort, "the buyer converted", lambda f: _converted(f) == 1)
            first = await eventually(lambda: _totals(d, "cohort_signals", 1), "the cohort's signal")
        # The worker is gone. A crash before the round's commit: the orders are dispatched again.
        async with journeys_db.transaction(TENANT_ACME) as conn:
            await conn.execute(
                """UPDATE journeys.dispatch_cursors SET cursor = $3
                   WHERE tenant_id = $1 AND dispatcher = $2 AND feed = 'tagging'""",
                TENANT_ACME,
                d.id,
                before["tagging"],
            )
        # Dispatched after the replayed ones: once it is in, so are they.
        await record_order(resources, later, 2_000)
        async with running(dev_server_env, worker_settings, resources):
            again = await until(cohort, "the later buyer converted", lambda f: _converted(f) == 2)
            status = await eventually(lambda: _totals(d, "cohort_signals", 2), "the later signal")
        rows = await cohort_members(journeys_db, again.cohort_id)
    # Only the buyer's order reached the cohort; the outsider is in no cohort of the journey.
    assert (first.totals.cohort_signals, first.totals.signalled, first.totals.started) == (1, 0, 0)
    assert (converted.events_ignored, converted.pending_events) == (0, 0)
    assert outsider not in rows and set(rows) == set(ids)
    # The replayed order was not signalled again: a converted member is no longer active there.
    assert (status.totals.cohort_signals, again.events_ignored) == (2, 0)
    # Each converted once, with the order's amount, in the member's own arm; the others still in.
    for funnel, bought in ((converted, {buyer: 12_345}), (again, {buyer: 12_345, later: 2_000})):
        expected: Counter[tuple[str, str]] = Counter()
        for member_id, amount in bought.items():
            arm = "holdout" if rows[member_id]["holdout"] else "treated"
            expected.update({(arm, "converted"): 1, (arm, "gmv"): amount})
        shown = {
            (arm, name): getattr(figures, name if name == "converted" else "gmv_minor")
            for arm, figures in (("treated", funnel.treated), ("holdout", funnel.holdout))
            for name in ("converted", "gmv")
        }
        assert +Counter(shown) == expected
    states = {m: (row["state"], row["gmv_minor"]) for m, row in rows.items()}
    assert states == {
        buyer: ("converted", 12_345),
        later: ("converted", 2_000),
        **{m: ("active", 0) for m in ids[2:]},
    }


def _entered(funnel: CohortFunnel) -> int:
    return funnel.treated.entered + funnel.holdout.entered


def _converted(funnel: CohortFunnel) -> int:
    return funnel.treated.converted + funnel.holdout.converted
