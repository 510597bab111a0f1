"""Bulk member load through ImportMembers, against raw COPY of the same rows.

The baseline is the fastest way PostgreSQL takes rows: COPY into a table with the members'
columns and key, with no gRPC, validation, upsert comparison, feed entries or tag refresh, so the
ratio says what the service adds per member. Re-sending the same members (nothing changes) is
shown too: it is what a nightly full sync mostly does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from typing import Any

import asyncpg
import grpc
from google.type import date_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import servers

BATCH = 5_000
ROUNDS = 3
CITIES = ["Hangzhou", "Ningbo", "Shanghai", "Beijing", "Chengdu", "Wuhan", "Xiamen", "Suzhou"]
CHANNELS = ["app", "mini_program", "tmall", "store"]
COLUMNS = [
    "tenant_id",
    "member_id",
    "gender",
    "birthday",
    "city",
    "city_tier",
    "register_time",
    "register_channel",
    "level",
    "attributes",
]


def generate(prefix: str, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return [
        {
            "member_id": f"{prefix}-{i:07d}",
            "gender": rng.choice((1, 2)),
            "birthday": dt.date(1960 + rng.randrange(45), 1 + rng.randrange(12), 1 + rng.randrange(28)),
            "city": rng.choice(CITIES),
            "city_tier": 1 + rng.randrange(6),
            "register_time": start + dt.timedelta(seconds=rng.randrange(6 * 365 * 86400)),
            "register_channel": rng.choice(CHANNELS),
            "level": rng.choice(("", "silver", "gold")),
            "attributes": {"source": "bench", "vip": rng.random() < 0.1, "children": rng.randrange(3)},
        }
        for i in range(count)
    ]


def to_proto(row: dict[str, Any]) -> member_pb2.Member:
    birthday: dt.date = row["birthday"]
    member = member_pb2.Member(
        member_id=row["member_id"],
        profile=member_pb2.Profile(
            gender=row["gender"],
            birthday=date_pb2.Date(year=birthday.year, month=birthday.month, day=birthday.day),
            city=row["city"],
            city_tier=row["city_tier"],
            register_channel=row["register_channel"],
            level=row["level"],
        ),
    )
    member.profile.register_time.FromDatetime(row["register_time"])
    member.attributes.update(row["attributes"])
    return member


async def through_service(stub: Any, members: list[member_pb2.Member], expect_changed: int) -> float:
    """One ImportMembers stream of BATCH-sized messages; returns its seconds."""

    async def requests() -> Any:
        for i in range(0, len(members), BATCH):
            yield tagging_service_pb2.ImportMembersRequest(members=members[i : i + BATCH])

    started = time.perf_counter()
    reply = await stub.ImportMembers(requests(), metadata=servers.AUTH)
    seconds = time.perf_counter() - started
    if (reply.received_count, reply.changed_count) != (len(members), expect_changed):
        raise RuntimeError(f"received {reply.received_count}, changed {reply.changed_count}")
    return seconds


async def through_copy(dsn: str, rows: list[dict[str, Any]]) -> float:
    """COPY of the same rows, in the same batches, into a table like tagging.members."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.bench_members (LIKE tagging.members INCLUDING ALL);
               TRUNCATE public.bench_members"""
        )
        records = [
            (
                servers.BENCH_TENANT,
                r["member_id"],
                r["gender"],
                r["birthday"],
                r["city"],
                r["city_tier"],
                r["register_time"],
                r["register_channel"],
                r["level"],
                json.dumps(r["attributes"], separators=(",", ":"), sort_keys=True),
            )
            for r in rows
        ]
        started = time.perf_counter()
        for i in range(0, len(records), BATCH):
            await conn.copy_records_to_table(
                "bench_members", schema_name="public", records=records[i : i + BATCH], columns=COLUMNS
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def main() -> None:
    count = int(os.environ.get("BENCH_MEMBERS", "200000"))
    rates: dict[str, list[float]] = {"import": [], "resend": [], "copy": []}
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        warm = [to_proto(r) for r in generate("warm", BATCH * 2, seed=0)]
        await through_service(stub, warm, expect_changed=len(warm))
        for round_no in range(ROUNDS):
            rows = generate(f"r{round_no}", count, seed=round_no + 1)
            members = [to_proto(r) for r in rows]
            rates["import"].append(count / await through_service(stub, members, expect_changed=count))
            rates["resend"].append(count / await through_service(stub, members, expect_changed=0))
            rates["copy"].append(count / await through_copy(dsn, rows))
    imported, resent, copied = (median(rates[k]) for k in ("import", "resend", "copy"))
    print(f"import_members  batch={BATCH}      {imported:9.0f} members/s  ({count} members)")
    print(f"import_resend   (all unchanged)     {resent:9.0f} members/s")
    print(f"raw_copy        (baseline)          {copied:9.0f} members/s")
    print(f"ratio import_members/raw_copy  {imported / copied:.2f}x")
    print(f"ratio import_resend/raw_copy   {resent / copied:.2f}x")
