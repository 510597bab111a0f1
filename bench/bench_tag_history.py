"""RebuildTagHistory of every built-in rule and model dimension, daily, on the generated data.

The issue asks for a year of days on the 1M-member data. Each instant is a full recompute of every
dimension as of that day, so a year is 365 of them; this bench rebuilds BENCH_TAG_HISTORY_DAYS
days (default 14) ending at the data's now and reports seconds per instant and per instant and
dimension, and what a year would take at that pace. The baseline, in the same run, is one plain
`RecomputeTags` of the same dimensions at now on unchanged data (the scheduled nightly recompute).

Tags, feed and catalog are emptied first, the tagging service (its own process, clock frozen at
dataset.NOW) seeds the built-in catalog, and a recompute at now gives every member their present
tags, as after an import. The rebuild runs through the real path: the RPC starts the workflow on
a Temporal dev server, and a worker in this process (only the rebuild's workflow and activity)
calls the service back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench import dataset, servers
from deploy import binaries
from deploy.devstack import SEARCH_ATTRIBUTES
from workflows.tag_history.activities import TagHistoryActivities
from workflows.tag_history.workflow import LANES, TagHistoryRebuildWorkflow

TASK_QUEUE = "bench-tag-history"
DAYS_ENV = "BENCH_TAG_HISTORY_DAYS"
DEADLINE = 3 * 3600
REBUILT_KINDS = (tags_pb2.TAG_KIND_FACT, tags_pb2.TAG_KIND_RULE, tags_pb2.TAG_KIND_MODEL)
POLL_SECONDS = 2.0
# How often the rebuild's progress is printed while it runs (a long one can be stopped with a
# figure in hand).
PROGRESS_SECONDS = 60.0


async def recompute_now(stub: Any) -> tuple[float, int]:
    """Seconds of one RecomputeTags of every evaluated dimension at the service's now, and the
    tag changes it wrote."""
    started = time.perf_counter()
    reply = await stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(), metadata=servers.AUTH, timeout=DEADLINE
    )
    changes = sum(r.added_count + r.removed_count for r in reply.results)
    return time.perf_counter() - started, changes


async def rebuild(stub: Any, days: int) -> tuple[float, tagging_service_pb2.TagHistoryRebuild]:
    """Seconds from the RebuildTagHistory call until GetTagHistoryRebuild says done."""
    start = Timestamp()
    start.FromDatetime(dataset.NOW - dt.timedelta(days=days))
    request = tagging_service_pb2.RebuildTagHistoryRequest(request_id=f"bench-{time.time_ns()}", start=start)
    started = time.perf_counter()
    operation = await stub.RebuildTagHistory(request, metadata=servers.AUTH)
    get = tagging_service_pb2.GetTagHistoryRebuildRequest(name=operation.name)
    reported = started
    while not (operation.done or operation.error):
        await asyncio.sleep(POLL_SECONDS)
        operation = await stub.GetTagHistoryRebuild(get, metadata=servers.AUTH)
        if time.perf_counter() - reported >= PROGRESS_SECONDS:
            reported = time.perf_counter()
            elapsed = reported - started
            print(f"  {elapsed:7.0f} s  {operation.done_steps}/{operation.total_steps} steps", flush=True)
    return time.perf_counter() - started, operation


async def main() -> None:
    members = dataset.members_from_env()
    days = int(os.environ.get(DAYS_ENV, "14"))
    async with dataset.cached(members) as (dsn, generated):
        print(f"data: {generated.line()}")
        await dataset.reset_tags(dsn)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binaries.temporal_cli()),
            ui=False,
            dev_server_extra_args=[
                "--headless",
                *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
            ],
        )
        temporal = {
            "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "MEMBEROPS_TASK_QUEUE": TASK_QUEUE,
        }
        try:
            async with (
                servers.service(
                    "tagging", dsn, temporal, clock=f"frozen:{dataset.NOW.isoformat()}"
                ) as address,
                grpc.aio.insecure_channel(address) as channel,
            ):
                stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
                first_seconds, first_changes = await recompute_now(stub)
                print(f"present tags (recompute at now, from empty)  {first_seconds:8.1f} s", flush=True)
                await dataset.execute(dsn, "ANALYZE tagging.member_tags")
                baseline, unchanged = await recompute_now(stub)
                print(f"baseline: recompute at now, unchanged         {baseline:8.1f} s", flush=True)
                activities = TagHistoryActivities(stub, lambda tenant: servers.BENCH_TOKEN)
                async with Worker(
                    env.client,
                    task_queue=TASK_QUEUE,
                    workflows=[TagHistoryRebuildWorkflow],
                    activities=[activities.recompute_at],
                ):
                    seconds, operation = await rebuild(stub, days)
        finally:
            await env.shutdown()
    report(members, days, first_seconds, first_changes, baseline, unchanged, seconds, operation)


def report(
    members: int,
    days: int,
    first_seconds: float,
    first_changes: int,
    baseline: float,
    unchanged: int,
    seconds: float,
    operation: tagging_service_pb2.TagHistoryRebuild,
) -> None:
    dimensions = len(operation.dimensions)
    instants = operation.total_steps // max(1, dimensions)
    print(f"present tags: {first_changes:,} changes; baseline and rebuild over {dimensions} dimensions")
    if operation.error:
        raise SystemExit(f"the rebuild failed after {operation.done_steps} steps: {operation.error}")
    per_instant = seconds / instants
    print(
        f"rebuild {instants} daily instants x {dimensions} dimensions ({LANES} lanes)  {seconds:8.1f} s  "
        f"{operation.done_steps}/{operation.total_steps} steps"
    )
    print(
        f"  per instant {per_instant:.1f} s ({per_instant / baseline:.2f}x the baseline), "
        f"per instant and dimension {seconds / operation.total_steps:.2f} s"
    )
    year = per_instant * 365
    print(
        f"  a year of days at this pace: {year / 60:.0f} min ({year / 3600:.1f} h) on {members:,} members "
        f"(no target yet; {days} days measured)"
    )
    if unchanged:
        raise SystemExit(f"UNEXPECTED: recomputing unchanged data changed {unchanged} tags")
