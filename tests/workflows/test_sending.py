"""The send activity on its own (Temporal's ActivityEnvironment, the real services, database, SMTP
server and HTTP provider): an attempt that dies while the provider holds the message is never sent
again; a repeated send after success is answered from the message log, which keeps the text sent (a
send skipped before rendering keeps none). Member-local time rules."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from temporalio.testing import ActivityEnvironment

from runtime.config import ConfigError, Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME, unique
from tests.workflows import fakes
from tests.workflows.journey_helpers import phone_of, seed_member
from workflows.journeys import local_time
from workflows.journeys.activities import JourneyActivities
from workflows.journeys.channels import registry
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.definition import ChannelPolicy, QuietHours, Template
from workflows.journeys.payloads import SendOutcome, SendRequest
from workflows.journeys.sending import Sender
from workflows.worker import Resources, services_of

SHANGHAI = ZoneInfo("Asia/Shanghai")


def journey_activities(
    resources: Resources, settings: Settings, channels: ChannelSettings | None = None
) -> JourneyActivities:
    """The worker's journey activities, optionally with other channels configured."""
    channels = channels or resources.channels
    return JourneyActivities(
        resources.db,
        services_of(resources, settings),
        Sender(resources.db, registry.build(channels), channels),
        channels,
    )


def attempt(started: dt.datetime, number: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, started_time=started, attempt=number, workflow_id="wf", activity_id="send"
    )
    return env


def request_for(member_id: str) -> SendRequest:
    return SendRequest(
        tenant_id=TENANT_ACME,
        journey_key="direct",
        journey_run=f"journey/direct/member/{member_id}#1",
        member_id=member_id,
        step_id="hello",
        template=Template(body="Hi {nickname}"),
        channel="sms",
        channels=ChannelPolicy(),
        frequency_cap=5,
    )


async def message_status(db: Database, member_id: str) -> list[str]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT status FROM journeys.messages WHERE tenant_id = $1 AND member_id = $2",
            TENANT_ACME,
            member_id,
        )
    return [row["status"] for row in rows]


async def message_text(db: Database, member_id: str) -> tuple[str | None, str | None]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        row = await conn.fetchrow(
            "SELECT subject, body FROM journeys.messages WHERE tenant_id = $1 AND member_id = $2",
            TENANT_ACME,
            member_id,
        )
    assert row is not None
    return (row["subject"], row["body"])


