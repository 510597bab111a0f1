"""GetDailyKpis: orders, GMV, buyers, repeat buyers, new and active members and refunds per day of
a time zone, every day present; facts count on their own day, whenever they were recorded.

The tests write in acme, where other tests' facts may fall on the same days: each compares the
figures after its facts with those before (tests run one at a time, and nothing in the background
records facts), so the differences are exactly its own."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import TYPE_CHECKING, Any

import pytest
from google.type import date_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2

from tests.conftest import ACME, unique
from tests.grpc_helpers import bad
from tests.tagging.facts_helpers import (
    a_refund,
    an_event,
    an_order,
    record_events,
    record_order,
    record_refund,
    stamp,
)

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
FIELDS = (
    "orders",
    "gmv_minor",
    "buyers",
    "repeat_buyers",
    "new_members",
    "active_members",
    "refunds",
    "refund_minor",
)
D0 = dt.date(2025, 3, 10)


def day(offset: int) -> dt.date:
    return D0 + dt.timedelta(days=offset)


def at(offset: int, hour: int, minute: int = 0) -> dt.datetime:
    """A moment of a day around D0 in Shanghai."""
    return dt.datetime.combine(day(offset), dt.time(hour, minute), SHANGHAI)


def date_of(value: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


async def kpis(
    stub: Stub, start: dt.date, end: dt.date, time_zone: str = ""
) -> dict[dt.date, dict[str, int]]:
    request = tagging_service_pb2.GetDailyKpisRequest(
        start_date=date_of(start), end_date=date_of(end), time_zone=time_zone
    )
    response = await stub.GetDailyKpis(request, metadata=ACME)
    return {
        dt.date(d.date.year, d.date.month, d.date.day): {f: getattr(d, f) for f in FIELDS}
        for d in response.days
    }


def change(
    before: dict[dt.date, dict[str, int]], after: dict[dt.date, dict[str, int]]
) -> dict[dt.date, dict[str, int]]:
    """What moved, per day: only the non-zero differences."""
    assert list(before) == list(after)
    moved = {d: {f: after[d][f] - before[d][f] for f in FIELDS} for d in after}
    return {d: {f: v for f, v in fields.items() if v} for d, fields in moved.items()}


async def member(stub: Stub, registered: dt.datetime | None) -> str:
    member_id = unique("kpi")
    profile = member_pb2.Profile(register_time=stamp(registered)) if registered else member_pb2.Profile()
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(member_id=member_id, profile=profile)
        ),
        metadata=ACME,
    )
    return member_id


async def order(stub: Stub, member_id: str, paid: dt.datetime, amount: int) -> str:
    recorded = await record_order(stub, an_order(member_id, paid_time=stamp(paid), amount_minor=amount))
    return recorded.order_id


async def test_each_fact_counts_on_its_own_day_in_the_zone(tagging_stub: Stub) -> None:
    before = await kpis(tagging_stub, day(0), day(2))
    before_utc = await kpis(tagging_stub, day(0), day(2), "UTC")

    newcomer = await member(tagging_stub, at(0, 8))
    regular = await member(tagging_stub, dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    browser = await member(tagging_stub, dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    # Every order here is back-dated (paid in 2025, recorded today): each counts on its paid day.
    first = await order(tagging_stub, newcomer, at(0, 9), 10_000)
    await order(tagging_stub, newcomer, at(0, 20), 20_000)
    await order(tagging_stub, newcomer, at(1, 12), 5_000)
    await order(tagging_stub, regular, dt.datetime(2024, 6, 1, tzinfo=dt.UTC), 1_000)
    # 00:30 on day 2 in Shanghai is still day 1 in UTC.
    await order(tagging_stub, regular, at(2, 0, 30), 7_000)
    await record_events(
        tagging_stub,
        [an_event(browser, occur_time=stamp(at(1, 10))), an_event(newcomer, occur_time=stamp(at(1, 11)))],
    )
    await record_refund(
        tagging_stub,
        a_refund(
            first,
            refund_time=stamp(at(2, 15)),
            amount_minor=2_000,
            lines=[facts_pb2.RefundLine(line_id="2", quantity=1)],
        ),
    )

    moved = change(before, await kpis(tagging_stub, day(0), day(2)))
    assert moved == {
        day(0): {"orders": 2, "gmv_minor": 30_000, "buyers": 1, "new_members": 1, "active_members": 1},
        day(1): {"orders": 1, "gmv_minor": 5_000, "buyers": 1, "repeat_buyers": 1, "active_members": 2},
        day(2): {
            "orders": 1,
            "gmv_minor": 7_000,
            "buyers": 1,
            "repeat_buyers": 1,
            "active_members": 1,
            "refunds": 1,
            "refund_minor": 2_000,
        },
    }
    moved_utc = change(before_utc, await kpis(tagging_stub, day(0), day(2), "UTC"))
    assert {d: fields.get("orders", 0) for d, fields in moved_utc.items()} == {
        day(0): 2,
        day(1): 2,
        day(2): 0,
    }


async def test_every_day_is_present_and_quiet_days_are_zeros(tagging_stub: Stub) -> None:
    start = dt.date(2098, 1, 1)
    days = await kpis(tagging_stub, start, start + dt.timedelta(days=399), "America/New_York")
    assert list(days) == [start + dt.timedelta(days=i) for i in range(400)]
    assert all(fields == dict.fromkeys(FIELDS, 0) for fields in days.values())


def request(**fields: Any) -> tagging_service_pb2.GetDailyKpisRequest:
    values: dict[str, Any] = {"start_date": date_of(day(0)), "end_date": date_of(day(6))}
    values.update(fields)
    return tagging_service_pb2.GetDailyKpisRequest(**values)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"start_date": None}, "start_date"),
        ({"end_date": None}, "end_date"),
        ({"start_date": date_pb2.Date(year=2025, month=13, day=1)}, "start_date"),
        ({"end_date": date_pb2.Date(year=2025, month=2, day=30)}, "end_date"),
        ({"start_date": date_of(day(7))}, "end_date"),
        ({"end_date": date_of(day(400))}, "end_date"),
        ({"start_date": date_of(dt.date(1999, 12, 31))}, "start_date"),
        ({"end_date": date_of(dt.date(2100, 1, 1))}, "end_date"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
    ],
)
async def test_bad_requests_name_the_field(tagging_stub: Stub, fields: dict[str, Any], path: str) -> None:
    await bad(tagging_stub.GetDailyKpis(request(**fields), metadata=ACME), path)
