"""EarnPoints and SignIn against the standard health Check of the same server, at concurrency 16.

EarnPoints: members imported into tagging first, and each earns once before the measurement
(the tasks service asks tagging whether a member exists, once per member and process); then each
call earns points for one of many members (so calls rarely queue on one member's account lock)
under a fresh request id: the whole write path — authentication, the account lock, the
request-id lookup, the entry with its lot and the level check — on top of bare gRPC.

SignIn: members imported into tagging first (the tasks service asks tagging whether a member
exists, once per member and process), then every call signs a different member in to one of a few
daily sign-in tasks with a budget: the member's account lock, the day's and yesterday's sign-ins,
the completion, a take from the budget's shards, the ledger earning and the sign-in row. Sign-ins of
one task that arrive while one group of them is at the database go together as the next group, one
statement for the group (tasks.sign_in_batch, decisions 154 and 161; one alone is tasks.sign_in).
Each member signs in once per task (a second time the same day is
refused), so members times tasks bounds the calls; one GetStreak per member first fills the member
cache, and 2,000 sign-ins to another task then ANALYZE give the tables a day's statistics, as a
service that has run for a while has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from bench import dataset, harness, servers

CONCURRENCY = 16
MEMBERS = 10_000
ROUNDS = 3
SIGN_IN_MEMBERS = 8_000
SIGN_IN_TASKS = 4
WARM_UP_SIGN_INS = 2_000
IMPORT_BATCH = 1_000


async def import_members(tagging: Any, ids: list[str]) -> None:
    async def batches() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        for i in range(0, len(ids), IMPORT_BATCH):
            members = [member_pb2.Member(member_id=m) for m in ids[i : i + IMPORT_BATCH]]
            yield tagging_service_pb2.ImportMembersRequest(members=members)

    await tagging.ImportMembers(batches(), metadata=servers.AUTH)


async def sign_in_task(tasks: Any, i: int) -> str:
    """Daily sign-in task number `i`, live from yesterday for a month, with a budget."""
    now = dt.datetime.now(dt.UTC)
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(now - dt.timedelta(days=1))
    end.FromDatetime(now + dt.timedelta(days=30))
    task = tasks_pb2.Task(
        task_id=f"daily-sign-in-{i}",
        sign_in=tasks_pb2.SignInSpec(streak_rewards=[5, 10, 15, 20, 25, 30, 50]),
        start_time=start,
        end_time=end,
        time_zone="Asia/Shanghai",
        expiry_policy=points_pb2.EXPIRY_POLICY_END_OF_YEAR,
        budget_points=10**9,
    )
    await tasks.CreateTask(tasks_service_pb2.CreateTaskRequest(task=task), metadata=servers.AUTH)
    return f"tasks/{task.task_id}"


async def sign_in_tasks(tasks: Any) -> list[str]:
    return [await sign_in_task(tasks, i) for i in range(SIGN_IN_TASKS)]


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as tagging_address,
        grpc.aio.insecure_channel(tagging_address) as tagging_channel,
    ):
        tagging: Any = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
        signers = [f"signer-{i:05d}" for i in range(SIGN_IN_MEMBERS)]
        earners = [f"bench-{i:05d}" for i in range(MEMBERS)]
        await import_members(tagging, signers + earners)
        async with (
            servers.service("tasks", dsn, {"MEMBEROPS_TAGGING_ADDRESS": tagging_address}) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            tasks: Any = tasks_service_pb2_grpc.TasksServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)
            rng = random.Random(7)
            ids = itertools.count()
            check = health_pb2.HealthCheckRequest()

            async def earn_for(member_id: str) -> object:
                request = tasks_service_pb2.EarnPointsRequest(
                    member_id=member_id,
                    amount=rng.randint(1, 20),
                    reason=points_pb2.REASON_TASK,
                    reference="daily-sign-in",
                    expiry_policy=points_pb2.EXPIRY_POLICY_END_OF_YEAR,
                    request_id=f"bench-earn-{next(ids)}",
                )
                return await tasks.EarnPoints(request, metadata=servers.AUTH)

            async def earn_points(_: int) -> object:
                return await earn_for(earners[rng.randrange(MEMBERS)])

            # One earning per member first, so the service knows them all, as one that has run a while
            # does (it asks tagging whether a member exists once per member and process).
            for i in range(0, MEMBERS, CONCURRENCY):
                await asyncio.gather(*(earn_for(m) for m in earners[i : i + CONCURRENCY]))
            # What autovacuum does within its first minute on a new database (its naptime is longer
            # than this bench's warm-up). Planned on a ledger without statistics, the foreign-key
            # check of each new lot finds its entry through (tenant, member, entry) by the tenant
            # alone, a cost growing with the ledger: 0.46 ms an earning after 30k entries, and the
            # earning batch is the serial part of EarnPoints. With statistics it takes the key.
            await dataset.execute(dsn, "ANALYZE")

            async def health_check(_: int) -> object:
                return await health.Check(check)

            await harness.against_baseline(
                ("earn_points", earn_points),
                ("health", health_check),
                concurrency=CONCURRENCY,
                seconds=seconds,
                rounds=ROUNDS,
            )

            task_names = await sign_in_tasks(tasks)
            for i in range(0, len(signers), CONCURRENCY):
                await asyncio.gather(
                    *(
                        tasks.GetStreak(
                            tasks_service_pb2.GetStreakRequest(task=task_names[0], member_id=m),
                            metadata=servers.AUTH,
                        )
                        for m in signers[i : i + CONCURRENCY]
                    )
                )
            # A day's sign-ins of another task first, then what autovacuum does within its first
            # minute: statistics of sign_ins and completions that hold sign-ins (decision 40's
            # reason for EarnPoints; see also tasks migration 0021).
            warm_up = await sign_in_task(tasks, SIGN_IN_TASKS)
            for i in range(0, WARM_UP_SIGN_INS, CONCURRENCY):
                await asyncio.gather(
                    *(
                        tasks.SignIn(
                            tasks_service_pb2.SignInRequest(
                                task=warm_up, member_id=m, request_id=f"bench-warm-up-{m}"
                            ),
                            metadata=servers.AUTH,
                        )
                        for m in signers[i : i + CONCURRENCY]
                    )
                )
            await dataset.execute(dsn, "ANALYZE")
            shuffled = [(t, m) for t in task_names for m in rng.sample(signers, len(signers))]
            pairs = iter(shuffled)

            async def sign_in(_: int) -> object:
                task, member_id = next(pairs)
                request = tasks_service_pb2.SignInRequest(
                    task=task, member_id=member_id, request_id=f"bench-sign-in-{task}-{member_id}"
                )
                return await tasks.SignIn(request, metadata=servers.AUTH)

            await harness.against_baseline(
                ("sign_in", sign_in),
                ("health", health_check),
                concurrency=CONCURRENCY,
                seconds=seconds,
                rounds=ROUNDS,
            )
