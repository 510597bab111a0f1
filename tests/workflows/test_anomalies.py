"""The daily KPI anomaly check end to end: a tenant of its own (Wonka) with eight weeks of steady
orders recorded as history and one day of ten times the orders; the check runs on the worker
(time-skipping test server) and the journeys service answers the flag in ListAnomalies and in
`memberops_kpi_anomalies`. ListAnomalies' paging and field checks are tested on rows of their own
(Hooli)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2
from memberops.journeys.v1 import journeys_service_pb2 as pb
from memberops.journeys.v1 import journeys_service_pb2_grpc
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2
from prometheus_client import REGISTRY
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.journeys.anomaly_metrics import AnomalyCounts
from tests.conftest import HOOLI, TENANT_HOOLI, TENANT_WONKA, WONKA, unique
from tests.grpc_helpers import bad
from workflows.anomalies import store
from workflows.anomalies.activities import AnomalyActivities
from workflows.anomalies.payloads import CheckInput, CheckResult, SeriesRequest
from workflows.anomalies.workflow import KpiAnomalyCheckWorkflow
from workflows.worker import Resources, build_worker, services_of

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as JourneysStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

SHANGHAI = ZoneInfo("Asia/Shanghai")
WEEKS = 9
STEADY, PRICE = 3, 1000


@pytest.fixture(scope="module")
async def journeys_stub(journeys: app.RunningService) -> AsyncIterator[JourneysStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{journeys.port}") as channel:
        yield journeys_service_pb2_grpc.JourneyServiceStub(channel)


def date(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def stamp(at: dt.datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(at)
    return message


async def seed_orders(tagging: TaggingStub, last: dt.date, spike: dt.date) -> None:
    """Members registered long before, and STEADY orders a day at noon in Shanghai for WEEKS weeks
    up to `last`, ten times as many on `spike`: imported as history."""
    members = [unique("an") for _ in range(STEADY)]
    registered = stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=400))

    async def member_batches() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        yield tagging_service_pb2.ImportMembersRequest(
            members=[
                member_pb2.Member(member_id=m, profile=member_pb2.Profile(register_time=registered))
                for m in members
            ]
        )

    await tagging.ImportMembers(member_batches(), metadata=WONKA)
    orders = []
    for n in range(WEEKS * 7):
        day = last - dt.timedelta(days=n)
        paid = stamp(dt.datetime.combine(day, dt.time(12), SHANGHAI))
        for i in range(STEADY * (10 if day == spike else 1)):
            orders.append(
                facts_pb2.Order(
                    order_id=unique("ao"),
                    member_id=members[i % STEADY],
                    paid_time=paid,
                    amount_minor=PRICE,
                    lines=[
                        facts_pb2.OrderLine(
                            line_id="1", sku="s", category="c", quantity=1, unit_price_minor=PRICE
                        )
                    ],
                )
            )

    async def order_batches() -> AsyncIterator[tagging_service_pb2.ImportOrdersRequest]:
        yield tagging_service_pb2.ImportOrdersRequest(orders=orders)

    await tagging.ImportOrders(order_batches(), metadata=WONKA)


async def check(
    env: WorkflowEnvironment, settings: Settings, resources: Resources, last: dt.date
) -> CheckResult:
    """One check on the worker, at the environment's time (no timer of its own: nothing to skip)."""
    with env.auto_time_skipping_disabled():
        async with build_worker(env.client, settings, resources):
            return await env.client.execute_workflow(
                KpiAnomalyCheckWorkflow.run,
                CheckInput(TENANT_WONKA, last_day=last.isoformat()),
                id=f"anomalies-test-{uuid.uuid4()}",
                task_queue=settings.temporal_task_queue,
            )


def reader_of(service: app.RunningService) -> AnomalyCounts:
    """The service's background reader of the metric's figures (the loop's bound method's owner)."""
    for loop in service.background:
        owner = getattr(loop, "__self__", None)
        if isinstance(owner, AnomalyCounts):
            return owner
    raise AssertionError("the journeys service runs no AnomalyCounts")


def gauge(tenant_id: str) -> dict[str, float]:
    return {
        sample.labels["kpi"]: sample.value
        for family in REGISTRY.collect()
        if family.name == "memberops_kpi_anomalies"
        for sample in family.samples
        if sample.labels["tenant"] == tenant_id
    }


