"""GetMember against the standard health Check of the same server, at concurrency 16.

Health Check is the cheapest call the server can answer (no auth, no database), so the ratio says
what authentication, a tenant transaction and a primary-key read cost on top of bare gRPC.
"""

from __future__ import annotations

import os
import random
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import harness, servers

CONCURRENCY = 16
MEMBERS = 1_000
ROUNDS = 3


async def seed(stub: Any) -> list[str]:
    ids = [f"bench-{i:05d}" for i in range(MEMBERS)]
    for member_id in ids:
        member = member_pb2.Member(
            member_id=member_id,
            profile=member_pb2.Profile(
                gender=member_pb2.GENDER_FEMALE, city="Hangzhou", city_tier=member_pb2.CITY_TIER_NEW_1
            ),
        )
        member.attributes.update({"vip": member_id.endswith("7"), "source": "bench"})
        await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=servers.AUTH)
    return ids


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        tagging: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)
        ids = await seed(tagging)
        requests = [tagging_service_pb2.GetMemberRequest(name=f"members/{i}") for i in ids]
        rng = random.Random(7)
        check = health_pb2.HealthCheckRequest()

        async def get_member(_: int) -> object:
            return await tagging.GetMember(rng.choice(requests), metadata=servers.AUTH)

        async def health_check(_: int) -> object:
            return await health.Check(check)

        await harness.against_baseline(
            ("get_member", get_member),
            ("health", health_check),
            concurrency=CONCURRENCY,
            seconds=seconds,
            rounds=ROUNDS,
        )
