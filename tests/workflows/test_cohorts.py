"""Broadcast journeys: one cohort workflow per snapshot on the time-skipping server, against the real
services, the real database, a real SMTP server and a real HTTP provider (with its batch endpoint):
each treated member messaged once and no holdout member, batches that fail and are retried without
a second message, quiet hours that defer, a funnel that agrees with the database, duplicate starts,
pause/resume, stop."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment

from runtime.buckets import bucket
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME, unique
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.cohort_helpers import (
    broadcast,
    members,
    messages,
    snapshot_population,
    start,
    statuses,
    step,
    until,
    until_asleep,
)
from tests.workflows.journey_helpers import keep_history, phone_of, running
from workflows.journeys.activities import holdout_salt
from workflows.journeys.cohort.payloads import CohortEvent, CohortFunnel, CohortInput, cohort_workflow_id
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import EventMatch, Goal, QuietHours, Send, Split, SplitArm, Step, Wait
from workflows.journeys.payloads import MemberEvent
from workflows.journeys.steps.split import split_arm
from workflows.journeys.workflow import JOURNEY, TENANT
from workflows.worker import Resources


@pytest.fixture
def unlimited(resources: Resources) -> Resources:
    """The worker's resources with no practical per-minute limit (the tests share a tenant's
    windows; the rate limit has a test of its own)."""
    rates = {channel: 10**9 for channel in ("sms", "email", "app_push", "wecom")}
    return dataclasses.replace(resources, channels=dataclasses.replace(resources.channels, per_minute=rates))


def delivered(provider: fakes.Provider, ids: list[str]) -> Counter[str]:
    """Messages the provider took, per member."""
    phones = {phone_of(member_id): member_id for member_id in ids}
    with provider.lock:
        return Counter(phones[d.body["to"]] for d in provider.deliveries if d.body.get("to") in phones)


async def test_a_broadcast_messages_each_treated_member_once_and_no_holdout_member(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    ids, audience_id, frozen = await snapshot_population(unlimited, 3000, splits=(("a", 50), ("b", 50)))
    definition = broadcast(
        audience_id,
        Step(id="hello", send=Send(template="hello")),
        holdout_percent=10,
        goal=Goal(event=EventMatch(kind="order"), attribution="3d"),
    )
    requests_before = provider.batch_requests
    async with running(time_skipping_env, worker_settings, unlimited):
        handle = await start(
            time_skipping_env,
            worker_settings,
            journeys_db,
            definition,
            frozen.name,
            batch_size=400,
            calls_per_run=6,
        )
        funnel = await handle.result()
        description = await handle.describe()
        # The first run, which ends by continuing as new, and the last, which began from its state.
        first_run = time_skipping_env.client.get_workflow_handle(
            handle.id, run_id=handle.first_execution_run_id
        )
        await keep_history(first_run, "cohort_continued_as_new")
        await keep_history(handle, "cohort_last_run_after_continue_as_new")
    held = {m for m in ids if bucket(holdout_salt(definition.key), m) < 1000}
    got = delivered(provider, ids)
    assert set(got) == set(ids) - held and set(got.values()) == {1}
    assert 0.08 < len(held) / len(ids) < 0.12
    assert (funnel.state, funnel.treated.entered, funnel.holdout.entered) == (
        "completed",
        3000 - len(held),
        len(held),
    )
    assert step(funnel, "hello") == {"entered": 3000, "sent": 3000 - len(held), "held_out": len(held)}
    assert funnel.snapshot_arms == {arm.name: arm.member_count for arm in frozen.arms}
    # Batches: many messages per request, and the history stayed short (continued as new).
    assert provider.batch_requests - requests_before <= 3000 // 400 + 2
    assert description.run_id != handle.first_execution_run_id
    assert description.typed_search_attributes.get(TENANT) == TENANT_ACME
    assert description.typed_search_attributes.get(JOURNEY) == definition.key
    rows = await messages(journeys_db, funnel.cohort_id)
    assert statuses(rows, "hello") == {"sent": 3000 - len(held)} and {r["attempts"] for r in rows} == {1}
    assert {r["member_id"] for r in rows} == set(got)
    states = await members(journeys_db, funnel.cohort_id)
    assert {m for m, row in states.items() if row["holdout"]} == held
    assert Counter(row["state"] for row in states.values()) == {"completed": 3000}


async def test_a_provider_failing_mid_batch_is_sent_again_and_delivers_each_message_once(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    ids, audience_id, frozen = await snapshot_population(unlimited, 700)
    definition = broadcast(audience_id, Step(id="hello", send=Send(template="hello")))
    repeats = provider.repeats
    # The first batch request takes 300 messages, then the connection drops without an answer.
    provider.break_batch(after=300)
    async with running(time_skipping_env, worker_settings, unlimited):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
        funnel = await handle.result()
    got = delivered(provider, ids)
    assert set(got) == set(ids) and set(got.values()) == {1}
    assert provider.repeats - repeats == 300  # sent again under their keys, delivered once
    assert step(funnel, "hello") == {"entered": 700, "sent": 700}
    rows = await messages(journeys_db, funnel.cohort_id)
    assert statuses(rows, "hello") == {"sent": 700}
    assert Counter(r["attempts"] for r in rows) == {2: 700}


def _local_clock(moment: dt.datetime, zone: str, shift: dt.timedelta) -> str:
    return (moment.astimezone(ZoneInfo(zone)) + shift).strftime("%H:%M")


async def test_quiet_hours_defer_the_cohort_in_each_members_zone(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    zone = "America/New_York"
    ids, audience_id, frozen = await snapshot_population(unlimited, 300, time_zone=zone)
    now = await time_skipping_env.get_current_time()
    quiet = QuietHours(
        start=_local_clock(now, zone, -dt.timedelta(hours=1)),
        end=_local_clock(now, zone, dt.timedelta(hours=3)),
    )
    definition = broadcast(audience_id, Step(id="hello", send=Send(template="hello")), quiet_hours=quiet)
    async with running(time_skipping_env, worker_settings, unlimited):
        with time_skipping_env.auto_time_skipping_disabled():
            handle = await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
            deferred = await until(handle, "the deferral", lambda f: f.deferrals.get("quiet_hours", 0) == 300)
        assert delivered(provider, ids) == Counter()
        funnel = await handle.result()
        await keep_history(handle, "cohort_quiet_hours_deferral")
    assert step(deferred, "hello") == {"entered": 300, "deferred": 300}
    assert step(funnel, "hello") == {"entered": 300, "deferred": 300, "sent": 300}
    assert set(delivered(provider, ids).values()) == {1} and len(delivered(provider, ids)) == 300
    sent_at = {row["update_time"] for row in await messages(journeys_db, funnel.cohort_id)}
    assert {moment.astimezone(ZoneInfo(zone)).strftime("%H:%M") for moment in sent_at} == {quiet.end}


async def test_splits_waits_and_the_funnel_agree_with_the_database(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
    mailbox: fakes.MailBox,
) -> None:
    ids, audience_id, frozen = await snapshot_population(unlimited, 600, preferred="email")
    definition = broadcast(
        audience_id,
        Step(id="split", split=Split(arms=(SplitArm("mail", 70), SplitArm("text", 30, next="by-sms")))),
        Step(id="by-mail", send=Send(template="hello")),
        Step(id="wait-2d", wait=Wait(duration="2d")),
        Step(id="by-sms", send=Send(template="hello", channel="sms")),
        holdout_percent=20,
        goal=Goal(event=EventMatch(kind="order"), attribution="10d"),
    )
    sessions = mailbox.sessions
    async with running(time_skipping_env, worker_settings, unlimited):
        started = await time_skipping_env.get_current_time()
        handle = await start(
            time_skipping_env, worker_settings, journeys_db, definition, frozen.name, batch_size=250
        )

        def texts_sent(f: CohortFunnel) -> bool:
            arms, texts = step(f, "split").get("arms", {}), step(f, "by-sms")
            done = texts.get("sent", 0) + texts.get("held_out", 0)
            return bool(sum(arms.values()) == 600 and done == arms["text"])

        # The `text` arm is done; the `mail` arm waits its two days.
        funnel = await until(handle, "the texts", texts_sent)
        states = await members(journeys_db, funnel.cohort_id)
        buyers = [m for m in ids if not states[m]["holdout"]][:40] + [m for m in ids if states[m]["holdout"]][
            :10
        ]
        for n, member_id in enumerate(buyers):
            event = MemberEvent(kind="order", subject_id=f"o-{n}", amount_minor=1000 + n)
            await handle.signal(CohortJourneyWorkflow.event, CohortEvent(member_id, event))
        await handle.signal(CohortJourneyWorkflow.event, CohortEvent(unique(), MemberEvent(kind="order")))
        funnel = await handle.result()
        await keep_history(handle, "cohort_split_wait_and_goal")
    rows = await messages(journeys_db, funnel.cohort_id)
    states = await members(journeys_db, funnel.cohort_id)
    treated = [m for m in ids if not states[m]["holdout"]]
    arms = step(funnel, "split")["arms"]
    assert isinstance(arms, dict) and sum(arms.values()) == 600 and 0.6 < arms["mail"] / 600 < 0.8
    # Members of the `mail` arm get the e-mail, wait two days and get the text; the others only the text.
    in_mail_arm = {m for m in ids if split_arm(definition.key, definition.steps[0], m).name == "mail"}
    mailed = {r["member_id"] for r in rows if r["step_id"] == "by-mail"}
    assert mailed == in_mail_arm & set(treated) and len(in_mail_arm) == arms["mail"]
    texted = {r["member_id"]: r["update_time"] for r in rows if r["step_id"] == "by-sms"}
    # Buyers of the `mail` arm left as converted before their text.
    assert set(texted) == set(treated) - (mailed & set(buyers)) and mailed < set(treated)
    assert statuses(rows, "by-mail") == {"sent": step(funnel, "by-mail")["sent"]}
    assert statuses(rows, "by-sms") == {"sent": step(funnel, "by-sms")["sent"]}
    assert (
        step(funnel, "by-mail")["entered"] == arms["mail"]
        and step(funnel, "wait-2d")["entered"] == arms["mail"]
    )
    assert step(funnel, "by-sms")["entered"] == 600 - len(in_mail_arm & set(buyers))
    first_texts = min(texted[m] for m in texted if m not in mailed)
    assert min(texted[m] for m in mailed if m in texted) >= first_texts + dt.timedelta(days=2)
    assert all(len(mailbox.to(f"{m}@mail.test")) == (m in mailed) for m in ids)
    # One SMTP connection per batch, not one per message.
    assert 1 <= mailbox.sessions - sessions <= len(mailed) // 20
    # The funnel's conversions are the enrolment rows': 40 treated and 10 holdout buyers.
    converted = Counter(
        ("holdout" if s["holdout"] else "treated") for s in states.values() if s["state"] == "converted"
    )
    gmv: Counter[str] = Counter()
    for s in states.values():
        gmv["holdout" if s["holdout"] else "treated"] += s["gmv_minor"]
    assert (
        (funnel.treated.converted, funnel.holdout.converted)
        == (converted["treated"], converted["holdout"])
        == (40, 10)
    )
    assert (funnel.treated.gmv_minor, funnel.holdout.gmv_minor) == (gmv["treated"], gmv["holdout"])
    assert funnel.treated.entered == len(treated) and funnel.holdout.entered == 600 - len(treated)
    expected = (40 / len(treated) - 10 / (600 - len(treated))) * 100
    assert funnel.uplift_points == pytest.approx(expected, abs=1e-3)
    assert funnel.events_ignored == 1
    assert Counter(s["state"] for s in states.values()) == {"completed": 550, "converted": 50}
    assert started + dt.timedelta(days=10) <= await time_skipping_env.get_current_time()


async def test_a_snapshot_is_broadcast_once(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
) -> None:
    _, audience_id, frozen = await snapshot_population(unlimited, 20)
    definition = broadcast(audience_id, Step(id="wait-1d", wait=Wait(duration="1d")))
    request = CohortInput(tenant_id=TENANT_ACME, journey_key=definition.key, snapshot=frozen.name)
    workflow_id = cohort_workflow_id(definition.key, frozen.name.removeprefix("snapshots/"))
    async with running(time_skipping_env, worker_settings, unlimited):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
        with pytest.raises(WorkflowAlreadyStartedError):
            await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
        # Under another id (by hand): refused, the id names the journey and the snapshot.
        other = await time_skipping_env.client.execute_workflow(
            CohortJourneyWorkflow.run,
            request,
            id=unique("by-hand"),
            task_queue=worker_settings.temporal_task_queue,
        )
        first = await handle.result()
        # The same id again, allowed by Temporal this time: the cohort's row refuses it.
        again = await time_skipping_env.client.execute_workflow(
            CohortJourneyWorkflow.run,
            request,
            id=workflow_id,
            task_queue=worker_settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    assert (other.state, other.detail) == (
        "not_started",
        f"a broadcast of this journey and snapshot runs as {workflow_id}",
    )
    assert first.state == "completed" and first.treated.entered == 20
    assert again.state == "not_started" and "broadcast already" in again.detail
    assert len(await members(journeys_db, first.cohort_id)) == 20


async def test_pause_holds_the_broadcast_and_resume_goes_on(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    ids, audience_id, frozen = await snapshot_population(unlimited, 200)
    definition = broadcast(
        audience_id,
        Step(id="wait-1d", wait=Wait(duration="1d")),
        Step(id="hello", send=Send(template="hello")),
    )
    async with running(time_skipping_env, worker_settings, unlimited):
        # No time passes until the pause is in place, so the day's wait cannot end before it.
        with time_skipping_env.auto_time_skipping_disabled():
            handle = await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
            await handle.signal(CohortJourneyWorkflow.pause)
            await until(handle, "the pause", lambda f: f.state == "paused")
        await time_skipping_env.sleep(dt.timedelta(days=3))
        paused = await handle.query(CohortJourneyWorkflow.funnel)
        assert delivered(provider, ids) == Counter()
        await handle.signal(CohortJourneyWorkflow.resume)
        funnel = await handle.result()
        await keep_history(handle, "cohort_pause_and_resume")
    assert paused.state == "paused" and step(paused, "hello") == {}
    assert step(funnel, "hello") == {"entered": 200, "sent": 200}
    assert set(delivered(provider, ids).values()) == {1} and len(delivered(provider, ids)) == 200


async def test_cancelling_stops_the_broadcast_and_records_it(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    ids, audience_id, frozen = await snapshot_population(unlimited, 100)
    definition = broadcast(
        audience_id,
        Step(id="hello", send=Send(template="hello")),
        Step(id="wait-9d", wait=Wait(duration="9d")),
        Step(id="again", send=Send(template="hello")),
    )
    async with running(time_skipping_env, worker_settings, unlimited):
        handle: WorkflowHandle[CohortJourneyWorkflow, CohortFunnel] = await start(
            time_skipping_env, worker_settings, journeys_db, definition, frozen.name
        )
        await until(handle, "the wait", lambda f: step(f, "wait-9d").get("entered", 0) == 100)
        # The batch that starts the members' nine days has ended too: no call is cancelled.
        await until_asleep(handle, "the wait")
        await handle.cancel()
        # Only awaiting the result lets the test server skip time: left to that, the nine days could
        # pass before the workflow task that takes the cancellation, and "again" be sent.
        await until(handle, "the stop", lambda f: f.state == "stopped")
        funnel = await handle.result()
    assert funnel.state == "stopped" and step(funnel, "again") == {}
    assert set(delivered(provider, ids).values()) == {1} and len(delivered(provider, ids)) == 100
    states = await members(journeys_db, funnel.cohort_id)
    assert Counter(s["state"] for s in states.values()) == {"stopped": 100}


async def test_cancelling_during_a_batch_waits_for_it_on_a_real_server(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    unlimited: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    """A cancellation while a batch is at the provider: the batch's messages go out once, then the
    rest stops. On the dev server, since the time-skipping one cannot take it (see until_asleep)."""
    ids, audience_id, frozen = await snapshot_population(unlimited, 100)
    definition = broadcast(
        audience_id,
        Step(id="hello", send=Send(template="hello")),
        Step(id="wait-9d", wait=Wait(duration="9d")),
        Step(id="again", send=Send(template="hello")),
    )
    requests = provider.batch_requests
    gate = provider.hold_batches()
    try:
        async with running(dev_server_env, worker_settings, unlimited):
            handle = await start(dev_server_env, worker_settings, journeys_db, definition, frozen.name)
            assert await asyncio.to_thread(provider.wait_for_batches, requests + 1, 30)
            await handle.cancel()
            # The workflow asked the running call to stop before the provider answers.

            async def cancel_requested() -> bool:
                return any(
                    e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
                    for e in (await handle.fetch_history()).events
                )

            await eventually(cancel_requested, "did the workflow cancel the running batch")
            gate.set()
            funnel = await handle.result()
    finally:
        gate.set()
        provider.batch_gate = None
    assert funnel.state == "stopped" and step(funnel, "again") == {}
    assert set(delivered(provider, ids).values()) == {1} and len(delivered(provider, ids)) == 100
    # The cancellation reaches the batch at its heartbeat, after the provider answered: what it
    # answered is still recorded, so every message is `sent`, none `unknown`.
    hello = statuses(await messages(journeys_db, funnel.cohort_id), "hello")
    assert hello == {"sent": 100}
    assert step(funnel, "hello") == {"entered": 100, **hello}
    states = await members(journeys_db, funnel.cohort_id)
    assert Counter(s["state"] for s in states.values()) == {"stopped": 100}


async def test_history_exits_no_cohort_member_and_a_goal_event_outside_the_window_is_an_exit_criterion(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    """Exit criteria are judged by when their fact happened, as member journeys judge them: one of
    the member's history (before it entered) exits nobody. A goal event outside the goal's window
    converts nobody but is still an exit criterion when it is one (a member journey takes it so)."""
    ids, audience_id, frozen = await snapshot_population(resources, 4)
    definition = broadcast(
        audience_id,
        Step(id="hi", send=Send(template="hello")),
        Step(id="wait-3d", wait=Wait(duration="3d")),
        holdout_percent=0,
        goal=Goal(event=EventMatch(kind="order", min_amount_minor=10_000), attribution="1d"),
        exit_on=(EventMatch(kind="order"), EventMatch(kind="tag_added", dimension="unsubscribed")),
    )
    old_tag, old_order, small, big = ids
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
        await until_asleep(handle, "the wait")
        await time_skipping_env.sleep(dt.timedelta(days=2))
        now = await time_skipping_env.get_current_time()
        long_ago = now - dt.timedelta(days=200)
        events = {
            old_tag: MemberEvent(kind="tag_added", dimension="unsubscribed", occur_time=long_ago),
            old_order: MemberEvent(
                kind="order", subject_id=unique("o"), amount_minor=500, occur_time=long_ago
            ),
            small: MemberEvent(kind="order", subject_id=unique("o"), amount_minor=500, occur_time=now),
            big: MemberEvent(kind="order", subject_id=unique("o"), amount_minor=20_000, occur_time=now),
        }
        for member_id, event in events.items():
            await handle.signal(CohortJourneyWorkflow.event, CohortEvent(member_id, event))
        funnel = await handle.result()
    states = {m: row["state"] for m, row in (await members(journeys_db, funnel.cohort_id)).items()}
    assert states == {old_tag: "completed", old_order: "completed", small: "exited", big: "exited"}
    assert (funnel.exited, funnel.treated.converted, funnel.events_ignored) == (2, 0, 2)
