"""GetMember while 500 StreamFeed callers never read, against GetMember with none; tagging's RSS.

Issue 17 (item 13): 500 unread streams once took tagging from 63 MB to 821 MB and GetMember to
7 s. Each round measures GetMember with no stream open, then opens the streams, waits until every
one has sent its first response (then it is never read again) and tagging is quiet again (each
stream goes on until its transport window is full: the time that takes is printed), measures
GetMember, cancels them.
The tenant's stream cap is raised to STREAMS so all of them are open. A process of their own holds
the streams, so the GetMember caller here shares no time with them; their channels do not probe
bandwidth, so their HTTP/2 windows stay at the initial size, as a client that does not read would
leave them. RSS is tagging's (its own process), read from /proc: before the first round, with the
streams open, and after they were cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import harness, servers
from deploy.devstack import ROOT
from services.tagging.server import FEED_STREAMS_ENV

STREAMS = 500
STREAM_CHANNELS = 10
MEMBERS = 20_000
CONCURRENCY = 8
ROUNDS = 3
UNREAD_OPTIONS = [("grpc.http2.bdp_probe", 0)]
SETTLE_LIMIT_SECONDS = 60


def tagging_process() -> Path | None:
    """/proc of this process's child running the tagging server."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"services.tagging.server" in (entry / "cmdline").read_bytes():
                return entry
        except (OSError, IndexError, ValueError):
            continue
    return None


def rss_mb(process: Path) -> float:
    for line in (process / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(process: Path) -> float:
    fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def settled(process: Path) -> float:
    """Waits until tagging uses under a tenth of a core (the new streams have filled their
    transport windows and wait); returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_LIMIT_SECONDS:
        before = cpu_seconds(process)
        await asyncio.sleep(0.5)
        if cpu_seconds(process) - before < 0.05:
            break
    return time.monotonic() - started


async def seed(stub: Any) -> list[str]:
    """Members, so the feed holds far more than a stream's first responses."""
    ids = [f"bench-{i:05d}" for i in range(MEMBERS)]

    def batches() -> Any:
        for start in range(0, MEMBERS, 5_000):
            yield tagging_service_pb2.ImportMembersRequest(
                members=[
                    member_pb2.Member(
                        member_id=member_id,
                        profile=member_pb2.Profile(gender=member_pb2.GENDER_FEMALE, level="gold"),
                    )
                    for member_id in ids[start : start + 5_000]
                ]
            )

    await stub.ImportMembers(batches(), metadata=servers.AUTH, timeout=600)
    return ids


async def hold_unread(address: str) -> None:
    """In a process of its own (so this one's GetMember calls do not share it): opens STREAMS
    streams from the feed's start, reads each once, prints how many were refused, and keeps them
    unread until its standard input closes."""
    channels = [grpc.aio.insecure_channel(address, options=UNREAD_OPTIONS) for _ in range(STREAM_CHANNELS)]
    calls = [
        tagging_service_pb2_grpc.TaggingServiceStub(channels[i % len(channels)]).StreamFeed(
            tagging_service_pb2.StreamFeedRequest(), metadata=servers.AUTH
        )
        for i in range(STREAMS)
    ]

    async def first(call: Any) -> bool:
        try:
            await call.read()
        except grpc.aio.AioRpcError:
            return False
        return True

    opened = await asyncio.gather(*(first(call) for call in calls))
    print(opened.count(False), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


@contextlib.asynccontextmanager
async def unread_streams(address: str) -> AsyncIterator[int]:
    """STREAMS unread streams open while in the block; yields how many were refused."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_slow_feeds",
        address,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        yield int(await holder.stdout.readline())
    finally:
        holder.stdin.close()
        await holder.wait()


async def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "4"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn, {FEED_STREAMS_ENV: str(STREAMS)}) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        tagging: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        ids = await seed(tagging)
        requests = [tagging_service_pb2.GetMemberRequest(name=f"members/{i}") for i in ids[:1000]]

        async def get_member(i: int) -> object:
            return await tagging.GetMember(requests[i % len(requests)], metadata=servers.AUTH, timeout=30)

        await harness.measure("warmup", get_member, concurrency=CONCURRENCY, seconds=1)
        process = tagging_process()
        assert process is not None, "the tagging server is this process's child"
        rss = {"before": rss_mb(process), "open": 0.0, "cancelled": 0.0}
        settling: list[float] = []
        results: dict[str, list[harness.Result]] = {"idle_feeds": [], "no_feeds": []}
        refused = 0
        for _ in range(ROUNDS):
            results["no_feeds"].append(
                await harness.measure("no_feeds", get_member, concurrency=CONCURRENCY, seconds=seconds)
            )
            async with unread_streams(address) as refused_now:
                refused = max(refused, refused_now)
                settling.append(await settled(process))
                results["idle_feeds"].append(
                    await harness.measure("idle_feeds", get_member, concurrency=CONCURRENCY, seconds=seconds)
                )
                rss["open"] = max(rss["open"], rss_mb(process))
            await asyncio.sleep(2)
            rss["cancelled"] = rss_mb(process)
        measured = harness.median_round(results["idle_feeds"])
        base = harness.median_round(results["no_feeds"])
        print(measured.line())
        print(base.line())
        print(harness.ratio_line(measured, base))
        print(
            f"tagging RSS  before {rss['before']:.0f} MB  with {STREAMS} unread streams {rss['open']:.0f} MB"
            f"  after cancelling {rss['cancelled']:.0f} MB  (streams refused: {refused})"
        )
        print(f"streams settled (filled their windows) in {', '.join(f'{s:.1f}' for s in settling)} s")
        if measured.errors or base.errors or refused:
            raise SystemExit("benchmark calls failed")


if __name__ == "__main__":
    asyncio.run(hold_unread(sys.argv[1]))
