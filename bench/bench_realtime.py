"""Real-time tags: from sending RecordOrder to GetMemberTags showing the tag the order earns.

Orders go out open-loop at a fixed rate (200/s by default, the issue's target load) for random
generated members, each to a member with no order in flight. Right after RecordOrder returns the
member's tags are read; RecordOrder returns only after a refresh of the member's real-time tags
that started after the order committed (batched with the other orders in flight), so the first
read should already show the new value of `bench_orders_30d` (a REAL_TIME rule dimension on the
member's order count over 30 days); reads that do not are counted and repeated until it shows.
Latency runs from the moment the order was due to be sent (open loop: a stall counts). Every other
active real-time dimension (the built-in catalog) is refreshed on each order too, as in production.

The baseline is the standard health Check at the same open-loop rate: what a call costs through
gRPC, the client and the scheduler on this machine with no database in the path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tagging.v1 import (
    facts_pb2,
    rules_pb2,
    tagging_service_pb2,
    tagging_service_pb2_grpc,
    tags_pb2,
)

from bench import dataset, harness, servers
from services.tagging import catalog, rules

DIMENSION = "bench_orders_30d"
BANDS = (("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4_plus", 4, 1_000_000))
WARMUP_SECONDS = 3.0
BASELINE_SECONDS = 10.0
LOWER_SECONDS = 10.0
VISIBLE_TIMEOUT = 5.0


def band(count: int) -> str:
    return next(name for name, low, high in BANDS if low <= count <= high)


def definition() -> tags_pb2.TagDefinition:
    values = []
    for name, low, high in BANDS:
        operand = rules_pb2.Operand(
            aggregate=rules_pb2.Aggregate(function=rules_pb2.AGGREGATE_FUNCTION_ORDER_COUNT, window_days=30)
        )
        condition = rules_pb2.Condition(
            operand=operand,
            operator=rules_pb2.OPERATOR_BETWEEN,
            values=[rules_pb2.Value(number=low), rules_pb2.Value(number=high)],
        )
        values.append(tags_pb2.TagValue(value=name, rule=rules_pb2.Rule(condition=condition)))
    return tags_pb2.TagDefinition(
        dimension=DIMENSION,
        display_name="Orders in 30 days (bench)",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=values,
    )


async def quiet_members(dsn: str) -> list[str]:
    """Members without an order in the 40 days before NOW: in a 30-day window that ends a minute
    or two after NOW, their only orders are this bench's, so the expected value is exact."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT m.member_id FROM tagging.members m
               WHERE NOT EXISTS (SELECT 1 FROM tagging.orders o
                                 WHERE o.member_id = m.member_id AND o.paid_time > $1)
               ORDER BY m.member_id""",
            dataset.NOW - dt.timedelta(days=40),
        )
    finally:
        await conn.close()
    return [row["member_id"] for row in rows]


async def order_driven_dimensions(dsn: str) -> list[str]:
    """The active real-time dimensions that read orders (those RecordOrder refreshes)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT d.dimension, v.body::text AS body FROM tagging.tag_definitions d
               JOIN tagging.tag_definition_versions v
                 ON v.tenant_id = d.tenant_id AND v.dimension = d.dimension AND v.version = d.current_version
               WHERE d.state = 1 ORDER BY d.dimension"""
        )
    finally:
        await conn.close()
    found = []
    for row in rows:
        spec = catalog.from_body(json.loads(row["body"]))
        if spec.kind not in catalog.EVALUATED_KINDS or spec.refresh_policy != catalog.Refresh.REAL_TIME:
            continue
        if rules.Input.ORDERS in catalog.compile_definition(spec, filtered=True).inputs:
            found.append(row["dimension"])
    return found


@dataclass(frozen=True)
class Run:
    result: harness.OpenLoopResult
    stale_reads: int
    extra_reads: int
    record_ms: list[float]


class Driver:
    """Sends one order and waits until the member's tags show it; keeps the counts it expects."""

    def __init__(self, stub: Any, members: list[str], clock_origin: float) -> None:
        self._stub = stub
        self._members = members
        self._origin = clock_origin
        self._rng = random.Random(3)
        self._busy: set[str] = set()
        self._unknown: set[str] = set()
        self._orders: dict[str, int] = {}
        self.stale_reads = 0
        self.extra_reads = 0
        self.record_ms: list[float] = []
        self._sequence = 0

    def reset_counters(self) -> None:
        self.stale_reads = 0
        self.extra_reads = 0
        self.record_ms = []

    def _now(self) -> dt.datetime:
        # The service's clock started at NOW before our origin, so this is never ahead of it.
        return dataset.NOW + dt.timedelta(seconds=time.monotonic() - self._origin - 1)

    def _order(self, member_id: str) -> facts_pb2.Order:
        self._sequence += 1
        paid = timestamp_pb2.Timestamp()
        paid.FromDatetime(self._now())
        lines = [
            facts_pb2.OrderLine(
                line_id=str(n + 1),
                sku=f"sku-{self._rng.randrange(20)}-{self._rng.randrange(8)}-{self._rng.randrange(40)}",
                category=self._rng.choice(dataset.CATEGORIES[:8]),
                brand=f"brand-{self._rng.randrange(8)}",
                quantity=1,
                unit_price_minor=self._rng.randrange(1000, 40000),
            )
            for n in range(self._rng.choice((1, 1, 2)))
        ]
        return facts_pb2.Order(
            order_id=f"rt-{self._sequence}",
            member_id=member_id,
            paid_time=paid,
            amount_minor=sum(line.unit_price_minor * line.quantity for line in lines),
            store="online",
            payment_method="alipay",
            lines=lines,
        )

    def _pick(self) -> str:
        if len(self._busy) + len(self._unknown) >= len(self._members):
            raise RuntimeError("every member has an order in flight or an unknown state")
        while True:
            member_id = self._rng.choice(self._members)
            if member_id not in self._busy and member_id not in self._unknown:
                return member_id

    async def __call__(self, _: int) -> None:
        member_id = self._pick()
        self._busy.add(member_id)
        try:
            sent = time.perf_counter()
            try:
                await self._stub.RecordOrder(
                    tagging_service_pb2.RecordOrderRequest(order=self._order(member_id)),
                    metadata=servers.AUTH,
                    timeout=30,
                )
            except grpc.aio.AioRpcError:
                # It may still have committed: what this member should show is unknown from now on.
                self._unknown.add(member_id)
                raise
            self.record_ms.append((time.perf_counter() - sent) * 1000)
            self._orders[member_id] = self._orders.get(member_id, 0) + 1
            expected = band(self._orders[member_id])
            request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
            deadline = time.perf_counter() + VISIBLE_TIMEOUT
            first = True
            while True:
                reply = await self._stub.GetMemberTags(request, metadata=servers.AUTH, timeout=30)
                if any(t.dimension == DIMENSION and t.value == expected for t in reply.tags):
                    return
                if first:
                    self.stale_reads += 1
                    first = False
                self.extra_reads += 1
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{member_id}: {expected} not visible after {VISIBLE_TIMEOUT} s")
                await asyncio.sleep(0.005)
        finally:
            self._busy.discard(member_id)