async def test_an_attempt_that_dies_mid_send_is_never_sent_again(
    resources: Resources, worker_settings: Settings, journeys_db: Database, provider: fakes.Provider
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    acts = journey_activities(resources, worker_settings)
    phone = phone_of(member_id)
    gate = provider.hold(phone)
    now = dt.datetime.now(dt.UTC).replace(hour=4)  # 12:00 in Shanghai: no quiet hours apply anyway
    first = attempt(now, 1)
    task = asyncio.create_task(first.run(acts.send, request_for(member_id)))
    try:
        assert await asyncio.to_thread(provider.arrived[phone].wait, 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await message_status(journeys_db, member_id) == ["sending"]
        retried = await attempt(now, 2).run(acts.send, request_for(member_id))
    finally:
        gate.set()
    assert retried.status == "unknown" and retried.channel == "sms"
    assert len(provider.to(phone)) == 1
    assert await message_status(journeys_db, member_id) == ["unknown"]
    assert await message_text(journeys_db, member_id) == ("", "Hi Lin")


async def test_a_send_repeated_after_success_is_answered_from_the_log(
    resources: Resources, worker_settings: Settings, journeys_db: Database, provider: fakes.Provider
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id, nickname="Ana")
    acts = journey_activities(resources, worker_settings)
    now = dt.datetime.now(dt.UTC).replace(hour=4)
    first = await attempt(now, 1).run(acts.send, request_for(member_id))
    await seed_member(resources.tagging, member_id, nickname="Bea")  # renamed: the sent text stays
    again = await attempt(now + dt.timedelta(minutes=5), 2).run(acts.send, request_for(member_id))
    assert first == again == SendOutcome("sent", "sms", "")
    (delivery,) = provider.to(phone_of(member_id))
    assert delivery.body["body"] == "Hi Ana"
    assert await message_text(journeys_db, member_id) == ("", "Hi Ana")


async def test_a_send_skipped_before_rendering_keeps_no_text(
    resources: Resources, worker_settings: Settings, journeys_db: Database
) -> None:
    member_id = unique("unknown")  # tagging does not know them
    acts = journey_activities(resources, worker_settings)
    outcome = await attempt(dt.datetime.now(dt.UTC).replace(hour=4), 1).run(acts.send, request_for(member_id))
    assert outcome.status == "skipped"
    assert await message_text(journeys_db, member_id) == (None, None)


async def test_a_channel_left_unconfigured_is_passed_over(
    resources: Resources, worker_settings: Settings, mailbox: fakes.MailBox
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    only_email = ChannelSettings(smtp=resources.channels.smtp)
    acts = journey_activities(resources, worker_settings, only_email)
    outcome = await attempt(dt.datetime.now(dt.UTC).replace(hour=4), 1).run(acts.send, request_for(member_id))
    assert (outcome.status, outcome.channel) == ("sent", "email")
    assert len(mailbox.to(f"{member_id}@mail.test")) == 1


def utc(year: int, month: int, day: int, hour: int, minute: int) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("now", "quiet", "expected"),
    [
        # 22:30 Shanghai, quiet 21:00-09:00: until 09:00 the next morning.
        (utc(2026, 3, 1, 14, 30), QuietHours("21:00", "09:00"), utc(2026, 3, 2, 1, 0)),
        # 07:00 Shanghai: until 09:00 the same morning.
        (utc(2026, 3, 1, 23, 0), QuietHours("21:00", "09:00"), utc(2026, 3, 2, 1, 0)),
        # 12:00 Shanghai: not quiet.
        (utc(2026, 3, 1, 4, 0), QuietHours("21:00", "09:00"), None),
        # A window within one day, 12:00-14:00, at 13:59.
        (utc(2026, 3, 1, 5, 59), QuietHours("12:00", "14:00"), utc(2026, 3, 1, 6, 0)),
        (utc(2026, 3, 1, 6, 0), QuietHours("12:00", "14:00"), None),
    ],
)
def test_quiet_hours_end_in_the_members_zone(
    now: dt.datetime, quiet: QuietHours, expected: dt.datetime | None
) -> None:
    assert local_time.quiet_until(now, SHANGHAI, quiet) == expected


def test_local_times_follow_daylight_saving() -> None:
    new_york = ZoneInfo("America/New_York")
    # 2026-03-08 is the spring-forward day: 10:00 local is 14:00 UTC after it, 15:00 before it.
    assert local_time.next_local_time(utc(2026, 3, 7, 16, 0), new_york, 10, 0) == utc(2026, 3, 8, 14, 0)
    assert local_time.next_local_time(utc(2026, 3, 7, 14, 0), new_york, 10, 0) == utc(2026, 3, 7, 15, 0)
    assert local_time.next_local_midnight(utc(2026, 3, 7, 16, 0), new_york) == utc(2026, 3, 8, 5, 0)
    assert local_time.zone("Not/AZone", "Asia/Shanghai") == SHANGHAI


def test_channel_configuration_from_the_environment() -> None:
    settings = ChannelSettings.from_env(
        {
            "MEMBEROPS_SMTP_HOST": "smtp.shop.test",
            "MEMBEROPS_SMTP_PORT": "587",
            "MEMBEROPS_SMTP_STARTTLS": "true",
            "MEMBEROPS_SMS_URL": "https://sms.test/send",
            "MEMBEROPS_SMS_KEY": "k",
            "MEMBEROPS_SMS_PER_MINUTE": "30",
        }
    )
    assert settings.smtp.port == 587 and settings.smtp.starttls
    assert settings.configured("email") and settings.configured("sms")
    assert not settings.configured("app_push") and not settings.configured("wecom")
    assert settings.rate("sms") == 30 and settings.rate("email") == 600
    assert "k" not in repr(settings)
    with pytest.raises(ConfigError, match="MEMBEROPS_SMTP_STARTTLS"):
        ChannelSettings.from_env({"MEMBEROPS_SMTP_STARTTLS": "maybe"})
    with pytest.raises(ConfigError, match="MEMBEROPS_DEFAULT_TIME_ZONE"):
        ChannelSettings.from_env({"MEMBEROPS_DEFAULT_TIME_ZONE": "Mars/Olympus"})
