"""A cohort's batch activity on its own (Temporal's ActivityEnvironment, the real services, database
and HTTP provider): an attempt that dies while the provider holds the batch is sent again under the
same keys and delivers each message once; the daily cap and the channel's per-minute window defer
members of a batch, never drop them. The log keeps the text each member was sent, and a delivery
after a retry sends that text, whatever changed about the member since."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections import Counter

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME
from tests.ports import free_port
from tests.workflows import fakes
from tests.workflows.cohort_helpers import broadcast, messages, snapshot_population
from tests.workflows.journey_helpers import activate, phone_of, seed_member
from workflows.journeys import store
from workflows.journeys.channels import registry
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.cohort.activities import CohortActivities
from workflows.journeys.cohort.payloads import BatchRequest, OpenRequest, cohort_workflow_id
from workflows.journeys.definition import JourneyDefinition, Send, Step
from workflows.journeys.sending import Sender
from workflows.worker import Resources, services_of


def cohort_activities(
    resources: Resources, settings: Settings, channels: ChannelSettings
) -> CohortActivities:
    return CohortActivities(
        resources.db,
        services_of(resources, settings),
        Sender(resources.db, registry.build(channels), channels),
        channels,
    )


def attempt(workflow_id: str, started: dt.datetime, number: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, started_time=started, attempt=number, workflow_id=workflow_id, activity_id="advance"
    )
    return env


async def opened(
    acts: CohortActivities, db: Database, definition: JourneyDefinition, snapshot: str, now: dt.datetime
) -> int:
    """The cohort opened and its one snapshot page enrolled, as the workflow's first calls do."""
    await store.put_definition(db, TENANT_ACME, definition)
    await activate(db, TENANT_ACME, definition.key)
    workflow_id = cohort_workflow_id(definition.key, snapshot.removeprefix("snapshots/"))
    env = attempt(workflow_id, now, 1)
    cohort = await env.run(
        acts.open, OpenRequest(TENANT_ACME, definition.key, 0, snapshot, workflow_id, f"run-{definition.key}")
    )
    assert cohort.accepted, cohort.reason
    loaded = await env.run(acts.load, BatchRequest(TENANT_ACME, cohort.cohort_id, 0, 10_000))
    assert loaded.next_page_token == ""
    return cohort.cohort_id


def noon_in_shanghai() -> dt.datetime:
    """A moment no other test sends at (the tests share the tenant's channel windows)."""
    return dt.datetime(2036, 3, 2, 4, 0, tzinfo=dt.UTC)


async def test_an_attempt_that_dies_while_the_provider_holds_the_batch_delivers_once(
    resources: Resources, worker_settings: Settings, journeys_db: Database, provider: fakes.Provider
) -> None:
    channels = dataclasses.replace(resources.channels, per_minute={"sms": 10**9})
    acts = cohort_activities(resources, worker_settings, channels)
    ids, audience_id, frozen = await snapshot_population(resources, 2500)  # three parts
    definition = broadcast(audience_id, Step(id="hello", send=Send(template="hello")))
    now = noon_in_shanghai()
    cohort_id = await opened(acts, journeys_db, definition, frozen.name, now)
    workflow_id = cohort_workflow_id(definition.key, frozen.name.removeprefix("snapshots/"))
    repeats, requests = provider.repeats, provider.batch_requests
    gate = provider.hold_batches()
    first = attempt(workflow_id, now, 1)
    task = asyncio.create_task(first.run(acts.advance, BatchRequest(TENANT_ACME, cohort_id, 1, 2500)))
    try:
        # Each of the three parts has its request at the provider.
        assert await asyncio.to_thread(provider.wait_for_batches, requests + 3, 30)
        first.cancel()  # the worker dies while the provider has the batch in hand
        with pytest.raises(asyncio.CancelledError):
            await task
        claimed = await messages(journeys_db, cohort_id)
        assert Counter(row["status"] for row in claimed) == {"sending": 2500}
    finally:
        gate.set()
    provider.batch_gate = None
    retried = await attempt(workflow_id, now, 2).run(
        acts.advance, BatchRequest(TENANT_ACME, cohort_id, 1, 2500)
    )
    assert retried.figures == {"step:hello:sent": 2500}
    with provider.lock:
        got = Counter(d.body["to"] for d in provider.deliveries if d.body["to"] in {phone_of(m) for m in ids})
        sent = {d.body["to"]: (d.body["subject"], d.body["body"]) for d in provider.deliveries}
    assert len(got) == 2500 and set(got.values()) == {1}
    assert provider.repeats - repeats == 2500
    rows = await messages(journeys_db, cohort_id)
    assert Counter((row["status"], row["attempts"]) for row in rows) == {("sent", 2): 2500}
    # What each member was sent, rendered for them, is in the log.
    assert all(
        (row["subject"], row["body"])
        == sent[phone_of(row["member_id"])]
        == (f"Hello N{row['member_id'][-5:]}", f"Hi N{row['member_id'][-5:]}, our sale starts today.")
        for row in rows
    )
    # The call is answered from its batch row from now on, whatever attempt asks.
    again = await attempt(workflow_id, now, 3).run(
        acts.advance, BatchRequest(TENANT_ACME, cohort_id, 1, 2500)
    )
    assert again.figures == retried.figures and again.next_due is None


