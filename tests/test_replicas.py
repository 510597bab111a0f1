"""Two replicas of every service and two workers share the work, and one of each dying mid-run
loses nothing and doubles nothing (issue 21).

The replicas are real processes (tests/replica_cluster.py) over the session's PostgreSQL and
Temporal dev server, in a tenant and on a task queue of their own, so no other consumer of the
suite takes their work. The test's clients spread calls over both replicas of a service and resend
a call a dead replica dropped (every write carries its id). After half the members' facts, one
replica of each service and the worker running the dispatcher's round are SIGKILLed while calls
are in flight; the load goes on. Then every fact is stored once, every feed consumer (the tasks
feed follower, the dynamic-audience maintainer, the journey dispatcher) has applied every fact,
the later ones on the survivors, and every member was messaged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.journeys.v1 import journeys_service_pb2, journeys_service_pb2_grpc
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2, tasks_service_pb2_grpc
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.tagging_feed import FeedKind
from services.audience import server as audience_server
from services.journeys import convert
from services.tagging import server as tagging_server
from tests.audience import helpers as audience_helpers
from tests.audience.helpers import all_of, fact, in_batch, order_count
from tests.conftest import ACME, TENANT_ACME, TOKEN_ACME, bearer, unique
from tests.grpc_helpers import failure
from tests.replica_cluster import SERVICES, Cluster, ClusterConfig, Process, handled, launched, ready
from tests.replica_reads import stand_in, with_database
from tests.tagging.facts_helpers import stamp
from tests.tagging.rule_builders import Op
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.journey_helpers import member_message, phone_of
from workflows.dispatcher import store as dispatch_store
from workflows.dispatcher.payloads import DispatcherInput
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys.definition import AudienceEntry, Entry, JourneyDefinition, Send, Step, Template

MEMBERS = 24
# The kills come once this many members' facts are all stored, while the next ones are in flight.
KILL_AFTER = 12
# Members' calls in flight at once.
CONCURRENCY = 4
PROVIDER_KEY = "provider-key-0123456789"


@dataclasses.dataclass(frozen=True)
class Stubs:
    tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub
    audience: audience_service_pb2_grpc.AudienceServiceAsyncStub
    tasks: tasks_service_pb2_grpc.TasksServiceAsyncStub
    journeys: journeys_service_pb2_grpc.JourneyServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class World:
    """What the load runs against: the tenant, its batch, and the consumers' subjects."""

    tenant_id: str
    batch: str
    task_id: str
    audience_id: str
    journey_key: str
    dispatcher: WorkflowHandle[DispatcherWorkflow, None]


def fact_id(kind: str, member_id: str) -> str:
    """The id the load gives a member's fact of `kind` (order, event, earn): a resent call reuses it."""
    return f"{kind}-{member_id}"


async def drive_member(stubs: Stubs, world: World, member_id: str) -> None:
    """One member's facts and calls: registration, a live order, a behaviour event, points earned
    by the backend, an audience check and a look at the journey (reads)."""
    md = stubs.metadata
    member = member_message(member_id)
    member.attributes["batch"] = world.batch
    await stubs.tagging.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=md)
    now = dt.datetime.now(dt.UTC)
    line = facts_pb2.OrderLine(line_id="1", sku="tea-1", category="tea", quantity=1, unit_price_minor=3_000)
    order = facts_pb2.Order(
        order_id=fact_id("order", member_id),
        member_id=member_id,
        paid_time=stamp(now - dt.timedelta(minutes=1)),
        amount_minor=3_000,
        lines=[line],
    )
    await stubs.tagging.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=md)
    event = facts_pb2.BehaviorEvent(
        event_id=fact_id("event", member_id),
        member_id=member_id,
        kind=facts_pb2.EVENT_KIND_FAVOURITE,
        occur_time=stamp(now),
        sku="tea-2",
        category="tea",
    )
    await stubs.tagging.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=[event]), metadata=md)
    await stubs.tasks.EarnPoints(
        tasks_service_pb2.EarnPointsRequest(
            member_id=member_id,
            amount=5,
            reason=points_pb2.REASON_TASK,
            reference="replicas",
            expiry_policy=points_pb2.EXPIRY_POLICY_NEVER,
            request_id=fact_id("earn", member_id),
        ),
        metadata=md,
    )
    await stubs.audience.CheckMembership(
        audience_service_pb2.CheckMembershipRequest(
            audience=f"audiences/{world.audience_id}", member=f"members/{member_id}"
        ),
        metadata=md,
    )
    await stubs.journeys.GetJourney(
        journeys_service_pb2.GetJourneyRequest(name=f"journeys/{world.journey_key}"), metadata=md
    )


