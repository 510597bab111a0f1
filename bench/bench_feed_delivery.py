"""Feed delivery while a long transaction is open, against the same delivery with none (issue 25).

A StreamFeed follower reads tagging's feed from its end; members are changed with UpsertMember at
RATE per second, and each delivery is timed from the moment UpsertMember returned (its entry
committed) to the moment the follower received the entry. Rounds alternate: none open, then a
transaction that wrote a row of a table no feed reads left open for the whole round (an analyst's
UPDATE, a recompute lane, a pg_dump with a txid). Under the first feed contract (an entry handed out
only once older than every running transaction) no entry of the second kind of round arrived until
the transaction ended; an entry not delivered within GIVE_UP_SECONDS is counted as lost.
Target (issue 25): delivery while a long transaction is open <= 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import servers

RATE = 20
ROUNDS = 3
GIVE_UP_SECONDS = 10.0


@contextlib.asynccontextmanager
async def long_transaction(dsn: str) -> AsyncIterator[None]:
    """A transaction holding a txid (it wrote a row) open while in the block."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_long_writer (n int)")
        await conn.execute("BEGIN; INSERT INTO bench_long_writer VALUES (1)")
        yield
    finally:
        await conn.execute("ROLLBACK")
        await conn.close()


class Follower:
    """A StreamFeed from the feed's end; notes when each member's entry arrived."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.arrived: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    async def run(self, cursor: str) -> None:
        call = self._stub.StreamFeed(
            tagging_service_pb2.StreamFeedRequest(after_cursor=cursor), metadata=servers.AUTH
        )
        async for response in call:
            now = time.monotonic()
            for entry in response.entries:
                self.arrived.setdefault(entry.member_id, now)
                if entry.member_id in self._waiting:
                    self._waiting[entry.member_id].set()

    async def wait(self, member_id: str) -> None:
        event = self._waiting.setdefault(member_id, asyncio.Event())
        if member_id not in self.arrived:
            await asyncio.wait_for(event.wait(), GIVE_UP_SECONDS)


async def deliveries(stub: Any, follower: Follower, label: str, seconds: float) -> tuple[list[float], int]:
    """Changes a member RATE times a second for `seconds`; returns each delivery's seconds and how
    many were not delivered within GIVE_UP_SECONDS."""
    times: list[float] = []
    lost = 0

    async def one(n: int) -> None:
        nonlocal lost
        member_id = f"delivery-{label}-{n}-{time.monotonic_ns()}"
        request = tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=member_id))
        await stub.UpsertMember(request, metadata=servers.AUTH, timeout=30)
        written = time.monotonic()
        try:
            await follower.wait(member_id)
        except TimeoutError:
            lost += 1
            return
        times.append(follower.arrived[member_id] - written)

    tasks = []
    for n in range(int(RATE * seconds)):
        tasks.append(asyncio.create_task(one(n)))
        await asyncio.sleep(1 / RATE)
    await asyncio.gather(*tasks)
    return times, lost


def line(label: str, times: list[float], lost: int) -> str:
    if not times:
        return f"{label}: nothing delivered ({lost} lost)"
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{label}: p50 {statistics.median(ms):7.1f} ms  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms"
        f"  ({len(ms)} delivered, {lost} not within {GIVE_UP_SECONDS:.0f} s)"
    )


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        end = await stub.ReadFeed(
            tagging_service_pb2.ReadFeedRequest(skip_to_end=True), metadata=servers.AUTH
        )
        follower = Follower(stub)
        following = asyncio.create_task(follower.run(end.next_cursor))
        try:
            await deliveries(stub, follower, "warmup", 2)
            results: dict[str, tuple[list[float], int]] = {"none": ([], 0), "long": ([], 0)}
            for r in range(ROUNDS):
                times, lost = await deliveries(stub, follower, f"none{r}", seconds)
                results["none"] = (results["none"][0] + times, results["none"][1] + lost)
                async with long_transaction(dsn):
                    times, lost = await deliveries(stub, follower, f"long{r}", seconds)
                results["long"] = (results["long"][0] + times, results["long"][1] + lost)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await following
        print(line("feed delivery with a long transaction open", *results["long"]))
        print(line("feed delivery with none open             ", *results["none"]))
        long_ms, none_ms = results["long"][0], results["none"][0]
        if long_ms and none_ms:
            print(f"ratio long/none  p50 {statistics.median(long_ms) / statistics.median(none_ms):.2f}x")
        print("target (issue 25): delivery while a long transaction is open <= 1 s")
        if results["long"][1] or results["none"][1]:
            raise SystemExit("entries were not delivered")
