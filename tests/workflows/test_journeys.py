"""The journey interpreter on the time-skipping server, against the real services, the real database,
a real SMTP server and a real HTTP provider: weeks of journey in seconds, goals, holdouts, caps,
quiet hours, retries that never send twice, pause/resume, stop, duplicate starts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2
from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.journey_helpers import (
    figures,
    journey,
    keep_history,
    member_in,
    phone_of,
    running,
    seed_member,
    start,
)
from tests.workflows.test_dispatcher import _state
from workflows.journeys import client, states
from workflows.journeys.control.payloads import ControlInput, ControlResult, control_workflow_id
from workflows.journeys.control.workflow import JourneyControlWorkflow
from workflows.journeys.definition import (
    AddTag,
    Award,
    EventMatch,
    Goal,
    QuietHours,
    Send,
    Step,
    Wait,
    WaitForEvent,
)
from workflows.journeys.payloads import Funnel, JourneyInput, MemberEvent
from workflows.journeys.workflow import JOURNEY, MEMBER, TENANT, JourneyWorkflow
from workflows.worker import Resources


async def messages(db: Database, member_id: str) -> list[dict[str, object]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT step_id, channel, status, attempts, local_day, update_time FROM journeys.messages
               WHERE tenant_id = $1 AND member_id = $2 ORDER BY create_time, step_id""",
            TENANT_ACME,
            member_id,
        )
    return [dict(row) for row in rows]


async def enrolment_state(db: Database, member_id: str) -> list[tuple[str, str, int]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT state, arm, gmv_minor FROM journeys.enrolments WHERE tenant_id = $1 AND member_id = $2",
            TENANT_ACME,
            member_id,
        )
    return [(row["state"], row["arm"], row["gmv_minor"]) for row in rows]


async def strategy_dimension(resources: Resources) -> str:
    name = unique("strategy").replace("-", "_")
    request = tagging_service_pb2.CreateTagDefinitionRequest(
        tag_definition=tags_pb2.TagDefinition(
            dimension=name,
            category=tags_pb2.TAG_CATEGORY_MARKETING,
            kind=tags_pb2.TAG_KIND_STRATEGY,
            refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
            cardinality=tags_pb2.CARDINALITY_MULTI,
            values=[tags_pb2.TagValue(value="nurtured")],
        )
    )
    await tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging).CreateTagDefinition(
        request, metadata=ACME
    )
    return name


async def test_a_thirty_day_journey_runs_in_seconds_and_sends_each_message_once(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    mailbox: fakes.MailBox,
    provider: fakes.Provider,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id, preferred="email", nickname="Mei")
    dimension = await strategy_dimension(resources)
    definition = journey(
        Step(id="welcome", send=Send(template="hello")),
        Step(id="wait-10d", wait=Wait(duration="10d")),
        Step(id="nudge", send=Send(template="hello", channel="sms")),
        Step(id="points", award=Award(points=50)),
        Step(id="mark", add_tag=AddTag(dimension=dimension, value="nurtured")),
        Step(id="wait-20d", wait=Wait(duration="20d")),
    )
    async with running(time_skipping_env, worker_settings, resources):
        started = await time_skipping_env.get_current_time()
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        funnel = await handle.result()
        finished = await time_skipping_env.get_current_time()
        await keep_history(handle, "thirty_day_journey")
    assert funnel.state == "completed" and funnel.arm == "treated"
    assert finished - started >= dt.timedelta(days=30)
    assert figures(funnel, "welcome") == {"entered": 1, "sent": 1}
    assert figures(funnel, "nudge") == {"entered": 1, "sent": 1}
    assert figures(funnel, "points") == {"entered": 1, "done": 1}
    (mail,) = mailbox.to(f"{member_id}@mail.test")
    assert (mail.subject, mail.body) == ("Hello Mei", "Hi Mei, welcome.")
    (sms,) = provider.to(phone_of(member_id))
    assert sms.body["body"] == "Hi Mei, welcome." and sms.authorization == "Bearer provider-key-0123456789"
    assert sms.idempotency_key == f"journey/{TENANT_ACME}/{definition.key}/member/{member_id}#1/nudge"
    assert [(m["step_id"], m["channel"], m["status"]) for m in await messages(journeys_db, member_id)] == [
        ("welcome", "email", "sent"),
        ("nudge", "sms", "sent"),
    ]
    tasks = tasks_service_pb2_grpc.TasksServiceStub(resources.tasks)
    balance = await tasks.GetBalance(tasks_service_pb2.GetBalanceRequest(member_id=member_id), metadata=ACME)
    assert balance.available == 50
    tagging = tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging)
    held = await tagging.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=ACME
    )
    assert (dimension, "nurtured") in {(t.dimension, t.value) for t in held.tags}
    assert await enrolment_state(journeys_db, member_id) == [("completed", "treated", 0)]


