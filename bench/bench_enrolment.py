"""Per-member enrolment rate on the Temporal dev server, against a bare one-activity workflow.

Three ways to get N members going, each from an empty start, in interleaved rounds (each one's
median round is reported):

- `bare_workflow` (the baseline): N workflows that run one activity that does nothing, started
  with the Temporal client, 64 starts in flight; done when every activity has run.
- `journey_start`: N `Journey` runs started the same way (`start_member_journey`); done when every
  member's enrolment row is committed (the run's first activity, which also loads the definition).
- `dispatched`: N members' first orders, recorded through tagging beforehand, followed by a fresh
  dispatcher from the cursor before them (its rounds start the runs, 64 in flight); done when every
  member's enrolment row is committed. The feed also holds the real-time tag changes the orders
  caused, which the dispatcher reads past.

tagging and audience run in processes of their own, the worker (journeys, the dispatcher, the bare
workflow) in this one, against a throw-away PostgreSQL and `temporal server start-dev`.
`BENCH_MEMBERS` sets N (default 2,000), `BENCH_ROUNDS` the rounds (default 1: on the 2-core machine
three rounds of 2,000 took 10-13 minutes; bench/RESULTS.md reports the median of three).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench import servers
from bench.bare_workflow import BareActivities, BareWorkflow
from deploy import binaries
from deploy.devstack import SEARCH_ATTRIBUTES
from runtime.config import Settings
from runtime.db import Database
from workflows.dispatcher import store as dispatch_store
from workflows.dispatcher.activities import IN_FLIGHT
from workflows.dispatcher.payloads import DispatcherInput
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys import client as journeys_client
from workflows.journeys import states, store
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.definition import Entry, EventMatch, JourneyDefinition, Step, Wait
from workflows.journeys.payloads import JourneyInput
from workflows.worker import WORKFLOWS, Resources, activities

QUEUE = "bench-enrolment"
POLL_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class Rate:
    name: str
    members: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.members / self.seconds

    def line(self, what: str) -> str:
        rate = f"{self.per_second:8.0f} members/s"
        return f"{self.name:<14} {what:<22} {rate}  ({self.members} in {self.seconds:.2f} s)"


def journey(key: str) -> JourneyDefinition:
    """Entered on a first order; the member then waits (the run stays, as a real journey's does)."""
    return JourneyDefinition(
        key=key,
        name="bench",
        entry=Entry(event=EventMatch(kind="first_order")),
        steps=(Step(id="wait", wait=Wait(duration="1d")),),
    )


async def enrolled(db: Database, key: str) -> int:
    async with db.transaction(servers.BENCH_TENANT, readonly=True) as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM journeys.enrolments WHERE tenant_id = $1 AND journey_key = $2",
            servers.BENCH_TENANT,
            key,
        )
    return count


