"""ClaimCoupon against the standard health Check of the same server, at concurrency 16.

Members are imported into tagging first and each claims once before the measurement (the tasks
service asks tagging whether a member exists, once per member and process). Then every call claims
the one claimable template's coupon for one of many members under a fresh request id. Claims that
arrive while two are at the database go together (decision 160) as one autocommitted statement,
`tasks.issue_coupons` (migration 0024; a claim alone is `tasks.issue_coupon`, 0020): the request
ids looked up, a key-share lock on the template's row at the version the service read (cached for
2 s), the members' holdings (a conditional upsert against the per-member limit), the coupons with
their random codes, and the group's units of stock from its sharded allowance. The template has
stock for the whole run and a per-member limit above what one member claims in it.

The client shares the machine with the service and PostgreSQL: each claim also costs the client
about 0.3 ms of CPU (a health check 0.2 ms), so under other load both lines' tails include the
client's and the database's scheduling, not only the service's.

A last run claims a template with less stock than the run takes: the claims after the last coupon
answer RESOURCE_EXHAUSTED (counted as errors in its line, not a failure of the bench), and exactly
the stock is issued (a group the stock cannot cover is issued one by one).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from bench import dataset, harness, servers
from bench.bench_points import import_members

CONCURRENCY = 16
MEMBERS = 4_000
ROUNDS = 3
# The most coupons a template may have: far more than a run claims.
STOCK = 100_000_000
# Coupons for the run that runs out: about a second's claims.
SCARCE_STOCK = 500


async def claimable(tasks: Any, template_id: str, stock: int) -> str:
    template = coupons_pb2.CouponTemplate(
        template_id=template_id,
        amount_off=coupons_pb2.AmountOff(amount_minor=1000),
        threshold_minor=5000,
        valid_days=30,
        total_stock=stock,
        per_member_limit=1000,
        claimable=True,
    )
    await tasks.CreateCouponTemplate(
        tasks_service_pb2.CreateCouponTemplateRequest(template=template), metadata=servers.AUTH
    )
    return f"couponTemplates/{template_id}"


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as tagging_address,
        grpc.aio.insecure_channel(tagging_address) as tagging_channel,
    ):
        tagging: Any = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
        members = [f"claimer-{i:05d}" for i in range(MEMBERS)]
        await import_members(tagging, members)
        async with (
            servers.service("tasks", dsn, {"MEMBEROPS_TAGGING_ADDRESS": tagging_address}) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            tasks: Any = tasks_service_pb2_grpc.TasksServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)
            rng = random.Random(7)
            ids = itertools.count()
            check = health_pb2.HealthCheckRequest()
            plenty = await claimable(tasks, "bench-claims", STOCK)

            async def claim_for(template: str, member_id: str) -> object:
                request = tasks_service_pb2.ClaimCouponRequest(
                    template=template, member_id=member_id, request_id=f"bench-claim-{next(ids)}"
                )
                return await tasks.ClaimCoupon(request, metadata=servers.AUTH)

            for i in range(0, MEMBERS, CONCURRENCY):
                await asyncio.gather(*(claim_for(plenty, m) for m in members[i : i + CONCURRENCY]))
            # What autovacuum does within its first minute on a new database, as bench_points does:
            # planned before the coupons had statistics, tasks.issue_coupon's request-id lookup kept
            # a generic plan through (tenant, campaign, arm) filtering every claim's coupon by
            # request id (auto_explain), 2-3.5 ms a claim and growing with the table; with
            # statistics it takes the unique key (10 us).
            await dataset.execute(dsn, "ANALYZE")

            async def claim(_: int) -> object:
                return await claim_for(plenty, members[rng.randrange(MEMBERS)])

            async def health_check(_: int) -> object:
                return await health.Check(check)

            await harness.against_baseline(
                ("claim_coupon", claim),
                ("health", health_check),
                concurrency=CONCURRENCY,
                seconds=seconds,
                rounds=ROUNDS,
            )

            scarce = await claimable(tasks, "bench-scarce", SCARCE_STOCK)

            async def claim_scarce(_: int) -> object:
                return await claim_for(scarce, members[rng.randrange(MEMBERS)])

            ran_out = await harness.measure(
                "claim_coupon_until_out", claim_scarce, concurrency=CONCURRENCY, seconds=seconds
            )
            print(f"{ran_out.line()}  (stock {SCARCE_STOCK}: the rest RESOURCE_EXHAUSTED)")
            if ran_out.calls != SCARCE_STOCK:
                raise SystemExit(f"{ran_out.calls} claims succeeded on a stock of {SCARCE_STOCK}")