async def test_a_tenfold_day_is_flagged_high_and_steady_days_are_not(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    tagging_stub: TaggingStub,
    journeys_stub: JourneysStub,
    journeys: app.RunningService,
) -> None:
    last = dt.datetime.now(SHANGHAI).date() - dt.timedelta(days=1)
    spike = last - dt.timedelta(days=3)
    await seed_orders(tagging_stub, last, spike)

    result = await check(time_skipping_env, worker_settings, resources, last)

    assert (result.first_checked, result.last_day) == (
        (last - dt.timedelta(days=6)).isoformat(),
        last.isoformat(),
    )
    # Orders, GMV, new members and sign-ins were checked on seven days; sends: none had any.
    assert (result.checked, result.flagged) == (28, 2)
    listed = await journeys_stub.ListAnomalies(
        pb.ListAnomaliesRequest(start_date=date(last - dt.timedelta(days=WEEKS * 7)), end_date=date(last)),
        metadata=WONKA,
    )
    flags = [(a.kpi, dt.date(a.date.year, a.date.month, a.date.day), a.direction) for a in listed.anomalies]
    assert flags == [("gmv", spike, "high"), ("orders", spike, "high")]
    orders = listed.anomalies[1]
    assert (orders.value, orders.baseline, orders.history_days) == (30, 3, 8)
    assert orders.robust_z == pytest.approx(27)

    # Run again: the same rows, rewritten (natural key tenant, kpi, day).
    first_detected = orders.detect_time.ToDatetime()
    await check(time_skipping_env, worker_settings, resources, last)
    again = await journeys_stub.ListAnomalies(pb.ListAnomaliesRequest(kpi="orders"), metadata=WONKA)
    assert [(a.kpi, a.date, a.value) for a in again.anomalies] == [("orders", orders.date, 30)]
    assert again.anomalies[0].detect_time.ToDatetime() >= first_detected

    # The metric: the journeys service's reader, refreshed now rather than within the minute.
    await reader_of(journeys).refresh()
    assert gauge(TENANT_WONKA) == {
        "orders": 1,
        "gmv": 1,
        "new_members": 0,
        "send_failure_rate": 0,
        "sign_ins": 0,
    }


async def test_by_default_the_check_ends_yesterday_in_its_zone(
    worker_settings: Settings, resources: Resources
) -> None:
    services = services_of(resources, worker_settings)
    # 17:30 UTC on 1 March is 01:30 on 2 March in Shanghai: yesterday there is 1 March.
    at = dt.datetime(2026, 3, 1, 17, 30, tzinfo=dt.UTC)
    fetch = AnomalyActivities(
        resources.db, services.tagging, services.tasks, services.token_for_tenant, lambda: at
    )

    series = await ActivityEnvironment().run(
        fetch.fetch_series, SeriesRequest(TENANT_WONKA, "Asia/Shanghai", "", 7)
    )

    assert (series.first_day, series.first_checked, series.last_day) == (
        "2025-12-29",
        "2026-02-23",
        "2026-03-01",
    )
    assert {kpi: len(values) for kpi, values in series.values.items()} == {
        "orders": 63,
        "gmv": 63,
        "new_members": 63,
        "sign_ins": 63,
        "send_failure_rate": 63,
    }
    utc = await ActivityEnvironment().run(fetch.fetch_series, SeriesRequest(TENANT_WONKA, "UTC", "", 7))
    assert utc.last_day == "2026-02-28"


async def test_anomalies_page_newest_day_first_then_by_kpi(journeys_stub: JourneysStub, db: Database) -> None:
    day = dt.date(2024, 2, 5)
    at = dt.datetime(2024, 2, 6, tzinfo=dt.UTC)
    found = [
        store.Anomaly(kpi, d, 10.0, 1.0, 9.0, "high", 8, at)
        for kpi, d in (("orders", day), ("gmv", day), ("sign_ins", day - dt.timedelta(days=1)))
    ]
    async with db.transaction(TENANT_HOOLI) as conn:
        await store.replace_days(conn, TENANT_HOOLI, day - dt.timedelta(days=6), day, found)
    request = pb.ListAnomaliesRequest(
        start_date=date(day - dt.timedelta(days=6)), end_date=date(day), page_size=2
    )

    first = await journeys_stub.ListAnomalies(request, metadata=HOOLI)
    request.page_token = first.next_page_token
    second = await journeys_stub.ListAnomalies(request, metadata=HOOLI)

    assert [(a.kpi, a.date.day) for a in first.anomalies] == [("gmv", 5), ("orders", 5)]
    assert [(a.kpi, a.date.day) for a in second.anomalies] == [("sign_ins", 4)]
    assert second.next_page_token == ""
    only = pb.ListAnomaliesRequest(
        start_date=date(day - dt.timedelta(days=6)), end_date=date(day), kpi="sign_ins"
    )
    assert [a.kpi for a in (await journeys_stub.ListAnomalies(only, metadata=HOOLI)).anomalies] == [
        "sign_ins"
    ]


async def test_bad_anomaly_requests_name_their_field(journeys_stub: JourneysStub) -> None:
    call = journeys_stub.ListAnomalies
    day = dt.date(2026, 1, 1)
    await bad(call(pb.ListAnomaliesRequest(kpi="revenue"), metadata=HOOLI), "kpi")
    later_start = pb.ListAnomaliesRequest(start_date=date(day), end_date=date(day - dt.timedelta(days=1)))
    await bad(call(later_start, metadata=HOOLI), "end_date")
    await bad(call(pb.ListAnomaliesRequest(page_size=1001), metadata=HOOLI), "page_size")
    await bad(call(pb.ListAnomaliesRequest(page_token="x"), metadata=HOOLI), "page_token")
    no_day = pb.ListAnomaliesRequest(start_date=date_pb2.Date(year=2026, month=2, day=30))
    await bad(call(no_day, metadata=HOOLI), "start_date")
