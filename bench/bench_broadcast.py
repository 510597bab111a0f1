"""A broadcast to a snapshot of every generated member (MEMBEROPS_BENCH_MEMBERS, default 1,000,000).

One figure against a baseline measured in the same run:

- the time from starting the cohort workflow until every member's first step is settled in the
  message log (a `sent` or `skipped` row for each treated member; holdout members get none), with
  the Temporal dev server, tagging, audience, the worker and an HTTP provider (its batch endpoint)
  each in a process of its own;
- against one bare `INSERT ... SELECT` of as many rows into a copy of the message log's table
  (same columns and indexes), from the snapshot's members: the database work of writing the log
  once, with nothing decided and nothing sent.

The journeys schema is dropped first (the worker migrates it again), so every run starts with an
empty message log; the snapshot is made once and reused by later runs. BENCH_BROADCAST_BATCH sets
the members per batch (default 10000), BENCH_WORKER_LOG_LEVEL the worker's log level (warning),
BENCH_WORKER_PROFILE a file for a cProfile of the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bench import dataset, servers
from deploy import binaries, devstack
from deploy.devstack import ROOT, SEARCH_ATTRIBUTES
from runtime.config import Settings
from runtime.db import Database
from workflows.journeys import states
from workflows.journeys import store as journeys_store
from workflows.journeys.cohort.payloads import CohortFunnel, CohortInput
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import (
    Broadcast,
    Entry,
    EventMatch,
    Goal,
    JourneyDefinition,
    Send,
    Step,
    Template,
)

# BENCH_WORKER_PROFILE=<file>: the worker runs under cProfile and writes its profile there.
PROFILE = (
    ("cProfile", "-o", os.environ["BENCH_WORKER_PROFILE"], "-m")
    if os.environ.get("BENCH_WORKER_PROFILE")
    else ()
)
TASK_QUEUE = "bench-broadcast"
AUDIENCE = "bench-everyone"
SNAPSHOT_REQUEST = "bench-broadcast-everyone"
BATCH_SIZE = int(os.environ.get("BENCH_BROADCAST_BATCH", "10000"))
TARGET_SECONDS = 120
CLOCK = f"frozen:{dataset.NOW.isoformat()}"
DEFINITION = JourneyDefinition(
    key="bench-broadcast",
    name="Benchmark broadcast",
    entry=Entry(broadcast=Broadcast(audience=AUDIENCE)),
    steps=(Step(id="hello", send=Send(template="hello")),),
    templates={"hello": Template(subject="Our sale", body="Hi {nickname}, 20 off everything this weekend.")},
    goal=Goal(event=EventMatch(kind="order"), attribution="7d"),
    holdout_percent=10,
)
BASELINE = """
INSERT INTO journeys.baseline_messages (tenant_id, journey_run, member_id, step_id, journey_key, channel,
                                        status, local_day, create_time, update_time, subject, body)
SELECT s.tenant_id, 'cohort/0', s.member_id, 'hello', 'bench-broadcast', 'app_push', 'sent',
       current_date, now(), now(), 'Our sale', 'Hi ' || s.member_id || ', 20 off everything this weekend.'
