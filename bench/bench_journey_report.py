"""GetJourneyReport on a broadcast of MEMBEROPS_BENCH_MEMBERS members (default 1,000,000).

The rows a finished broadcast leaves, written set-based (generate_series) into a throw-away
PostgreSQL: one cohort, its members (10 % holdout, every member down one of a split's two arms,
a few percent converted with an order amount), the message log of its first send step (a row per
treated member) and its batches' counters (one row per 10,000 members), then analysed as the
cohort's activities do while it runs. The journey has no member journeys.

One figure against a baseline measured in the same run, REPORT_RUNS times each (default 15):

- the report: GetJourneyReport, the journey service in a process of its own (and, for the
  record, `report.journey_report` and its message called in the bench's process);
- against `count(*)` of the cohort's member rows in a tenant transaction: reading the rows once,
  the least any report of the cohort must do.

Target (issue 19): report p50 <= 500 ms.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
from memberops.journeys.v1 import journeys_service_pb2_grpc, report_pb2

from bench import dataset, servers
from runtime.db import Database
from services.journeys import report_messages
from workflows.journeys import report
from workflows.journeys import store as journeys_store
from workflows.journeys.definition import (
    Broadcast,
    Entry,
    EventMatch,
    Goal,
    JourneyDefinition,
    Send,
    Split,
    SplitArm,
    Step,
    Template,
)

RUNS = int(os.environ.get("REPORT_RUNS", "15"))
TARGET_P50_MS = 500.0
BATCH = 10_000
TENANT = servers.BENCH_TENANT
DEFINITION = JourneyDefinition(
    key="bench-report",
    name="Benchmark report",
    entry=Entry(broadcast=Broadcast(audience="bench-everyone")),
    steps=(
        Step(id="hello", send=Send(template="hello")),
        Step(id="pick", split=Split(arms=(SplitArm("a", 50, "offer-a"), SplitArm("b", 50, "offer-b")))),
        Step(id="offer-a", send=Send(template="hello")),
        Step(id="offer-b", send=Send(template="hello")),
    ),
    templates={"hello": Template(subject="Our sale", body="Hi {nickname}, 20 off this weekend.")},
    goal=Goal(event=EventMatch(kind="order"), attribution="7d"),
    holdout_percent=10,
)
START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)

# Member i: holdout when i % 10 = 0; arm a when i is even; converted when a hash of i falls under
# the arm's rate in thousandths (holdout 25, a 32, b 36); one in 97 of the rest still active.
MEMBERS = """
INSERT INTO journeys.cohort_members (tenant_id, cohort_id, member_id, holdout, snapshot_arm, state,
    position, due_time, enter_time, finish_time, convert_time, gmv_minor, split_arms)
SELECT $1, $2, 'm-' || lpad(i::text, 8, '0'), i % 10 = 0, '',
       CASE WHEN converted THEN 'converted' WHEN i % 97 = 0 THEN 'active' ELSE 'completed' END,
       CASE WHEN converted OR i % 97 <> 0 THEN 4 ELSE 2 END,
       CASE WHEN converted OR i % 97 <> 0 THEN 'infinity'::timestamptz ELSE t + interval '2 days' END,
       t, CASE WHEN converted OR i % 97 <> 0 THEN t + interval '2 days' END,
       CASE WHEN converted THEN t + interval '1 day' END,
       CASE WHEN converted THEN 1000 + (i * 31) % 9000 ELSE 0 END,
       ARRAY[CASE WHEN i % 2 = 0 THEN 'pick:a' ELSE 'pick:b' END]
FROM (
    SELECT i, $3::timestamptz AS t,
           (i::bigint * 7919) % 1000 < CASE WHEN i % 10 = 0 THEN 25 WHEN i % 2 = 0 THEN 32 ELSE 36 END
               AS converted
    FROM generate_series(1, $4) AS i
) AS m
"""
LOG = """
INSERT INTO journeys.messages (tenant_id, journey_run, member_id, step_id, journey_key, channel, status,
    local_day, create_time, update_time)
SELECT $1, 'cohort/' || $2, 'm-' || lpad(i::text, 8, '0'), 'hello', $3, 'sms', 'sent', $4::timestamptz::date,
       $4::timestamptz, $4::timestamptz