async def drive(
    stubs: Stubs, world: World, members: list[str], kill: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Every member's calls, CONCURRENCY at a time. Once KILL_AFTER members are done, `kill` runs
    while the next members' calls are in flight; the members after those start only once it has
    run, so part of the load certainly meets the survivors alone."""
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0
    killed = asyncio.Event()
    killing: asyncio.Task[None] | None = None

    async def one(n: int, member_id: str) -> None:
        nonlocal done, killing
        if n >= KILL_AFTER + CONCURRENCY:
            await killed.wait()
        async with gate:
            await drive_member(stubs, world, member_id)
        done += 1
        if done == KILL_AFTER:
            killing = asyncio.create_task(kill())
            killing.add_done_callback(lambda _: killed.set())

    await asyncio.gather(*(one(n, m) for n, m in enumerate(members)))
    assert killing is not None
    await killing


async def setup_world(
    stubs: Stubs, env: WorkflowEnvironment, db: Database, tenant_id: str, queue: str
) -> World:
    """A purchase task (the tasks feed follower), a dynamic audience of the batch's buyers (the
    maintainer), an active journey entered from it that sends an SMS, and a dispatcher following
    the feeds for it."""
    md, batch = stubs.metadata, unique("batch")
    task = tasks_pb2.Task(
        task_id=unique("task"),
        reward_points=10,
        start_time=stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)),
        end_time=stamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)),
        purchase=tasks_pb2.PurchaseSpec(measure=tasks_pb2.PURCHASE_MEASURE_ORDERS, target=1),
    )
    await stubs.tasks.CreateTask(tasks_service_pb2.CreateTaskRequest(task=task), metadata=md)
    audience = audience_pb2.Audience(
        audience_id=unique("dyn"),
        rule=all_of(in_batch(batch), fact(order_count(), Op.OPERATOR_GE, 1)),
        dynamic=True,
    )
    await stubs.audience.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(audience=audience), metadata=md
    )
    journey = JourneyDefinition(
        key=unique("replicas"),
        name="replicas",
        entry=Entry(audience=AudienceEntry(audience=audience.audience_id)),
        steps=(Step(id="hello", send=Send(template="hello", channel="sms")),),
        templates={"hello": Template(subject="Hello", body="Hi {nickname}, welcome.")},
    )
    await stubs.journeys.CreateJourney(
        journeys_service_pb2.CreateJourneyRequest(journey=convert.to_proto(journey)), metadata=md
    )
    await stubs.journeys.ActivateJourney(
        journeys_service_pb2.ActivateJourneyRequest(name=f"journeys/{journey.key}"), metadata=md
    )
    handle = await env.client.start_workflow(
        DispatcherWorkflow.run,
        DispatcherInput(
            tenant_id=tenant_id, journey_keys=(journey.key,), idle_seconds=2, report_every_seconds=0
        ),
        id=unique("dispatcher"),
        task_queue=queue,
    )

    async def following() -> bool:
        return len(await dispatch_store.cursors(db, tenant_id, handle.id)) == len(dispatch_store.FEEDS)

    await eventually(following, "the dispatcher following the feeds")
    return World(tenant_id, batch, task.task_id, audience.audience_id, journey.key, handle)


async def round_worker(cluster: Cluster, handle: WorkflowHandle[Any, Any], among: list[Process]) -> Process:
    """The worker of `among` that runs the dispatcher's round now (its started activity)."""

    async def started() -> Process | None:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                worker = cluster.worker_of(pending.last_worker_identity)
                return worker if worker in among else None
        return None

    return await eventually(started, f"a dispatcher round started on one of {[w.name for w in among]}")