FROM audience.snapshot_members s WHERE s.tenant_id = $1 AND s.snapshot_id = $2
"""


@contextlib.asynccontextmanager
async def process(*argv: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    child = await asyncio.create_subprocess_exec(sys.executable, "-m", *argv, cwd=ROOT, env=env)
    try:
        yield child
    finally:
        if child.returncode is None:
            child.terminate()
        try:
            await asyncio.wait_for(child.wait(), timeout=30)
        except TimeoutError:
            child.kill()
            await child.wait()


def provider_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
        return stats


async def snapshot_everyone(address: str) -> audience_pb2.Snapshot:
    """An audience of every member (an empty `all`) and one snapshot of it, made once."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = audience_service_pb2_grpc.AudienceServiceStub(channel)
        audience = audience_pb2.Audience(
            audience_id=AUDIENCE, rule=audience_pb2.AudienceRule(all=audience_pb2.AudienceRuleList())
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CreateAudience(
                audience_service_pb2.CreateAudienceRequest(audience=audience), metadata=servers.AUTH
            )
        started = time.perf_counter()
        frozen = await stub.CreateSnapshot(
            audience_service_pb2.CreateSnapshotRequest(
                audience=f"audiences/{AUDIENCE}", request_id=SNAPSHOT_REQUEST
            ),
            metadata=servers.AUTH,
            timeout=1800,
        )
        print(
            f"snapshot: {frozen.member_count:,} members ({time.perf_counter() - started:.1f} s;"
            " made by the first run, reused by later ones)"
        )
        snapshot: audience_pb2.Snapshot = frozen
        return snapshot


async def store_definition(dsn: str) -> None:
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        stored = await journeys_store.put_definition(db, servers.BENCH_TENANT, DEFINITION)
        # Only an active journey opens a cohort.
        await states.transition(
            db, servers.BENCH_TENANT, DEFINITION.key, "active", stored.version, dt.datetime.now(dt.UTC)
        )
    finally:
        await db.close()


async def baseline(dsn: str, snapshot_id: str) -> tuple[float, int]:
    """One INSERT ... SELECT of a row per snapshot member into a copy of the message log's table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE journeys.baseline_messages (LIKE journeys.messages INCLUDING ALL)")
        started = time.perf_counter()
        status = await conn.execute(BASELINE, servers.BENCH_TENANT, snapshot_id)
        took = time.perf_counter() - started
        await conn.execute("DROP TABLE journeys.baseline_messages")
    finally:
        await conn.close()
    return took, int(status.split()[-1])


async def logged(dsn: str, cohort_id: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM journeys.messages WHERE journey_run = $1 GROUP BY status",
            f"cohort/{cohort_id}",
        )
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


def settled(funnel: CohortFunnel) -> int:
    (hello,) = funnel.steps or (None,)
    if hello is None:
        return 0
    return hello.sent + hello.skipped + hello.failed + hello.unknown + hello.held_out


async def main() -> None:
    members = dataset.members_from_env()
    async with dataset.cached(members) as (dsn, generated):
        print(f"data: {generated.line()}")
        await dataset.execute(dsn, "DROP SCHEMA IF EXISTS journeys CASCADE")
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binaries.temporal_cli()),
            ui=False,
            dev_server_extra_args=[
                "--headless",
                *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
            ],
        )
        provider_port = servers.free_port()
        provider_url = f"http://127.0.0.1:{provider_port}"
        try:
            async with (
                servers.service("tagging", dsn) as tagging,
                servers.service("audience", dsn, clock=CLOCK) as audience,
                process("deploy.outbox", str(provider_port), env=dict(os.environ)),
            ):
                frozen = await snapshot_everyone(audience)
                worker_env = worker_environment(dsn, tagging, audience, env.client, provider_url)
                async with process(*PROFILE, "workflows.worker", env=worker_env) as worker:
                    await until_polling(worker_env, worker.pid)
                    await store_definition(dsn)
                    await broadcast(env.client, dsn, frozen, provider_url)
        finally:
            await env.shutdown()


def worker_environment(
    dsn: str, tagging: str, audience: str, client: Client, provider_url: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "MEMBEROPS_AUTH_TOKENS": f"{servers.BENCH_TOKEN}={servers.BENCH_TENANT}",
        "MEMBEROPS_TAGGING_ADDRESS": tagging,
        "MEMBEROPS_AUDIENCE_ADDRESS": audience,
        "MEMBEROPS_TASKS_ADDRESS": "127.0.0.1:1",
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "MEMBEROPS_TASK_QUEUE": TASK_QUEUE,
        "MEMBEROPS_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "warning"),
    }
    for prefix in ("SMS", "PUSH", "WECOM"):
        env[f"MEMBEROPS_{prefix}_URL"] = f"{provider_url}/v1/messages"
        env[f"MEMBEROPS_{prefix}_BATCH_URL"] = f"{provider_url}/v1/messages:batch"
        env[f"MEMBEROPS_{prefix}_KEY"] = "bench-provider-key"
        env[f"MEMBEROPS_{prefix}_PER_MINUTE"] = str(10**9)
    return env


async def until_polling(env: dict[str, str], pid: int) -> None:
    settings = Settings.from_env(env)
    deadline = time.monotonic() + 120
    while not (await devstack.worker_polling(settings, pid)).ready:
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start polling")
        await asyncio.sleep(0.5)


async def broadcast(client: Client, dsn: str, frozen: audience_pb2.Snapshot, provider_url: str) -> None:
    before = provider_stats(provider_url)
    snapshot_id = frozen.name.removeprefix("snapshots/")
    started = time.perf_counter()
    handle = await client.start_workflow(
        CohortJourneyWorkflow.run,
        CohortInput(
            tenant_id=servers.BENCH_TENANT,
            journey_key=DEFINITION.key,
            snapshot=frozen.name,
            batch_size=BATCH_SIZE,
        ),
        id=f"journey/{DEFINITION.key}/snapshot/{snapshot_id}",
        task_queue=TASK_QUEUE,
    )
    funnel: CohortFunnel = await handle.query(CohortJourneyWorkflow.funnel)
    while not (funnel.state in ("active", "measuring") and settled(funnel) == frozen.member_count):
        if funnel.state in ("not_started", "paused", "completed", "stopped"):
            raise SystemExit(f"the broadcast is {funnel.state}: {funnel.detail}")
        await asyncio.sleep(0.2)
        funnel = await handle.query(CohortJourneyWorkflow.funnel)
    took = time.perf_counter() - started
    stats = provider_stats(provider_url)
    rows = await logged(dsn, funnel.cohort_id)
    await handle.terminate("benchmark done")
    base, base_rows = await baseline(dsn, snapshot_id)
    hello = funnel.steps[0]
    requests = stats["requests"] - before["requests"]
    print(
        f"broadcast       {frozen.member_count:,} members  first step logged in {took:7.1f} s"
        f"  ({frozen.member_count / took:,.0f} members/s; sent {hello.sent:,}, skipped {hello.skipped:,},"
        f" held out {hello.held_out:,}; {requests:,} provider requests)"
    )
    print(f"insert_select   (baseline)  {base_rows:,} log rows in {base:7.1f} s")
    print(f"ratio broadcast/insert_select  {took / base:.1f}x")
    print(f"target (issue 6): <= {TARGET_SECONDS} s on the 2-core machine; measured {took:.1f} s")
    treated = funnel.treated.entered
    failures = []
    if rows.get("sent", 0) + rows.get("skipped", 0) != treated or set(rows) - {"sent", "skipped"}:
        failures.append(f"the message log does not hold one settled row per treated member: {rows}")
    if stats["messages"] - before["messages"] != hello.sent or stats["repeats"] != before["repeats"]:
        failures.append(f"the provider took other than one message per send: {stats}")
    if failures:
        raise SystemExit("; ".join(failures))
