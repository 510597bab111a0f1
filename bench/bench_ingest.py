"""Behaviour-event ingestion through RecordEvents, against raw COPY of the same rows.

The baseline is the fastest way PostgreSQL takes rows (COPY into a table with the same primary
key, no gRPC, no validation, no feed), so the ratio says what the service's checks, deduplication
and feed entries cost per event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import servers

MEMBERS = 2_000
BATCH = 1_000
CONCURRENCY = 4
KINDS = (
    [facts_pb2.EVENT_KIND_VIEW] * 6
    + [facts_pb2.EVENT_KIND_CLICK] * 2
    + [
        facts_pb2.EVENT_KIND_CART,
        facts_pb2.EVENT_KIND_FAVOURITE,
        facts_pb2.EVENT_KIND_SEARCH,
        facts_pb2.EVENT_KIND_SHARE,
    ]
)
CATEGORIES = ["skincare", "makeup", "fragrance", "haircare", "bodycare", "tools", "men", "baby"]


def generate(count: int, seed: int) -> list[facts_pb2.BehaviorEvent]:
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    events = []
    for i in range(count):
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(start + dt.timedelta(seconds=rng.randrange(300 * 86400)))
        # Skewed activity: a few members do most of the browsing.
        member = int(MEMBERS * rng.paretovariate(1.2)) % MEMBERS
        events.append(
            facts_pb2.BehaviorEvent(
                event_id=f"s{seed}-e{i}",
                member_id=f"bench-{member:05d}",
                kind=rng.choice(KINDS),
                occur_time=when,
                sku=f"sku-{rng.randrange(5000)}",
                category=rng.choice(CATEGORIES),
                channel="app",
            )
        )
    return events


async def seed_members(stub: Any) -> None:
    # In bounded bursts: one HTTP/2 connection refuses streams beyond its concurrency limit.
    for first in range(0, MEMBERS, 200):
        await asyncio.gather(
            *(
                stub.UpsertMember(
                    tagging_service_pb2.UpsertMemberRequest(
                        member=member_pb2.Member(member_id=f"bench-{i:05d}")
                    ),
                    metadata=servers.AUTH,
                )
                for i in range(first, min(first + 200, MEMBERS))
            )
        )


async def through_service(stub: Any, events: list[facts_pb2.BehaviorEvent]) -> float:
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    queue: asyncio.Queue[list[facts_pb2.BehaviorEvent]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def sender() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            reply = await stub.RecordEvents(
                tagging_service_pb2.RecordEventsRequest(events=batch), metadata=servers.AUTH
            )
            if reply.recorded_count != len(batch):
                raise RuntimeError(f"recorded {reply.recorded_count} of {len(batch)}")

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


async def through_copy(dsn: str, events: list[facts_pb2.BehaviorEvent]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.bench_events (LIKE tagging.events INCLUDING ALL);
               TRUNCATE public.bench_events"""
        )
        rows = [
            (
                "bench",
                e.event_id,
                e.member_id,
                e.kind,
                e.occur_time.ToDatetime(dt.UTC),
                e.sku,
                e.category,
                "",
                "",
                e.channel,
            )
            for e in events
        ]
        columns = [
            "tenant_id",
            "event_id",
            "member_id",
            "kind",
            "occur_time",
            "sku",
            "category",
            "brand",
            "query",
            "channel",
        ]
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH * 10):
            await conn.copy_records_to_table(
                "bench_events", schema_name="public", records=rows[i : i + BATCH * 10], columns=columns
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main() -> None:
    count = int(os.environ.get("BENCH_EVENTS", "100000"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        await seed_members(stub)
        await through_service(stub, generate(BATCH * CONCURRENCY, seed=0))  # warm-up
        service_seconds = await through_service(stub, generate(count, seed=1))
        copy_seconds = await through_copy(dsn, generate(count, seed=2))
    service_rate, copy_rate = count / service_seconds, count / copy_seconds
    print(f"record_events  batch={BATCH} c={CONCURRENCY}  {service_rate:9.0f} events/s  ({count} events)")
    print(f"raw_copy       (baseline)          {copy_rate:9.0f} events/s")
    print(f"ratio record_events/raw_copy  {service_rate / copy_rate:.2f}x")