FROM generate_series(1, $5) AS i WHERE i % 10 <> 0
"""
BATCHES = """
INSERT INTO journeys.cohort_batches (tenant_id, cohort_id, seq, state, figures, create_time, update_time)
SELECT $1, $2, b, 'done', jsonb_build_object(
           'entered:treated', 9000, 'entered:holdout', 1000,
           'step:hello:entered', 10000, 'step:hello:sent', 8990, 'step:hello:deferred', 12,
           'step:hello:skipped', 10, 'step:hello:held_out', 1000,
           'step:pick:entered', 10000, 'step:pick:arm:a', 5000, 'step:pick:arm:b', 5000,
           'step:offer-a:entered', 5000, 'step:offer-a:sent', 4500, 'step:offer-a:held_out', 500,
           'step:offer-b:entered', 5000, 'step:offer-b:sent', 4490, 'step:offer-b:failed', 10,
           'step:offer-b:held_out', 500),
       $3, $3
FROM generate_series(0, $4 - 1) AS b
"""
SCAN = "SELECT count(*) FROM journeys.cohort_members WHERE tenant_id = $1 AND cohort_id = $2"


async def seed(db: Database, members: int) -> int:
    """The broadcast's rows; its cohort id."""
    stored = await journeys_store.put_definition(db, TENANT, DEFINITION)
    async with db.transaction(TENANT) as conn:
        cohort_id: int = await conn.fetchval(
            """INSERT INTO journeys.cohorts (tenant_id, journey_key, version, snapshot_id, workflow_id,
                   first_run_id, state, start_time, finish_time)
               VALUES ($1, $2, $3, 'bench', $4, 'bench-run', 'completed', $5::timestamptz,
                       $5::timestamptz + interval '9 days')
               RETURNING cohort_id""",
            TENANT,
            DEFINITION.key,
            stored.version,
            f"journey/{DEFINITION.key}/snapshot/bench",
            START,
        )
        await conn.execute(MEMBERS, TENANT, cohort_id, START, members)
        await conn.execute(LOG, TENANT, str(cohort_id), DEFINITION.key, START, members)
        await conn.execute(BATCHES, TENANT, cohort_id, START, -(-members // BATCH))
    async with db.transaction(TENANT) as conn:
        for table in ("cohorts", "cohort_members", "cohort_batches", "messages", "enrolments"):
            await conn.execute(f"ANALYZE journeys.{table}")
    return cohort_id


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    """Milliseconds of each of `runs` calls, after one unmeasured call."""
    await call()
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def line(name: str, took: list[float]) -> str:
    return f"{name:<16} p50 {statistics.median(took):8.1f} ms  max {max(took):8.1f} ms  ({len(took)} runs)"


async def main() -> None:
    members = dataset.members_from_env()
    async with servers.postgres() as dsn:
        await journeys_store.migrate(dsn)
        db = await Database.connect(dsn, min_size=1, max_size=2)
        try:
            started = time.perf_counter()
            cohort_id = await seed(db, members)
            took = time.perf_counter() - started
            print(f"data: a broadcast of {members:,} members written in {took:.1f} s")
            async with (
                servers.service("journeys", dsn) as address,
                grpc.aio.insecure_channel(address) as channel,
            ):
                stub = journeys_service_pb2_grpc.JourneyServiceStub(channel)
                request = report_pb2.GetJourneyReportRequest(name=f"journeys/{DEFINITION.key}")

                async def rpc() -> report_pb2.JourneyReport:
                    return await stub.GetJourneyReport(request, metadata=servers.AUTH, timeout=60)

                async def function() -> object:
                    return report_messages.to_message(await report.journey_report(db, TENANT, DEFINITION.key))

                async def scan() -> object:
                    async with db.transaction(TENANT, readonly=True) as conn:
                        return await conn.fetchval(SCAN, TENANT, cohort_id)

                answer = await rpc()
                assert answer == await function()
                assert sum(a.members for a in answer.arms[:2]) == members == await scan()
                ours, direct, base = (
                    await timed(rpc, RUNS),
                    await timed(function, RUNS),
                    await timed(scan, RUNS),
                )
        finally:
            await db.close()
    p50 = statistics.median(ours)
    treated = answer.arms[0]
    print(
        f"{line('GetJourneyReport', ours)}  "
        f"(treated {treated.members:,} members, {treated.conversions:,} converted; "
        f"{len(answer.steps)} steps, {len(answer.arms)} arms, {len(answer.comparisons)} comparisons)"
    )
    print(line("journey_report", direct) + "  (the same, called in this process)")
    print(line("member_scan", base) + "  (baseline)")
    print(
        f"ratio GetJourneyReport/member_scan  p50 {p50 / statistics.median(base):.2f}x  "
        f"target p50 <= {TARGET_P50_MS:.0f} ms {'met' if p50 <= TARGET_P50_MS else 'MISSED'}"
    )
