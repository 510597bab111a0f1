"""`CountAudience` latency with 200 unread `ExportAudience` streams open, against none open.

Issue 17: each export used to hold a pooled connection inside a transaction for its whole life, so
ten unread streams made a count take 9.2 s and 200 stopped it. An unread stream here takes its
first chunk and then reads no more, on a channel whose receive window is 1 KiB and does not grow,
so the server's stream waits on flow control (each reader audience is far larger than the window,
at one id per chunk). The 200 are spread over 13 tenants, each at most at its cap of 16 open
exports, so all 200 are open at once. Rounds interleave: counts with none open, then with the 200
open; each side's median round is printed and their ratio. Services run in processes of their own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import member_pb2, rules_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import harness, servers

UNREAD = 200
PER_TENANT = 16  # services.audience.exports.ExportLimits.per_tenant
READER_TENANTS = -(-UNREAD // PER_TENANT)
READER_MEMBERS = 500
COUNTED_MEMBERS = 20_000
CONCURRENCY = 4
ROUNDS = 3
SLOW_READER = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
# A hang check on each call, not a latency bound.
CALL_DEADLINE = 30


def _token(tenant: str) -> str:
    return f"bench-slow-exports-{tenant}-token"


def _auth(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_token(tenant)}"),)


READERS = [f"reader{i:02d}" for i in range(READER_TENANTS)]
TOKENS = ",".join(
    [f"{servers.BENCH_TOKEN}={servers.BENCH_TENANT}", *(f"{_token(tenant)}={tenant}" for tenant in READERS)]
)


def _in_batch(batch: str) -> audience_pb2.AudienceRule:
    condition = rules_pb2.Condition(
        operand=rules_pb2.Operand(attribute="batch"),
        operator=rules_pb2.OPERATOR_EQ,
        values=[rules_pb2.Value(text=batch)],
    )
    return audience_pb2.AudienceRule(condition=condition)


def _member(batch: str, n: int) -> member_pb2.Member:
    member = member_pb2.Member(member_id=f"{batch}-{n:06d}")
    member.attributes.update({"batch": batch})
    return member


async def _audience_of(tagging: Any, audience: Any, metadata: Any, batch: str, members: int) -> str:
    """`members` members imported with attribute batch=`batch`, and an audience of exactly them."""
    imported = [_member(batch, n) for n in range(members)]

    async def requests() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        for start in range(0, members, 10_000):
            yield tagging_service_pb2.ImportMembersRequest(members=imported[start : start + 10_000])

    await tagging.ImportMembers(requests(), metadata=metadata, timeout=600)
    created = await audience.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(audience_id=batch, rule=_in_batch(batch))
        ),
        metadata=metadata,
    )
    return str(created.name)


async def _open_unread(slow: Any, names: dict[str, str]) -> list[Any]:
    """UNREAD exports, PER_TENANT per reader tenant, each read to its first chunk only."""
    calls = []
    for i in range(UNREAD):
        tenant = READERS[i // PER_TENANT]
        request = audience_service_pb2.ExportAudienceRequest(name=names[tenant], chunk_size=1)
        calls.append(slow.ExportAudience(request, metadata=_auth(tenant)))
    await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), CALL_DEADLINE)
    return calls


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    env = {"MEMBEROPS_AUTH_TOKENS": TOKENS}
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn, env) as tagging_address,
        servers.service("audience", dsn, env) as address,
        grpc.aio.insecure_channel(tagging_address) as tagging_channel,
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(address, options=SLOW_READER) as slow_channel,
    ):
        tagging: Any = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
        stub: Any = audience_service_pb2_grpc.AudienceServiceStub(channel)
        slow: Any = audience_service_pb2_grpc.AudienceServiceStub(slow_channel)
        counted = await _audience_of(tagging, stub, servers.AUTH, "counted", COUNTED_MEMBERS)
        names = {
            tenant: await _audience_of(tagging, stub, _auth(tenant), f"unread-{tenant}", READER_MEMBERS)
            for tenant in READERS
        }
        request = audience_service_pb2.CountAudienceRequest(name=counted)

        async def count(_: int) -> object:
            reply = await stub.CountAudience(request, metadata=servers.AUTH, timeout=CALL_DEADLINE)
            if reply.member_count != COUNTED_MEMBERS:
                raise AssertionError(f"counted {reply.member_count}, not {COUNTED_MEMBERS}")
            return reply

        await harness.measure("warmup", count, concurrency=CONCURRENCY, seconds=1)
        rounds: dict[str, list[harness.Result]] = {"count_none_open": [], "count_200_unread": []}
        still_open = []
        for _ in range(ROUNDS):
            rounds["count_none_open"].append(
                await harness.measure("count_none_open", count, concurrency=CONCURRENCY, seconds=seconds)
            )
            calls = await _open_unread(slow, names)
            try:
                rounds["count_200_unread"].append(
                    await harness.measure("count_200_unread", count, concurrency=CONCURRENCY, seconds=seconds)
                )
                still_open.append(sum(not call.done() for call in calls))
            finally:
                for call in calls:
                    call.cancel()
        subject = harness.median_round(rounds["count_200_unread"])
        baseline = harness.median_round(rounds["count_none_open"])
        print(f"unread exports open while measured: {still_open} of {UNREAD} per round")
        print(subject.line())
        print(baseline.line())
        print(harness.ratio_line(subject, baseline))
        for side in (subject, baseline):
            print(
                f"{side.name:<16} p50 {side.percentile(50):7.2f} ms  p99 {side.percentile(99):7.2f} ms  "
                f"max {max(side.latencies_ms, default=float('nan')):7.2f} ms"
            )
        if subject.errors or baseline.errors or min(still_open) < UNREAD:
            raise SystemExit("count calls failed, or unread exports ended while measured")