async def test_the_daily_cap_and_the_channel_window_defer_members_of_a_batch(
    resources: Resources, worker_settings: Settings, journeys_db: Database, provider: fakes.Provider
) -> None:
    channels = dataclasses.replace(resources.channels, per_minute={"sms": 10**9})
    acts = cohort_activities(resources, worker_settings, channels)
    _, audience_id, frozen = await snapshot_population(resources, 30)
    now = noon_in_shanghai()
    first = broadcast(audience_id, Step(id="hello", send=Send(template="hello")), frequency_cap=1)
    first_id = await opened(acts, journeys_db, first, frozen.name, now)
    run = attempt(cohort_workflow_id(first.key, frozen.name.removeprefix("snapshots/")), now, 1)
    sent = await run.run(acts.advance, BatchRequest(TENANT_ACME, first_id, 1, 1000))
    assert sent.figures == {"step:hello:sent": 30}

    # Another broadcast the same day: everyone is at the cap of 1 and waits for the next local day.
    second = broadcast(audience_id, Step(id="hello", send=Send(template="hello")), frequency_cap=1)
    second_id = await opened(acts, journeys_db, second, frozen.name, now)
    run = attempt(cohort_workflow_id(second.key, frozen.name.removeprefix("snapshots/")), now, 1)
    capped = await run.run(acts.advance, BatchRequest(TENANT_ACME, second_id, 1, 1000))
    midnight = dt.datetime(2036, 3, 2, 16, 0, tzinfo=dt.UTC)  # 00:00 on 3 March in Shanghai
    assert capped.figures == {"step:hello:deferred": 30, "deferral:frequency_cap": 30}
    assert capped.next_due == midnight
    assert await messages(journeys_db, second_id) == []

    # The next day, 12 sends a minute: 12 now, the rest wait for the next window.
    limited = cohort_activities(
        resources, worker_settings, dataclasses.replace(resources.channels, per_minute={"sms": 12})
    )
    day_two = now + dt.timedelta(days=1)
    run = attempt(cohort_workflow_id(second.key, frozen.name.removeprefix("snapshots/")), day_two, 1)
    windowed = await run.run(limited.advance, BatchRequest(TENANT_ACME, second_id, 2, 1000))
    assert windowed.figures == {
        "step:hello:sent": 12,
        "step:hello:deferred": 18,
        "deferral:rate_limit": 18,
    }
    assert windowed.next_due == day_two + dt.timedelta(minutes=1)
    rows = await messages(journeys_db, second_id)
    assert Counter(row["status"] for row in rows) == {"sent": 12}


async def test_e_mails_the_server_did_not_take_are_sent_again_once_per_member(
    resources: Resources, worker_settings: Settings, journeys_db: Database, mailbox: fakes.MailBox
) -> None:
    working = dataclasses.replace(resources.channels, per_minute={"email": 10**9})
    # First attempt: nothing listens where the SMTP server should be, so no message is taken.
    refused = dataclasses.replace(working, smtp=dataclasses.replace(working.smtp, port=free_port()))
    ids, audience_id, frozen = await snapshot_population(resources, 40, preferred="email")
    definition = broadcast(audience_id, Step(id="hello", send=Send(template="hello", channel="email")))
    now = noon_in_shanghai() + dt.timedelta(days=3)
    acts = cohort_activities(resources, worker_settings, refused)
    cohort_id = await opened(acts, journeys_db, definition, frozen.name, now)
    workflow_id = cohort_workflow_id(definition.key, frozen.name.removeprefix("snapshots/"))
    with pytest.raises(ApplicationError, match="not settled"):
        await attempt(workflow_id, now, 1).run(acts.advance, BatchRequest(TENANT_ACME, cohort_id, 1, 1000))
    assert Counter(row["status"] for row in await messages(journeys_db, cohort_id)) == {"retry": 40}
    assert all(mailbox.to(f"{m}@mail.test") == [] for m in ids)
    # Renamed before the retry: the retry sends what the claim logged.
    await seed_member(resources.tagging, ids[0], preferred="email", nickname="Renamed")
    retried = await attempt(workflow_id, now, 2).run(
        cohort_activities(resources, worker_settings, working).advance,
        BatchRequest(TENANT_ACME, cohort_id, 1, 1000),
    )
    assert retried.figures == {"step:hello:sent": 40}
    assert all(len(mailbox.to(f"{m}@mail.test")) == 1 for m in ids)
    rows = await messages(journeys_db, cohort_id)
    assert Counter((row["status"], row["attempts"]) for row in rows) == {("sent", 2): 40}
    for row in rows:
        (mail,) = mailbox.to(f"{row['member_id']}@mail.test")
        assert (row["subject"], row["body"]) == (mail.subject, mail.body)
        assert row["subject"] == f"Hello N{row['member_id'][-5:]}"
