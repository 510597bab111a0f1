"""GetDailySends: the message log by day of the zone asked, channel and outcome, only what has
messages. Counted in a tenant of its own (Hooli) on days nobody else writes there; the rows are
written as the worker writes them (message_log), at the times the test gives."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from google.type import date_pb2
from memberops.journeys.v1 import journeys_service_pb2 as pb

from runtime.db import Database
from tests.conftest import HOOLI, TENANT_HOOLI, unique
from tests.grpc_helpers import bad
from workflows.journeys import message_log

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as JourneysStub

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def sends(first: dt.date, last: dt.date, zone: str = "") -> pb.GetDailySendsRequest:
    return pb.GetDailySendsRequest(start_date=date(first), end_date=date(last), time_zone=zone)


async def log(db: Database, at: dt.datetime, channel: str, status: str) -> None:
    member_id = unique("ds")
    key = message_log.Key(TENANT_HOOLI, f"journey/{TENANT_HOOLI}/ds/member/{member_id}#1", member_id, "hello")
    async with db.transaction(TENANT_HOOLI) as conn:
        if channel:
            await message_log.claim(conn, key, "ds", channel, at.date(), at)
            await message_log.record(conn, key, status, at + dt.timedelta(minutes=1))
        else:
            await message_log.record(conn, key, status, at, journey_key="ds")


async def test_sends_by_day_channel_and_outcome_in_the_zone(
    journeys_stub: JourneysStub, db: Database
) -> None:
    may1 = dt.datetime(2025, 5, 1, 10, tzinfo=SHANGHAI)
    for channel, status in (("sms", "sent"), ("sms", "sent"), ("sms", "failed"), ("email", "unknown")):
        await log(db, may1, channel, status)
    await log(db, may1 + dt.timedelta(days=1), "", "skipped")
    # 00:30 on 2 May in Shanghai is still 1 May in UTC.
    await log(db, dt.datetime(2025, 5, 2, 0, 30, tzinfo=SHANGHAI), "sms", "sent")
    first, last = dt.date(2025, 4, 30), dt.date(2025, 5, 3)

    shanghai = await journeys_stub.GetDailySends(sends(first, last), metadata=HOOLI)
    utc = await journeys_stub.GetDailySends(sends(first, last, "UTC"), metadata=HOOLI)

    def rows(reply: pb.GetDailySendsResponse) -> list[tuple[int, str, str, int]]:
        return [(s.date.day, s.channel, s.outcome, s.messages) for s in reply.sends]

    assert rows(shanghai) == [
        (1, "email", "unknown", 1),
        (1, "sms", "failed", 1),
        (1, "sms", "sent", 2),
        (2, "", "skipped", 1),
        (2, "sms", "sent", 1),
    ]
    assert rows(utc) == [
        (1, "email", "unknown", 1),
        (1, "sms", "failed", 1),
        (1, "sms", "sent", 3),
        (2, "", "skipped", 1),
    ]


async def test_a_bad_range_names_its_field(journeys_stub: JourneysStub) -> None:
    day = dt.date(2026, 1, 1)
    call = journeys_stub.GetDailySends
    await bad(call(pb.GetDailySendsRequest(start_date=date(day)), metadata=HOOLI), "end_date", "required")
    await bad(call(sends(day, day - dt.timedelta(days=1)), metadata=HOOLI), "end_date", "before")
    await bad(call(sends(day, day + dt.timedelta(days=400)), metadata=HOOLI), "end_date", "400")
    await bad(call(sends(day, day, "Not/AZone"), metadata=HOOLI), "time_zone")
