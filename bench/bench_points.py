"""EarnPoints against the standard health Check of the same server, at concurrency 16.

Each call earns points for one of many members (so calls rarely queue on one member's account
lock) under a fresh request id: the whole write path — authentication, a tenant transaction, the
account lock, the request-id lookup and the entry with its lot — on top of bare gRPC.
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tasks.v1 import points_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from bench import harness, servers

CONCURRENCY = 16
MEMBERS = 10_000
ROUNDS = 3


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    async with (
        servers.postgres() as dsn,
        servers.service("tasks", dsn) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        tasks: Any = tasks_service_pb2_grpc.TasksServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)
        rng = random.Random(7)
        ids = itertools.count()
        check = health_pb2.HealthCheckRequest()

        async def earn_points(_: int) -> object:
            request = tasks_service_pb2.EarnPointsRequest(
                member_id=f"bench-{rng.randrange(MEMBERS):05d}",
                amount=rng.randint(1, 500),
                reason=points_pb2.REASON_TASK,
                reference="daily-sign-in",
                expiry_policy=points_pb2.EXPIRY_POLICY_END_OF_YEAR,
                request_id=f"bench-earn-{next(ids)}",
            )
            return await tasks.EarnPoints(request, metadata=servers.AUTH)

        async def health_check(_: int) -> object:
            return await health.Check(check)

        await harness.against_baseline(
            ("earn_points", earn_points),
            ("health", health_check),
            concurrency=CONCURRENCY,
            seconds=seconds,
            rounds=ROUNDS,
        )
