"""BreakdownAudience over real tagging data: by tag value, by local weekday and hour, week by week.

Expected figures are computed here in Python (zoneinfo, date arithmetic) from the orders the test
records, independently of the SQL that computes them in the service.
"""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.type import date_pb2
from memberops.audience.v1 import audience_service_pb2

from tests.audience.helpers import create, give, in_batch, manual_dimension, member, now
from tests.conftest import ACME, unique
from tests.tagging.facts_helpers import a_refund, an_order, record_order, record_refund, stamp

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

Request = audience_service_pb2.BreakdownAudienceRequest
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


async def breakdown(
    stub: AudienceStub, audience: str, **by: Any
) -> audience_service_pb2.BreakdownAudienceResponse:
    return await stub.BreakdownAudience(Request(name=f"audiences/{audience}", **by), metadata=ACME)


async def paid(tagging_stub: TaggingStub, member_id: str, at: dt.datetime, amount: int = 10_000) -> str:
    order = an_order(member_id, paid_time=stamp(at), amount_minor=amount)
    await record_order(tagging_stub, order)
    return order.order_id


async def test_members_by_the_values_of_a_dimension(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    tiers = await manual_dimension(tagging_stub, ["gold", "silver", "bronze"])
    members = [await member(tagging_stub, batch) for _ in range(5)]
    await give(tagging_stub, tiers, "gold", members[:2])
    await give(tagging_stub, tiers, "silver", members[1:4])
    outsider = await member(tagging_stub, unique("batch"))
    await give(tagging_stub, tiers, "gold", [outsider])
    audience = (await create(audience_stub, in_batch(batch))).audience_id

    reply = await breakdown(audience_stub, audience, tag=audience_service_pb2.TagBreakdown(dimension=tiers))

    assert reply.member_count == 5 and reply.version == 1
    # Members holding two values of a multi-value dimension count under both.
    assert [(v.value, v.member_count) for v in reply.tag_values] == [("silver", 3), ("gold", 2)]
    assert reply.members_without_value == 1
    assert not reply.order_times and not reply.weeks


async def test_orders_by_local_weekday_and_hour(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    first, second, idle = [await member(tagging_stub, batch) for _ in range(3)]
    base = now().replace(minute=17, second=0, microsecond=0) - dt.timedelta(days=20)
    moments = {
        first: [base, base + dt.timedelta(days=7), base + dt.timedelta(days=2, hours=5)],
        second: [base + dt.timedelta(minutes=3), base - dt.timedelta(days=400)],
    }
    for member_id, times in moments.items():
        for moment in times:
            await paid(tagging_stub, member_id, moment)
    refunded = await paid(tagging_stub, second, base + dt.timedelta(days=1))
    await record_refund(tagging_stub, a_refund(refunded, refund_time=stamp(base + dt.timedelta(days=2))))
    audience = (await create(audience_stub, in_batch(batch))).audience_id

    def expected(zone: dt.tzinfo, window_days: int) -> dict[tuple[int, int], tuple[int, int]]:
        since = now() - dt.timedelta(days=window_days) if window_days else None
        orders: collections.Counter[tuple[int, int]] = collections.Counter()
        buyers: dict[tuple[int, int], set[str]] = collections.defaultdict(set)
        for member_id, times in moments.items():
            for moment in times:
                if since is None or moment > since:
                    local = moment.astimezone(zone)
                    cell = (local.isoweekday(), local.hour)
                    orders[cell] += 1
                    buyers[cell].add(member_id)
        return {cell: (n, len(buyers[cell])) for cell, n in orders.items()}

    for zone_name, window_days in (("Asia/Shanghai", 0), ("", 0), ("America/New_York", 365)):
        reply = await breakdown(
            audience_stub,
            audience,
            order_time=audience_service_pb2.OrderTimeBreakdown(time_zone=zone_name, window_days=window_days),
        )
        zone = zoneinfo.ZoneInfo(zone_name or "UTC")
        got = {(c.weekday, c.hour): (c.order_count, c.member_count) for c in reply.order_times}
        assert got == expected(zone, window_days), (zone_name, window_days)
        assert [(c.weekday, c.hour) for c in reply.order_times] == sorted(got)
        assert reply.member_count == 3  # `idle` is in the audience without orders
    assert idle


async def test_week_by_week_buyers_orders_and_net_gmv(
    tagging_stub: TaggingStub, audience_stub: AudienceStub
) -> None:
    batch = unique("batch")
    tiers = await manual_dimension(tagging_stub, ["gold", "silver"])
    gold, silver = await member(tagging_stub, batch), await member(tagging_stub, batch)
    await give(tagging_stub, tiers, "gold", [gold])
    await give(tagging_stub, tiers, "silver", [silver])
    monday = dt.date(2026, 10, 5)  # a Monday, in the past
    assert monday.weekday() == 0

    def at(days: int, hour: int) -> dt.datetime:
        """Local Shanghai time `days` after the first Monday."""
        return dt.datetime.combine(monday + dt.timedelta(days=days), dt.time(hour), SHANGHAI)

    await paid(tagging_stub, gold, at(0, 10), 10_000)
    # Sunday 23:00 in Shanghai is still the first week there (Sunday 15:00 UTC).
    await paid(tagging_stub, gold, at(6, 23), 5_000)
    # Monday 01:00 in Shanghai is the second week there, but Sunday 17:00 UTC, the first week in UTC.
    partly = await paid(tagging_stub, silver, at(7, 1), 8_000)
    await record_refund(
        tagging_stub, a_refund(partly, amount_minor=3_000, refund_time=stamp(at(9, 12)), lines=[])
    )
    whole = await paid(tagging_stub, silver, at(15, 12), 4_000)
    await record_refund(tagging_stub, a_refund(whole, refund_time=stamp(at(16, 12))))
    await paid(tagging_stub, gold, at(28, 12), 7_000)  # after the range
    audience = (await create(audience_stub, in_batch(batch))).audience_id

    def weekly(**fields: Any) -> audience_service_pb2.WeeklyBreakdown:
        # The range's dates fall mid-week: whole weeks from the Monday before the start are reported.
        return audience_service_pb2.WeeklyBreakdown(
            start_date=date(monday + dt.timedelta(days=2)),
            end_date=date(monday + dt.timedelta(days=16)),
            **fields,
        )

    reply = await breakdown(audience_stub, audience, weekly=weekly(time_zone="Asia/Shanghai"))
    figures = [(w.week_start.day, w.buyer_count, w.order_count, w.gmv_minor) for w in reply.weeks]
    assert figures == [(5, 1, 2, 15_000), (12, 1, 1, 5_000), (19, 0, 0, 0)]
    assert reply.member_count == 2

    utc = await breakdown(audience_stub, audience, weekly=weekly())
    assert [(w.week_start.day, w.buyer_count, w.order_count, w.gmv_minor) for w in utc.weeks] == [
        (5, 2, 3, 20_000),
        (12, 0, 0, 0),
        (19, 0, 0, 0),
    ]

    only_silver = await breakdown(
        audience_stub, audience, weekly=weekly(time_zone="Asia/Shanghai", dimension=tiers, value="silver")
    )
    assert only_silver.member_count == 1
    assert [(w.buyer_count, w.order_count, w.gmv_minor) for w in only_silver.weeks] == [
        (0, 0, 0),
        (1, 1, 5_000),
        (0, 0, 0),
    ]


@pytest.mark.parametrize(
    ("by", "field"),
    [
        ({}, "by"),
        ({"tag": audience_service_pb2.TagBreakdown()}, "tag.dimension"),
        ({"tag": audience_service_pb2.TagBreakdown(dimension="no_such_dimension")}, "tag.dimension"),
        (
            {"order_time": audience_service_pb2.OrderTimeBreakdown(time_zone="Mars/Olympus")},
            "order_time.time_zone",
        ),
        ({"order_time": audience_service_pb2.OrderTimeBreakdown(window_days=4000)}, "order_time.window_days"),
        ({"order_time": audience_service_pb2.OrderTimeBreakdown(window_days=-1)}, "order_time.window_days"),
        (
            {"weekly": audience_service_pb2.WeeklyBreakdown(end_date=date(dt.date(2026, 1, 1)))},
            "weekly.start_date",
        ),
        (
            {
                "weekly": audience_service_pb2.WeeklyBreakdown(
                    start_date=date(dt.date(2026, 2, 1)), end_date=date(dt.date(2026, 1, 1))
                )
            },
            "weekly.end_date",
        ),
        (
            {
                "weekly": audience_service_pb2.WeeklyBreakdown(
                    start_date=date(dt.date(2010, 1, 1)), end_date=date(dt.date(2026, 1, 1))
                )
            },
            "weekly.end_date",
        ),
        (
            {
                "weekly": audience_service_pb2.WeeklyBreakdown(
                    start_date=date_pb2.Date(month=1, day=1), end_date=date(dt.date(2026, 1, 1))
                )
            },
            "weekly.start_date",
        ),
        (
            {
                "weekly": audience_service_pb2.WeeklyBreakdown(
                    start_date=date(dt.date(2026, 1, 1)),
                    end_date=date(dt.date(2026, 2, 1)),
                    dimension="gender",
                )
            },
            "weekly.value",
        ),
    ],
)
async def test_bad_breakdowns_name_the_field(
    tagging_stub: TaggingStub, audience_stub: AudienceStub, by: dict[str, Any], field: str
) -> None:
    audience = (await create(audience_stub, in_batch(unique("batch")))).audience_id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await breakdown(audience_stub, audience, **by)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


async def test_breakdown_of_an_unknown_audience_is_not_found(audience_stub: AudienceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await breakdown(
            audience_stub, unique("aud"), tag=audience_service_pb2.TagBreakdown(dimension="gender")
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
