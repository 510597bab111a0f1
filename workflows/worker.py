"""The MemberOps worker: `python -m workflows.worker`. Runs every workflow and activity on one queue."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from memberops.audience.v1 import audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from memberops.tasks.v1 import tasks_service_pb2_grpc
from temporalio.client import Client
from temporalio.worker import Worker

from runtime import logs, observability, tracing
from runtime.channels import peer_channel
from runtime.config import Settings, env_number
from runtime.db import Database
from workflows import service_calls
from workflows.anomalies.activities import AnomalyActivities
from workflows.anomalies.workflow import KpiAnomalyCheckWorkflow
from workflows.coupon_issuance.activities import CouponIssuanceActivities
from workflows.coupon_issuance.workflow import CouponIssuanceWorkflow
from workflows.dispatcher.activities import DispatcherActivities
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys import store as journeys_store
from workflows.journeys.activities import JourneyActivities
from workflows.journeys.broadcast_run.activities import BroadcastActivities
from workflows.journeys.broadcast_run.workflow import BroadcastRunWorkflow
from workflows.journeys.channels import registry
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.channels.wecom import WeComChannel
from workflows.journeys.channels.wecom_results import WeComResultActivities
from workflows.journeys.cohort.activities import CohortActivities
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.control.activities import ControlActivities
from workflows.journeys.control.workflow import JourneyControlWorkflow
from workflows.journeys.sending import Sender
from workflows.journeys.shipped import SHIPPED, scaled
from workflows.journeys.workflow import JOURNEY_WORKFLOW, JourneyWorkflow
from workflows.liveness import Liveness
from workflows.member_lookup.activities import TaggingActivities
from workflows.member_lookup.workflow import MemberLookupWorkflow
from workflows.periodic.activities import PeriodicActivities
from workflows.periodic.workflow import PeriodicJobWorkflow
from workflows.tag_history.activities import TagHistoryActivities
from workflows.tag_history.workflow import TagHistoryRebuildWorkflow
from workflows.wecom.activities import WeComActivities
from workflows.wecom.pull_activities import WeComPullActivities
from workflows.wecom.tagging_reads import TaggingReads
from workflows.wecom.workflow import WeComSyncWorkflow

log = logs.get_logger("memberops.worker")

WORKFLOWS: Sequence[type] = (
    MemberLookupWorkflow,
    JourneyWorkflow,
    CohortJourneyWorkflow,
    JourneyControlWorkflow,
    BroadcastRunWorkflow,
    DispatcherWorkflow,
    PeriodicJobWorkflow,
    TagHistoryRebuildWorkflow,
    KpiAnomalyCheckWorkflow,
    CouponIssuanceWorkflow,
    WeComSyncWorkflow,
)


@dataclass(frozen=True)
class Resources:
    """What the activities use, opened once per process and event loop: the pool over the
    worker's schema, one gRPC channel per service, and the delivery channels' configuration."""

    db: Database
    tagging: grpc.aio.Channel
    audience: grpc.aio.Channel
    tasks: grpc.aio.Channel
    channels: ChannelSettings


def services_of(resources: Resources, settings: Settings) -> service_calls.Services:
    """Stubs of the three services over the worker's channels, with each tenant's token."""
    return service_calls.Services(
        tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging),
        audience_service_pb2_grpc.AudienceServiceStub(resources.audience),
        tasks_service_pb2_grpc.TasksServiceStub(resources.tasks),
        settings.token_for_tenant,
    )


def activities(resources: Resources, settings: Settings, client: Client) -> list[Any]:
    """Every activity the worker runs, bound to the resources of this event loop (the dispatcher's
    start and signal journeys through `client`)."""
    services = services_of(resources, settings)
    tagging, audience, tasks = services.tagging, services.audience, services.tasks
    lookup = TaggingActivities(tagging, settings.token_for_tenant)
    wecom = WeComChannel(resources.db, settings.wecom_api_url)
    sender = Sender(resources.db, registry.build(resources.channels), resources.channels, {"wecom": wecom})
    journeys = JourneyActivities(resources.db, services, sender, resources.channels)
    cohorts = CohortActivities(resources.db, services, sender, resources.channels)
    broadcasts = BroadcastActivities(resources.db, services)
    dispatcher = DispatcherActivities(resources.db, tagging, audience, client, settings.token_for_tenant)
    periodic = PeriodicActivities(tagging, tasks, settings.token_for_tenant)
    control = ControlActivities(resources.db, client)
    tag_history = TagHistoryActivities(tagging, settings.token_for_tenant)
    anomalies = AnomalyActivities(resources.db, tagging, tasks, settings.token_for_tenant)
    return [
        lookup.get_member,
        *journeys.all(),
        *cohorts.all(),
        *broadcasts.all(),
        *dispatcher.all(),
        *periodic.all(),
        *control.all(),
        *tag_history.all(),
        *anomalies.all(),
        *CouponIssuanceActivities(tasks, settings.token_for_tenant).all(),
        WeComResultActivities(resources.db, wecom).read_results,
        *WeComActivities(
            resources.db, TaggingReads(tagging, settings.token_for_tenant), settings.wecom_api_url
        ).all(),
        *WeComPullActivities(resources.db, tagging, settings.token_for_tenant, settings.wecom_api_url).all(),
    ]


def build_worker(client: Client, settings: Settings, resources: Resources) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=list(WORKFLOWS),
        activities=activities(resources, settings, client),
        interceptors=[Liveness([JOURNEY_WORKFLOW])],
    )


async def connect(settings: Settings, attempts: int = 60) -> Client:
    """Connects to Temporal, waiting for it while it starts (as under `make up`)."""
    for attempt in range(1, attempts + 1):
        try:
            # Traced (when tracing is on): the dispatcher's starts and signals carry the trace of
            # the feed entry they act on; the worker built on this client continues it.
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                interceptors=tracing.temporal_interceptors(),
            )
        except RuntimeError as error:
            if attempt == attempts:
                raise
            log.info("temporal not reachable yet", attempt=attempt, error=str(error))
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def prepare_database(settings: Settings, time_scale: int = 0) -> Database:
    """Migrates the worker's own schema `journeys` and stores the shipped journeys for every tenant:
    once, when the tenant has no version of them; with a `time_scale` (MEMBEROPS_JOURNEY_TIME_SCALE),
    as their latest version at that scale (see `shipped.scaled`; 1 stores them as shipped). Either
    way they are stored as drafts, or left in the state an operator put them in: nothing here
    activates a journey (see `workflows/journeys/states.py`)."""
    dsn = settings.require_database()
    await journeys_store.migrate(dsn)
    db = await Database.connect(
        dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max, name="worker"
    )
    tenants = frozenset(settings.require_tokens().values())
    if time_scale:
        for tenant_id in sorted(tenants):
            for definition in SHIPPED:
                await journeys_store.put_definition(db, tenant_id, scaled(definition, time_scale))
    else:
        await journeys_store.seed_definitions(db, tenants, SHIPPED)
    return db


@asynccontextmanager
async def open_resources(
    settings: Settings, channels: ChannelSettings, time_scale: int = 0
) -> AsyncIterator[Resources]:
    db = await prepare_database(settings, time_scale)
    try:
        async with (
            peer_channel(settings.tagging_address) as tagging,
            peer_channel(settings.audience_address) as audience,
            peer_channel(settings.tasks_address) as tasks,
        ):
            yield Resources(db, tagging, audience, tasks, channels)
    finally:
        await db.close()


async def run(settings: Settings, channels: ChannelSettings, time_scale: int = 0) -> None:
    settings.require_tokens()
    client = await connect(settings)
    async with open_resources(settings, channels, time_scale) as resources:
        worker = build_worker(client, settings, resources)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            log.info("worker running", task_queue=settings.temporal_task_queue)
            await stop.wait()
            log.info("worker shutting down")


def main() -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service="worker")
    observability.start("worker", settings)
    time_scale = env_number(os.environ, "MEMBEROPS_JOURNEY_TIME_SCALE", 0, int)
    asyncio.run(run(settings, ChannelSettings.from_env(), time_scale))


if __name__ == "__main__":
    main()
