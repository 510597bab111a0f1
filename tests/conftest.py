"""Real servers for the whole suite: one embedded PostgreSQL, the services in-process on free ports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from deploy import binaries, localpg
from deploy.devstack import SEARCH_ATTRIBUTES
from runtime import app, logs
from runtime.config import Settings
from runtime.db import Database
from runtime.feed_sequencer import FeedSequencer
from services.audience import server as audience_server
from services.journeys import server as journeys_server
from services.tagging import server as tagging_server
from services.tasks import server as tasks_server

TOKEN_ACME = "test-token-acme-0123456789"
TOKEN_GLOBEX = "test-token-globex-0123456789"
# A tenant for tests that need a population of their own (RFM compares members with each other).
TOKEN_INITECH = "test-token-initech-0123456789"
TENANT_ACME = "acme"
TENANT_GLOBEX = "globex"
TENANT_INITECH = "initech"
# The fuzzer's tenant (tests/fuzz): no background consumer of the tasks service writes in it, so a
# failed call can be checked to have written nothing.
TOKEN_FUZZ = "test-token-fuzz-0123456789"
TENANT_FUZZ = "fuzz"
# A tenant for erasure tests: their members and orders would change another tenant's population
# (Initech's RFM), and no tasks feed follower runs in it (a follower's late write could put an erased
# id back).
TOKEN_UMBRELLA = "test-token-umbrella-0123456789"
TENANT_UMBRELLA = "umbrella"
# Tenants whose daily figures tests count whole: the console's daily reads (GetDailyKpis,
# GetDailySends) and the KPI anomaly check (tests/workflows/test_anomalies.py), each alone.
TOKEN_HOOLI = "test-token-hooli-0123456789"
TENANT_HOOLI = "hooli"
TOKEN_WONKA = "test-token-wonka-0123456789"
TENANT_WONKA = "wonka"
# The WeCom callbacks' tests (tests/wecom/test_callbacks.py, test_pull.py): the tenant's connector
# and its sync's counters are theirs alone.
TOKEN_WECOM_PULL = "test-token-wecompull-0123456789"
TENANT_WECOM_PULL = "wecompull"
# The WeCom sync's tests (tests/wecom/test_connector.py, test_push.py): the tenant's connector, its
# sync workflow and its feed are theirs alone.
TOKEN_WECOM_PUSH = "test-token-wecompush-0123456789"
TENANT_WECOM_PUSH = "wecompush"
# The WeCom channel's tests (tests/workflows/test_wecom_channel.py): the tenant's connector is
# theirs alone (switched on and off by them).
TOKEN_WECOM_SEND = "test-token-wecomsend-0123456789"
TENANT_WECOM_SEND = "wecomsend"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ACME = bearer(TOKEN_ACME)
GLOBEX = bearer(TOKEN_GLOBEX)
INITECH = bearer(TOKEN_INITECH)
FUZZ = bearer(TOKEN_FUZZ)
UMBRELLA = bearer(TOKEN_UMBRELLA)
HOOLI = bearer(TOKEN_HOOLI)
WONKA = bearer(TOKEN_WONKA)
WECOM_PULL = bearer(TOKEN_WECOM_PULL)
WECOM_PUSH = bearer(TOKEN_WECOM_PUSH)
WECOM_SEND = bearer(TOKEN_WECOM_SEND)


def unique(prefix: str = "m") -> str:
    """A fresh id per test, so tests sharing the session database never see each other's rows."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def logs_to_stderr() -> None:
    """The in-process servers log as they do in production: JSON lines on standard error, so a late
    access-log line never lands in a command's captured standard output."""
    logs.configure("info", service="tests")


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pgdata = tmp_path_factory.mktemp("pg") / "data"
    dsn = localpg.start(pgdata, durable=False)
    yield dsn
    localpg.stop(pgdata)


@pytest.fixture(scope="session")
def settings(pg_dsn: str) -> Settings:
    return Settings(
        database_url=pg_dsn,
        auth_tokens={
            TOKEN_ACME: TENANT_ACME,
            TOKEN_GLOBEX: TENANT_GLOBEX,
            TOKEN_INITECH: TENANT_INITECH,
            TOKEN_FUZZ: TENANT_FUZZ,
            TOKEN_UMBRELLA: TENANT_UMBRELLA,
            TOKEN_HOOLI: TENANT_HOOLI,
            TOKEN_WONKA: TENANT_WONKA,
            TOKEN_WECOM_PULL: TENANT_WECOM_PULL,
            TOKEN_WECOM_PUSH: TENANT_WECOM_PUSH,
            TOKEN_WECOM_SEND: TENANT_WECOM_SEND,
        },
        db_pool_min=1,
        db_pool_max=8,
    )


async def _serve(definition: app.ServiceDefinition, settings: Settings) -> AsyncIterator[app.RunningService]:
    running = await app.start(definition, settings, "127.0.0.1:0")
    yield running
    await running.stop()


# What the tagging service starts (history rebuilds) goes to a task queue of its own on the dev
# server: no worker polls it; the rebuild's own tests run their workflows with a tagging server and
# a task queue of their own (tests/workflows/test_tag_history_rebuild.py).
TAGGING_TASK_QUEUE = "tagging-service-tests"


@pytest.fixture(scope="session")
def peer_ports() -> dict[str, int]:
    """Ports of the in-process services tagging calls (EraseMember: tasks, journeys, audience).
    They call tagging too, so they start after it and note their ports here as they do."""
    return {}