async def counts(db: Database, tenant_id: str, sql: str, *args: Any) -> dict[str, int]:
    """`sql` selects (key, count) rows; as a dict."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return {row[0]: row[1] for row in rows}


async def covering(
    db: Database, tenant_id: str, keys: list[str], what: str, sql: str, *args: Any
) -> dict[str, int]:
    """`counts` once they name every key: a feed consumer has applied every fact."""

    async def probe() -> dict[str, int] | None:
        found = await counts(db, tenant_id, sql, *args)
        return found if found.keys() >= set(keys) else None

    return await eventually(probe, what)


async def test_two_replicas_of_everything_share_the_work_and_survive_a_kill(
    pg_dsn: str, db: Database, dev_server_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    tenant_id, token = unique("rep"), f"replicas-{uuid.uuid4().hex}"
    queue = unique("replicas")
    members = [unique("m") for _ in range(MEMBERS)]
    with fakes.http_provider() as provider:
        config = ClusterConfig(
            dsn=pg_dsn,
            token=token,
            tenant_id=tenant_id,
            temporal_address=dev_server_env.client.service_client.config.target_host,
            task_queue=queue,
            channels={"MEMBEROPS_SMS_URL": f"{provider.url}?channel=sms", "MEMBEROPS_SMS_KEY": PROVIDER_KEY},
            logs=tmp_path,
        )
        with launched(config) as cluster:
            await ready(cluster)
            channels = {service: cluster.channel(service) for service in SERVICES}
            try:
                stubs = Stubs(
                    tagging_service_pb2_grpc.TaggingServiceStub(channels["tagging"]),
                    audience_service_pb2_grpc.AudienceServiceStub(channels["audience"]),
                    tasks_service_pb2_grpc.TasksServiceStub(channels["tasks"]),
                    journeys_service_pb2_grpc.JourneyServiceStub(channels["journeys"]),
                    bearer(token),
                )
                world = await setup_world(stubs, dev_server_env, db, tenant_id, queue)
                await _run(cluster, stubs, world, db, members, provider)
            except BaseException as error:
                error.add_note(cluster.output())
                raise
            finally:
                for channel in channels.values():
                    await channel.close()


async def _run(
    cluster: Cluster, stubs: Stubs, world: World, db: Database, members: list[str], provider: fakes.Provider
) -> None:
    killed: list[Process] = []
    answered: dict[str, int] = {}

    async def kill_one_of_each() -> None:
        for process in (p for replicas in cluster.services.values() for p in replicas):
            answered[process.name] = await handled(process)
        victim = await round_worker(cluster, world.dispatcher, cluster.workers)
        for process in [victim, *(cluster.services[s][0] for s in SERVICES)]:
            process.kill()
            killed.append(process)

    await drive(stubs, world, members, kill_one_of_each)
    # Callers spread their calls: every replica answered some before the kills.
    assert all(answered.values()) and len(answered) == len(SERVICES) * 2, answered
    survivors = [p for p in cluster.everything() if p not in killed]
    assert len(killed) == 5 and all(p.alive() for p in survivors)
    (survivor,) = [w for w in cluster.workers if w not in killed]
    tenant = world.tenant_id

    # The dispatcher's round moves to the surviving worker once the dead one's stops beating.
    await round_worker(cluster, world.dispatcher, [survivor])

    # Every fact stored once: by its id, in its table and on tagging's feed; points earned once.
    orders, events, earned = ([fact_id(kind, m) for m in members] for kind in ("order", "event", "earn"))
    once = dict.fromkeys([*orders, *events, *earned], 1)
    found = {
        **await counts(db, tenant, "SELECT order_id, count(*) FROM tagging.orders GROUP BY 1"),
        **await counts(db, tenant, "SELECT event_id, count(*) FROM tagging.events GROUP BY 1"),
        **await counts(db, tenant, "SELECT request_id, count(*) FROM tasks.ledger_entries GROUP BY 1"),
    }
    assert {key: found.get(key) for key in once} == once
    on_feed = await counts(
        db,
        tenant,
        "SELECT subject_id, count(*) FROM tagging.feed WHERE kind = ANY($1) GROUP BY 1",
        [FeedKind.ORDER_RECORDED, FeedKind.EVENT_RECORDED],
    )
    assert {key: on_feed.get(key) for key in [*orders, *events]} == dict.fromkeys([*orders, *events], 1)

    # Every real-time tag refresh owed was run, those the dead replica owed by the survivor's sweeper.
    async def refreshed() -> bool:
        async with db.transaction(tenant, readonly=True) as conn:
            return not await conn.fetchval("SELECT count(*) FROM tagging.refresh_queue")

    await eventually(refreshed, "every owed tag refresh run")

    # The tasks feed follower counted every order once, and paid each member's completion once.
    assert await covering(
        db,
        tenant,
        orders,
        "the tasks follower counting every order",
        "SELECT order_id, count(*) FROM tasks.purchase_orders WHERE task_id = $1 GROUP BY 1",
        world.task_id,
    ) == dict.fromkeys(orders, 1)
    completions = await counts(
        db,
        tenant,
        "SELECT member_id, count(*) FROM tasks.completions WHERE task_id = $1 AND state = 1 GROUP BY 1",
        world.task_id,
    )
    assert completions == dict.fromkeys(members, 1)

    # The maintainer put every buyer in the dynamic audience, one entry each on its feed, and every
    # replica answers the membership check from its index.
    assert await covering(
        db,
        tenant,
        members,
        "the maintainer entering every buyer",
        "SELECT member_id, count(*) FROM audience.feed WHERE audience_id = $1 AND kind = 1 GROUP BY 1",
        world.audience_id,
    ) == dict.fromkeys(members, 1)
    for member_id in members:

        async def is_member(member_id: str = member_id) -> bool:
            reply = await stubs.audience.CheckMembership(
                audience_service_pb2.CheckMembershipRequest(
                    audience=f"audiences/{world.audience_id}", member=f"members/{member_id}"
                ),
                metadata=stubs.metadata,
            )
            return reply.is_member

        await eventually(is_member, f"{member_id} a member by CheckMembership")

    # The dispatcher enrolled every member once; each was messaged once.
    async def messages() -> list[asyncpg.Record] | None:
        async with db.transaction(tenant, readonly=True) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT member_id, status FROM journeys.messages WHERE journey_key = $1", world.journey_key
            )
        final = {row["member_id"] for row in rows if row["status"] in ("sent", "unknown")}
        return rows if final >= set(members) else None

    rows = await eventually(messages, "every member's message settled")
    assert sorted(row["member_id"] for row in rows) == sorted(members)
    assert await counts(
        db,
        tenant,
        "SELECT member_id, count(*) FROM journeys.enrolments WHERE journey_key = $1 GROUP BY 1",
        world.journey_key,
    ) == dict.fromkeys(members, 1)
    # What the provider got: each message sent once. `unknown` is a send whose worker died while the
    # provider had it in hand: it may have arrived (once), and is never sent again.
    delivered = {m: len(provider.to(phone_of(m))) for m in members}
    sent = [row["member_id"] for row in rows if row["status"] == "sent"]
    assert {m: delivered[m] for m in sent} == dict.fromkeys(sent, 1)
    assert max(delivered.values()) == 1


async def buyers(stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub, batch: str, n: int) -> list[str]:
    """`n` members of `batch`, each with an order."""
    found = []
    for _ in range(n):
        member_id = await audience_helpers.member(stub, batch)
        await audience_helpers.order(stub, member_id, 1, [("tea", 1_000)])
        found.append(member_id)
    return sorted(found)


async def test_audience_reads_go_to_database_read_url_and_its_own_writes_to_database_url(
    settings: Settings,
    pg_dsn: str,
    db: Database,
    tagging_stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
    audience: app.RunningService,
    dev_server_env: WorkflowEnvironment,
) -> None:
    """The read URL names a stand-in replica whose members are not the primary's (tests/replica_reads.py),
    so each answer shows which database it read. An audience service with DATABASE_READ_URL set
    evaluates counts, pages, exports and breakdowns there, while its definitions are written to and
    loaded from DATABASE_URL (created and counted at once, as a caller does); a membership check
    the replica cannot answer (lag: the member is not there yet) is answered by the primary. The
    suite's audience service, without it, reads everything from DATABASE_URL."""
    acme_only = dataclasses.replace(
        settings,
        auth_tokens={TOKEN_ACME: TENANT_ACME},
        temporal_address=dev_server_env.client.service_client.config.target_host,
    )
    batch = unique("batch")
    async with stand_in(pg_dsn) as read_dsn:
        replica_tagging = await app.start(
            tagging_server.DEFINITION, dataclasses.replace(acme_only, database_url=read_dsn), "127.0.0.1:0"
        )
        split = await app.start(
            audience_server.DEFINITION,
            dataclasses.replace(acme_only, database_read_url=read_dsn),
            "127.0.0.1:0",
        )
        try:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{replica_tagging.port}") as to_replica,
                grpc.aio.insecure_channel(f"127.0.0.1:{split.port}") as to_split,
                grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as to_primary_only,
            ):
                (on_primary,) = await buyers(tagging_stub, batch, 1)
                on_replica = await buyers(tagging_service_pb2_grpc.TaggingServiceStub(to_replica), batch, 2)
                stub = audience_service_pb2_grpc.AudienceServiceStub(to_split)
                rule = all_of(in_batch(batch), fact(order_count(), Op.OPERATOR_GE, 1))
                audience_id = (await audience_helpers.create(stub, rule)).audience_id

                assert await audience_helpers.count(stub, audience_id) == 2
                assert await audience_helpers.list_all(stub, audience_id) == on_replica
                assert [
                    m for chunk in await audience_helpers.export(stub, audience_id) for m in chunk
                ] == on_replica
                by_hour = await stub.BreakdownAudience(
                    audience_service_pb2.BreakdownAudienceRequest(
                        name=f"audiences/{audience_id}",
                        order_time=audience_service_pb2.OrderTimeBreakdown(time_zone="UTC"),
                    ),
                    metadata=ACME,
                )
                assert by_hour.member_count == 2
                assert await audience_helpers.check(stub, audience_id, on_primary)

                primary_only = audience_service_pb2_grpc.AudienceServiceStub(to_primary_only)
                assert await audience_helpers.count(primary_only, audience_id) == 1
                assert await audience_helpers.list_all(primary_only, audience_id) == [on_primary]
        finally:
            await split.stop()
            await replica_tagging.stop()
    # A replica that does not answer costs its reads, not the service.
    down = await app.start(
        audience_server.DEFINITION,
        dataclasses.replace(acme_only, database_read_url=with_database(pg_dsn, "memberops_gone")),
        "127.0.0.1:0",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{down.port}") as to_down:
            stub = audience_service_pb2_grpc.AudienceServiceStub(to_down)
            got = await stub.GetAudience(
                audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience_id}"), metadata=ACME
            )
            assert got.audience_id == audience_id
            refused = await failure(audience_helpers.count(stub, audience_id))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await down.stop()
    # The definition is the primary's alone (the stand-in is gone with everything it held).
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM audience.audiences WHERE audience_id = $1", audience_id
        )
    assert stored == 1