async def until(done: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + 600
    while not await done():
        if time.monotonic() > deadline:
            raise SystemExit("the benchmark's workflows did not all get going within 10 minutes")
        await asyncio.sleep(POLL_SECONDS)


async def start_all(members: list[str], start: Callable[[str], Awaitable[object]]) -> None:
    """Starts one workflow per member, IN_FLIGHT at a time (as a dispatcher round does)."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(member_id: str) -> None:
        async with gate:
            await start(member_id)

    await asyncio.gather(*(one(m) for m in members))


async def bare(client: Client, members: list[str], ran: list[int], name: str) -> Rate:
    ran[0] = 0
    began = time.perf_counter()
    await start_all(
        members,
        lambda m: client.start_workflow(BareWorkflow.run, m, id=f"bare/{name}/{m}", task_queue=QUEUE),
    )
    await until(lambda: _at_least(ran[0], len(members)))
    return Rate("bare_workflow", len(members), time.perf_counter() - began)


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def activate(db: Database, definition: JourneyDefinition) -> None:
    """Stores the journey and makes it live: only an active journey enrols."""
    stored = await store.put_definition(db, servers.BENCH_TENANT, definition)
    now = dt.datetime.now(dt.UTC)
    await states.transition(db, servers.BENCH_TENANT, definition.key, "active", stored.version, now)


async def started(client: Client, db: Database, members: list[str], key: str) -> Rate:
    definition = journey(key)
    await activate(db, definition)
    began = time.perf_counter()
    await start_all(
        members,
        lambda m: journeys_client.start_member_journey(
            client, QUEUE, definition, JourneyInput(servers.BENCH_TENANT, key, m)
        ),
    )
    await until(lambda: _enrolled_all(db, key, len(members)))
    return Rate("journey_start", len(members), time.perf_counter() - began)


async def _enrolled_all(db: Database, key: str, wanted: int) -> bool:
    return await enrolled(db, key) >= wanted


async def dispatched(
    client: Client,
    db: Database,
    tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
    members: list[str],
    key: str,
) -> Rate:
    """Records the members and their first orders, then lets a new dispatcher (from the cursor
    before them, stored as a dispatcher's first round would) enrol them."""
    await activate(db, journey(key))
    dispatcher = f"dispatcher/{key}"
    end = await tagging.ReadFeed(tagging_service_pb2.ReadFeedRequest(skip_to_end=True), metadata=servers.AUTH)
    # The audience feed stays empty: the benchmark's tenant has no dynamic audience.
    ends = {"tagging": end.next_cursor, "audience": ""}
    await dispatch_store.start_cursors(db, servers.BENCH_TENANT, dispatcher, ends, dt.datetime.now(dt.UTC))
    await record_first_orders(tagging, members)
    began = time.perf_counter()
    handle = await client.start_workflow(
        DispatcherWorkflow.run,
        DispatcherInput(servers.BENCH_TENANT, journey_keys=(key,), report_every_seconds=0, idle_seconds=1),
        id=dispatcher,
        task_queue=QUEUE,
    )
    await until(lambda: _enrolled_all(db, key, len(members)))
    seconds = time.perf_counter() - began
    await handle.terminate()
    return Rate("dispatched", len(members), seconds)


async def record_first_orders(
    stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub, members: list[str]
) -> None:
    paid = Timestamp()
    paid.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    gate = asyncio.Semaphore(16)

    async def one(member_id: str) -> None:
        async with gate:
            await stub.UpsertMember(
                tagging_service_pb2.UpsertMemberRequest(member=member_pb2.Member(member_id=member_id)),
                metadata=servers.AUTH,
            )
            line = facts_pb2.OrderLine(
                line_id="1", sku="tea", category="tea", quantity=1, unit_price_minor=4_900
            )
            order = facts_pb2.Order(
                order_id=f"o-{member_id}",
                member_id=member_id,
                paid_time=paid,
                amount_minor=4_900,
                lines=[line],
            )
            await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=servers.AUTH)

    await asyncio.gather(*(one(m) for m in members))


async def main() -> None:
    size = int(os.environ.get("BENCH_MEMBERS", "2000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as tagging_address,
        servers.service("audience", dsn) as audience_address,
    ):
        await store.migrate(dsn)
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binaries.temporal_cli()),
            ui=False,
            dev_server_extra_args=[
                "--headless",
                *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
            ],
        )
        db = await Database.connect(dsn, min_size=2, max_size=10)
        settings = Settings(
            database_url=dsn,
            auth_tokens={servers.BENCH_TOKEN: servers.BENCH_TENANT},
            tagging_address=tagging_address,
            audience_address=audience_address,
            temporal_task_queue=QUEUE,
        )
        ran = [0]

        def count() -> None:
            ran[0] += 1

        try:
            async with (
                grpc.aio.insecure_channel(tagging_address) as tagging_channel,
                grpc.aio.insecure_channel(audience_address) as audience_channel,
                grpc.aio.insecure_channel("127.0.0.1:9") as tasks_channel,  # never called
            ):
                resources = Resources(
                    db, tagging_channel, audience_channel, tasks_channel, ChannelSettings.from_env({})
                )
                tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub = (
                    tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
                )
                worker = Worker(
                    env.client,
                    task_queue=QUEUE,
                    workflows=[*WORKFLOWS, BareWorkflow],
                    activities=[*activities(resources, settings, env.client), BareActivities(count).bare],
                )
                async with worker:
                    results: dict[str, list[Rate]] = {
                        "bare_workflow": [],
                        "journey_start": [],
                        "dispatched": [],
                    }
                    # A small warm-up of each, then the measured rounds, interleaved.
                    await bare(env.client, [f"w-{i}" for i in range(100)], ran, "warm")
                    await started(env.client, db, [f"w-{i}" for i in range(100)], "bench-warm")
                    for r in range(rounds):
                        members = [f"r{r}-m{i:05d}" for i in range(size)]
                        results["bare_workflow"].append(await bare(env.client, members, ran, f"r{r}"))
                        results["journey_start"].append(
                            await started(env.client, db, members, f"bench-start-{r}")
                        )
                        results["dispatched"].append(
                            await dispatched(env.client, db, tagging, members, f"bench-dispatch-{r}")
                        )
        finally:
            await db.close()
            await env.shutdown()
    median = {
        name: sorted(rates, key=lambda x: x.per_second)[len(rates) // 2] for name, rates in results.items()
    }
    base = median["bare_workflow"]
    print(base.line("one activity (baseline)"))
    print(median["journey_start"].line("started, enrolled"))
    print(median["dispatched"].line("first order, enrolled"))
    print(f"ratio journey_start/bare_workflow  {median['journey_start'].per_second / base.per_second:.2f}x")
    print(
        f"ratio dispatched/bare_workflow     {median['dispatched'].per_second / base.per_second:.2f}x"
        "  (target >= 0.70, issue 6)"
    )
    print(f"(median of {rounds} rounds of {size} members each; all rounds, members/s:")
    for name, rates in results.items():
        print(f"    {name:<14} {', '.join(f'{r.per_second:.0f}' for r in rates)}")
    print(")")