async def test_the_goal_exits_the_member_as_converted_and_nothing_more_is_sent(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(
        Step(id="welcome", send=Send(template="hello")),
        Step(
            id="wait-for-order",
            wait_for_event=WaitForEvent(event=EventMatch(kind="tag_added", dimension="x"), timeout="7d"),
        ),
        Step(id="reminder", send=Send(template="hello")),
        goal=Goal(event=EventMatch(kind="order"), attribution="14d"),
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await _until_step(handle, "wait-for-order")
        await handle.signal(
            JourneyWorkflow.event, MemberEvent(kind="order", subject_id="o-1", amount_minor=12_900)
        )
        funnel = await handle.result()
        await keep_history(handle, "goal_during_wait_for_event")
    assert (funnel.state, funnel.converted, funnel.gmv_minor) == ("converted", True, 12_900)
    assert [s.step_id for s in funnel.steps] == ["welcome", "wait-for-order"]
    assert len(provider.to(phone_of(member_id))) == 1
    assert await enrolment_state(journeys_db, member_id) == [("converted", "treated", 12_900)]


async def _until(handle: WorkflowHandle[Any, Any], what: str, holds: Callable[[Funnel], bool]) -> Funnel:
    """Queries the funnel until `holds` (a bounded wait for the worker's progress, no clock read
    by the assertions)."""

    async def reached() -> Funnel | None:
        funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
        return funnel if holds(funnel) else None

    return await eventually(reached, f"did the member get to {what}")


async def _until_step(handle: WorkflowHandle[Any, Any], step_id: str) -> Funnel:
    return await _until(handle, step_id, lambda funnel: funnel.current_step == step_id)


async def test_holdout_members_are_enrolled_and_measured_but_never_messaged(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    definition = journey(
        Step(id="offer", send=Send(template="hello")),
        Step(id="points", award=Award(points=10)),
        Step(id="wait-3d", wait=Wait(duration="3d")),
        Step(id="again", send=Send(template="hello")),
        holdout_percent=50,
        goal=Goal(event=EventMatch(kind="order"), attribution="10d"),
    )
    held, treated = member_in(definition, holdout=True), member_in(definition, holdout=False)
    for member_id in (held, treated):
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        held_handle = await start(time_skipping_env, worker_settings, journeys_db, definition, held)
        treated_handle = await start(time_skipping_env, worker_settings, journeys_db, definition, treated)
        await _until_step(held_handle, "wait-3d")
        await held_handle.signal(JourneyWorkflow.event, MemberEvent(kind="order", amount_minor=5_000))
        held_funnel, treated_funnel = await held_handle.result(), await treated_handle.result()
        await keep_history(held_handle, "holdout_converts")
    assert held_funnel.arm == "holdout" and held_funnel.converted and held_funnel.gmv_minor == 5_000
    assert figures(held_funnel, "offer") == {"entered": 1, "held_out": 1}
    assert figures(held_funnel, "points") == {"entered": 1, "held_out": 1}
    assert provider.to(phone_of(held)) == [] and await messages(journeys_db, held) == []
    assert treated_funnel.arm == "treated" and treated_funnel.state == "completed"
    assert len(provider.to(phone_of(treated))) == 2
    assert await enrolment_state(journeys_db, held) == [("converted", "holdout", 5_000)]


def _local_clock(moment: dt.datetime, zone: str, shift: dt.timedelta) -> str:
    return (moment.astimezone(ZoneInfo(zone)) + shift).strftime("%H:%M")


async def test_quiet_hours_defer_a_send_to_their_end_in_the_members_zone(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    member_id, zone = unique(), "America/New_York"
    await seed_member(resources.tagging, member_id, time_zone=zone)
    now = await time_skipping_env.get_current_time()
    # Quiet from an hour ago until three hours from now, member-local.
    quiet = QuietHours(
        start=_local_clock(now, zone, -dt.timedelta(hours=1)),
        end=_local_clock(now, zone, dt.timedelta(hours=3)),
    )
    definition = journey(Step(id="hello", send=Send(template="hello")), quiet_hours=quiet)
    async with running(time_skipping_env, worker_settings, resources):
        # No time skipped before the send is deferred: `now` must still be inside the quiet hours.
        with time_skipping_env.auto_time_skipping_disabled():
            handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
            await _until(handle, "the deferral", lambda funnel: bool(funnel.deferrals))
        funnel = await handle.result()
        await keep_history(handle, "quiet_hours_deferral")
    assert funnel.deferrals == {"quiet_hours": 1}
    assert figures(funnel, "hello") == {"entered": 1, "sent": 1, "deferred": 1}
    assert len(provider.to(phone_of(member_id))) == 1
    (row,) = await messages(journeys_db, member_id)
    # Sent when the quiet hours ended, member-local, not before and not dropped.
    sent = row["update_time"]
    assert isinstance(sent, dt.datetime)
    assert sent.astimezone(ZoneInfo(zone)).strftime("%H:%M") == quiet.end
    assert sent - now >= dt.timedelta(hours=2, minutes=59)


async def test_the_daily_cap_across_journeys_defers_to_the_members_next_day(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    first = journey(Step(id="a", send=Send(template="hello")), frequency_cap=1)
    second = journey(Step(id="b", send=Send(template="hello")), frequency_cap=1)
    async with running(time_skipping_env, worker_settings, resources):
        # Both sends fall on one local day: no time is skipped until the second one is deferred.
        with time_skipping_env.auto_time_skipping_disabled():
            one = await start(time_skipping_env, worker_settings, journeys_db, first, member_id)
            assert (await one.result()).state == "completed"
            two = await start(time_skipping_env, worker_settings, journeys_db, second, member_id)
            await _until(two, "the deferral", lambda funnel: bool(funnel.deferrals))
        funnel = await two.result()
    assert funnel.deferrals == {"frequency_cap": 1} and figures(funnel, "b")["sent"] == 1
    days = [row["local_day"] for row in await messages(journeys_db, member_id)]
    assert len(days) == 2 and days[1] == days[0] + dt.timedelta(days=1)  # type: ignore[operator]
    assert len(provider.to(phone_of(member_id))) == 2


async def test_the_channel_rate_limit_defers_to_the_next_window(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    limited = dataclasses.replace(
        resources, channels=dataclasses.replace(resources.channels, per_minute={"sms": 1})
    )
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(
        Step(id="a", send=Send(template="hello")), Step(id="b", send=Send(template="hello")), frequency_cap=5
    )
    async with running(time_skipping_env, worker_settings, limited):
        funnel = await (
            await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        ).result()
    assert funnel.deferrals.get("rate_limit", 0) >= 1
    assert figures(funnel, "a")["sent"] == figures(funnel, "b")["sent"] == 1
    a, b = await messages(journeys_db, member_id)
    assert a["update_time"].replace(second=0, microsecond=0) < b["update_time"]  # type: ignore[attr-defined]
    assert len(provider.to(phone_of(member_id))) == 2


async def test_a_send_the_provider_did_not_take_is_retried_and_delivered_once(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    provider.script(phone_of(member_id), 503, 429)
    definition = journey(Step(id="hello", send=Send(template="hello")))
    async with running(time_skipping_env, worker_settings, resources):
        funnel = await (
            await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        ).result()
    assert figures(funnel, "hello") == {"entered": 1, "sent": 1}
    assert len(provider.to(phone_of(member_id))) == 1
    ((status, attempts),) = [(m["status"], m["attempts"]) for m in await messages(journeys_db, member_id)]
    assert (status, attempts) == ("sent", 3)


async def test_opted_out_channels_fall_back_and_no_channel_left_skips(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    mailbox: fakes.MailBox,
    provider: fakes.Provider,
) -> None:
    falls_back, unreachable = unique(), unique()
    await seed_member(resources.tagging, falls_back, preferred="sms", opted_out=["sms", "app_push"])
    await seed_member(
        resources.tagging, unreachable, preferred="sms", opted_out=["sms", "app_push", "email", "wecom"]
    )
    definition = journey(Step(id="hello", send=Send(template="hello")))
    async with running(time_skipping_env, worker_settings, resources):
        one = await (
            await start(time_skipping_env, worker_settings, journeys_db, definition, falls_back)
        ).result()
        two = await (
            await start(time_skipping_env, worker_settings, journeys_db, definition, unreachable)
        ).result()
    assert figures(one, "hello") == {"entered": 1, "sent": 1}
    assert len(mailbox.to(f"{falls_back}@mail.test")) == 1 and provider.to(phone_of(falls_back)) == []
    assert figures(two, "hello") == {"entered": 1, "skipped": 1}
    assert [m["status"] for m in await messages(journeys_db, unreachable)] == ["skipped"]


async def test_pause_holds_the_member_before_the_next_step_and_resume_goes_on(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(
        Step(id="wait-1d", wait=Wait(duration="1d")), Step(id="hello", send=Send(template="hello"))
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await _until_step(handle, "wait-1d")
        await handle.signal(JourneyWorkflow.pause)
        await time_skipping_env.sleep(dt.timedelta(days=3))
        paused = await handle.query(JourneyWorkflow.funnel)
        assert provider.to(phone_of(member_id)) == []
        await handle.signal(JourneyWorkflow.resume)
        funnel = await handle.result()
        await keep_history(handle, "pause_and_resume")
    assert paused.state == "paused" and [s.step_id for s in paused.steps] == ["wait-1d"]
    assert figures(funnel, "hello") == {"entered": 1, "sent": 1}


async def test_cancelling_stops_the_member_and_records_it(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(
        Step(id="wait-9d", wait=Wait(duration="9d")), Step(id="hello", send=Send(template="hello"))
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await _until_step(handle, "wait-9d")
        await handle.cancel()
        funnel = await handle.result()
        description = await handle.describe()
    assert funnel.state == "stopped" and [s.step_id for s in funnel.steps] == ["wait-9d"]
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert await enrolment_state(journeys_db, member_id) == [("stopped", "treated", 0)]


async def test_a_member_is_enrolled_once_and_found_by_search_attributes(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(Step(id="wait-2d", wait=Wait(duration="2d")))
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        with pytest.raises(WorkflowAlreadyStartedError):
            await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await _until_step(handle, "wait-2d")
        attributes = (await handle.describe()).typed_search_attributes
        # Started under another id (say, by hand): the enrolment row refuses the second entry.
        other = await time_skipping_env.client.execute_workflow(
            JourneyWorkflow.run,
            JourneyInput(tenant_id=TENANT_ACME, journey_key=definition.key, member_id=member_id),
            id=unique("by-hand"),
            task_queue=worker_settings.temporal_task_queue,
        )
        assert (await handle.result()).state == "completed"
        # Once it ended, a new run of the id may start; the enrolment row refuses it (no re-entry).
        again = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        refused = await again.result()
    assert (other.state, other.detail) == ("not_enrolled", "already in this journey")
    assert (refused.state, refused.detail) == (
        "not_enrolled",
        "was in this journey before and it allows no re-entry",
    )
    assert attributes.get(TENANT) == TENANT_ACME
    assert attributes.get(MEMBER) == member_id and attributes.get(JOURNEY) == definition.key
    assert await enrolment_state(journeys_db, member_id) == [("completed", "treated", 0)]


async def test_two_shops_with_the_same_member_id_each_run_their_own_journey(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """One Temporal namespace serves every tenant: the run's id names its tenant, so acme's member
    `m` in a journey does not keep globex's member `m` out of globex's journey of the same key (nor
    take its events)."""
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    await seed_member(resources.tagging, member_id, metadata=GLOBEX)
    definition = journey(Step(id="hello", send=Send(template="hello")))
    async with running(time_skipping_env, worker_settings, resources):
        acme = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        globex = await start(
            time_skipping_env, worker_settings, journeys_db, definition, member_id, tenant_id=TENANT_GLOBEX
        )
        funnels = [await acme.result(), await globex.result()]
    assert acme.id != globex.id
    assert [(f.state, figures(f, "hello")["sent"]) for f in funnels] == [("completed", 1), ("completed", 1)]


async def test_an_unknown_journey_fails_the_start_without_retrying(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    async with running(time_skipping_env, worker_settings, resources):
        with pytest.raises(WorkflowFailureError):
            await time_skipping_env.client.execute_workflow(
                JourneyWorkflow.run,
                JourneyInput(tenant_id=TENANT_ACME, journey_key=unique("missing"), member_id=unique()),
                id=unique("missing"),
                task_queue=worker_settings.temporal_task_queue,
            )


def order_wait(timeout: str) -> Step:
    """`wait` for an order: `thanks` when it comes, `nudge` at the timeout."""
    return Step(
        id="wait",
        wait_for_event=WaitForEvent(
            event=EventMatch(kind="order"), timeout=timeout, on_event="thanks", on_timeout="nudge"
        ),
    )


async def test_the_goal_window_starts_when_the_entry_fact_happened(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """Enrolled late (the dispatcher starts the run up to max_entry_delay after the fact), the
    member's goal window and enter time start at the entry fact: an order paid between the fact and
    the run's start converts, and the window ends an attribution after the fact."""
    definition = journey(
        Step(id="hello", send=Send(template="hello")),
        goal=Goal(event=EventMatch(kind="order"), attribution="1d"),
    )
    member_id = unique("m")
    await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        now = await time_skipping_env.get_current_time()
        entered, paid = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)
        handle = await start(
            time_skipping_env, worker_settings, journeys_db, definition, member_id, entry_time=entered
        )
        await eventually(lambda: _state(handle, "measuring"), "did the member walk its steps")
        order = MemberEvent(kind="order", subject_id=unique("o"), amount_minor=900, occur_time=paid)
        await handle.signal(JourneyWorkflow.event, order)
        funnel = await handle.result()
        await keep_history(handle, "entered_at_the_fact_and_converted")
    assert (funnel.state, funnel.enter_time, funnel.convert_time) == ("converted", entered, paid)
    async with journeys_db.transaction(TENANT_ACME, readonly=True) as conn:
        enter_time = await conn.fetchval(
            """SELECT enter_time FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = $2 AND member_id = $3""",
            TENANT_ACME,
            definition.key,
            member_id,
        )
    assert enter_time == entered


async def test_a_run_started_late_takes_an_order_paid_since_its_entry_fact_as_the_wait_s_event(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """The member's steps are timed from its entry fact: a wait_for_event that is its first step
    began at the fact, so an order paid after the fact, before the late run started, ends it,
    signalled while the member waits or before its first step (with the run's start)."""
    definition = journey(
        order_wait("1d"),
        Step(id="thanks", wait=Wait(duration="1h")),
        Step(id="nudge", send=Send(template="hello")),
    )
    waiting, early = unique("m"), unique("m")
    for member_id in (waiting, early):
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        now = await time_skipping_env.get_current_time()
        entered, paid = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)

        def order() -> MemberEvent:
            return MemberEvent(kind="order", subject_id=unique("o"), amount_minor=900, occur_time=paid)

        handle = await start(
            time_skipping_env, worker_settings, journeys_db, definition, waiting, entry_time=entered
        )
        await eventually(lambda: _at(handle, "wait"), "did the member get to its wait")
        await handle.signal(JourneyWorkflow.event, order())
        signalled_first = await time_skipping_env.client.start_workflow(
            JourneyWorkflow.run,
            JourneyInput(TENANT_ACME, definition.key, early, entry_time=entered),
            id=client.workflow_id(TENANT_ACME, definition.key, early),
            task_queue=worker_settings.temporal_task_queue,
            start_signal="event",
            start_signal_args=[order()],
        )
        funnels = [await handle.result(), await signalled_first.result()]
    for funnel in funnels:
        assert [s.step_id for s in funnel.steps] == ["wait", "thanks", "nudge"]
        assert figures(funnel, "nudge") == {"entered": 1, "sent": 1}


async def test_a_control_run_pauses_the_running_members_of_its_revision(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """The JourneyControl run of a pause signals the journey's running members (its history is
    kept for the replay test)."""
    definition = journey(
        Step(id="wait-1d", wait=Wait(duration="1d")), Step(id="hello", send=Send(template="hello"))
    )
    member_id = unique("m")
    await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        await eventually(lambda: _at(handle, "wait-1d"), "did the member get to its wait")
        paused = await states.transition(
            journeys_db, TENANT_ACME, definition.key, "paused", 0, dt.datetime.now(dt.UTC)
        )
        control = await time_skipping_env.client.start_workflow(
            JourneyControlWorkflow.run,
            ControlInput(TENANT_ACME, definition.key, paused.revision, "pause"),
            id=control_workflow_id(TENANT_ACME, definition.key, paused.revision, "pause"),
            task_queue=worker_settings.temporal_task_queue,
        )
        assert await control.result() == ControlResult(members=1)
        await keep_history(control, "journey_control_pause")
        await eventually(lambda: _state(handle, "paused"), "is the member paused")
        await handle.cancel()


async def _at(handle: WorkflowHandle[JourneyWorkflow, Funnel], step_id: str) -> bool:
    return (await handle.query(JourneyWorkflow.funnel)).current_step == step_id