def tagging_definition(peer_ports: dict[str, int]) -> app.ServiceDefinition:
    """The tagging service for the suite, finding its peers at the ports they noted."""

    def peer_address(peer: str) -> str:
        return f"127.0.0.1:{peer_ports[peer]}" if peer in peer_ports else ""

    def wire(db: Database | None, tenants: frozenset[str], settings: Settings) -> app.Wiring:
        return tagging_server.wire(db, tenants, settings, peer_address=peer_address)

    return dataclasses.replace(tagging_server.DEFINITION, wire=wire)


@pytest.fixture(scope="session")
async def tagging(
    settings: Settings, dev_server_env: WorkflowEnvironment, peer_ports: dict[str, int]
) -> AsyncIterator[app.RunningService]:
    """The tagging service, starting its history rebuilds on the Temporal dev server."""
    served = dataclasses.replace(
        settings,
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=TAGGING_TASK_QUEUE,
    )
    async for running in _serve(tagging_definition(peer_ports), served):
        yield running


@pytest.fixture(scope="session")
async def audience(settings: Settings, peer_ports: dict[str, int]) -> AsyncIterator[app.RunningService]:
    async for running in _serve(audience_server.DEFINITION, settings):
        peer_ports["audience"] = running.port
        yield running


# What the suite's tasks service starts (coupon issuances) goes to a task queue no worker polls;
# the issuances' own tests run a tasks server and a worker of their own.
TASKS_TASK_QUEUE = "tasks-service-tests"


@pytest.fixture(scope="session")
def tasks_settings(
    settings: Settings,
    tagging: app.RunningService,
    audience: app.RunningService,
    dev_server_env: WorkflowEnvironment,
) -> Settings:
    """The suite's settings pointed at the in-process tagging and audience services, which the
    tasks service calls (members, audiences, tagging's feed), and at the Temporal dev server."""
    return dataclasses.replace(
        settings,
        tagging_address=f"127.0.0.1:{tagging.port}",
        audience_address=f"127.0.0.1:{audience.port}",
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=TASKS_TASK_QUEUE,
    )


def tasks_definition(clock: Callable[[], dt.datetime] | None = None) -> app.ServiceDefinition:
    """The tasks service for the suite. Its feed follower leaves initech alone: tests of the
    follower drive initech's rounds themselves, one call at a time (tests/tasks/test_feed_tasks.py);
    and the fuzzer's tenant, where a failed call must be seen to have written nothing.
    A server on a test's `clock` follows no feed at all: it would pay what it learns at its own,
    moved, time."""

    def wire(db: Database | None, tenants: frozenset[str], settings: Settings) -> app.Wiring:
        if clock is None:
            left_alone = frozenset({TENANT_INITECH, TENANT_FUZZ, TENANT_UMBRELLA})
            wiring = tasks_server.wire(db, tenants - left_alone, settings)
        else:
            left_alone, wiring = tenants, tasks_server.wire(db, frozenset(), settings, clock=clock)
        # The tasks feed of the tenants left alone still gets its positions (ReadTasksFeed).
        assert db is not None
        sequencer = FeedSequencer(db, "tasks", left_alone & tenants)
        return dataclasses.replace(wiring, background=[*wiring.background, sequencer.run])

    return dataclasses.replace(tasks_server.DEFINITION, wire=wire)


@pytest.fixture(scope="session")
async def tasks(tasks_settings: Settings, peer_ports: dict[str, int]) -> AsyncIterator[app.RunningService]:
    async for running in _serve(tasks_definition(), tasks_settings):
        peer_ports["tasks"] = running.port
        yield running


@pytest.fixture(scope="session")
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server (from wheels), one for the session: the journeys service starts its
    state changes and broadcasts there, and workflow tests that need schedules or visibility run
    their workers against it. Defined here only, so there is one server, not one per conftest."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binaries.temporal_cli()),
        ui=False,
        dev_server_extra_args=[
            "--headless",
            *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
        ],
    )
    yield env
    await env.shutdown()


# What the journeys service starts (state changes, broadcasts) goes to a task queue of its own on
# the dev server: no worker polls it, the workflows' own tests run those workflows.
JOURNEYS_TASK_QUEUE = "journeys-service-tests"


@pytest.fixture(scope="session")
async def journeys(
    tasks_settings: Settings,
    tasks: app.RunningService,
    dev_server_env: WorkflowEnvironment,
    peer_ports: dict[str, int],
) -> AsyncIterator[app.RunningService]:
    """The journeys service over the worker's schema, asking the in-process tagging, audience and
    tasks services about what definitions name (tasks: coupon templates, and the report's coupons),
    and starting workflows on the Temporal dev server."""
    settings = dataclasses.replace(
        tasks_settings,
        tasks_address=f"127.0.0.1:{tasks.port}",
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=JOURNEYS_TASK_QUEUE,
    )
    async for running in _serve(journeys_server.DEFINITION, settings):
        peer_ports["journeys"] = running.port
        yield running


@pytest.fixture(scope="session")
async def tagging_channel(tagging: app.RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def tagging_stub(tagging_channel: grpc.aio.Channel) -> tagging_service_pb2_grpc.TaggingServiceAsyncStub:
    return tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)


@pytest.fixture(scope="session")
async def db(pg_dsn: str, tagging: app.RunningService) -> AsyncIterator[Database]:
    """A pool of the tests' own, for checking what the services wrote (after they migrated)."""
    database = await Database.connect(pg_dsn, min_size=1, max_size=4)
    yield database
    await database.close()


REPO_ROOT = Path(__file__).resolve().parent.parent