async def main() -> None:
    rate = float(os.environ.get("BENCH_RATE", "200"))
    seconds = float(os.environ.get("BENCH_SECONDS", "30"))
    members = int(os.environ.get("BENCH_REALTIME_MEMBERS", "20000"))
    # Durable, as in production: each order's commit waits for its WAL flush.
    async with servers.postgres(durable=True) as dsn:
        await dataset.migrate(dsn)
        generated = await dataset.generate(dsn, members, log=lambda _: None)
        print(f"data: {generated.line()}")
        pool = await quiet_members(dsn)
        async with (
            servers.service("tagging", dsn, clock=f"from:{dataset.NOW.isoformat()}") as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            origin = time.monotonic()
            stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)
            await stub.CreateTagDefinition(
                tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition()),
                metadata=servers.AUTH,
            )
            started = time.perf_counter()
            recomputed = await stub.RecomputeTags(
                tagging_service_pb2.RecomputeTagsRequest(), metadata=servers.AUTH, timeout=600
            )
            # As autovacuum would soon after a recompute; without fresh statistics on the tags
            # just written, each refresh scans every holder of a value (see the report).
            await dataset.execute(dsn, "ANALYZE tagging.member_tags")
            real_time = await order_driven_dimensions(dsn)
            print(
                f"initial recompute of {len(recomputed.results)} dimensions: "
                f"{time.perf_counter() - started:.1f} s; real-time dimensions refreshed on each order: "
                f"{', '.join(real_time)}"
            )
            print(
                f"{len(pool):,} of {members:,} members without an order in the last 40 days take the orders"
            )
            driver = Driver(stub, pool, origin)
            check = health_pb2.HealthCheckRequest()

            async def health_check(_: int) -> object:
                return await health.Check(check, timeout=30)

            await harness.open_loop("warmup", driver, rate=rate / 4, seconds=WARMUP_SECONDS)

            async def run(run_rate: float, run_seconds: float) -> Run:
                driver.reset_counters()
                result = await harness.open_loop("order->tags", driver, rate=run_rate, seconds=run_seconds)
                return Run(result, driver.stale_reads, driver.extra_reads, list(driver.record_ms))

            runs = [await run(rate, seconds)]
            if runs[0].result.achieved_rate < 0.9 * rate:
                # Saturated: once more at half what it achieved, to show the latency below saturation.
                runs.append(await run(max(5.0, round(runs[0].result.achieved_rate / 2)), LOWER_SECONDS))
            baseline = await harness.open_loop(
                "health", health_check, rate=rate, seconds=min(seconds, BASELINE_SECONDS)
            )
    for n, r in enumerate(runs):
        if n:
            print(f"below saturation, at {r.result.rate:.0f}/s for {r.result.sent / r.result.rate:.0f} s:")
        print(r.result.line())
        print(
            f"{'':<12} first read stale: {r.stale_reads} of {len(r.result.latencies_ms)} orders "
            f"({r.extra_reads} extra reads); RecordOrder alone (send to return) "
            f"p50 {percentile(r.record_ms, 50):.2f} ms  p99 {percentile(r.record_ms, 99):.2f} ms"
        )
    subject = runs[0].result
    print(baseline.line())
    print(harness.open_loop_ratio_line(subject, baseline))
    p99 = subject.percentile(99)
    measured = f"{p99:.0f} ms" if math.isfinite(p99) else "failed calls (over 1%)"
    print(
        f"target (issue 3): p99 <= 1000 ms at 200 orders/s; measured p99 {measured} at {subject.rate:.0f}/s "
        f"(the service completed {subject.achieved_rate:.0f}/s)"
    )
    # Deadlines passing is what overload looks like (reported above); anything else is a bug.
    broken = [kind for r in runs for kind in r.result.failures if kind != "DEADLINE_EXCEEDED"]
    broken += baseline.failures
    if broken:
        raise SystemExit(f"benchmark calls failed: {', '.join(sorted(set(broken)))}")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]
