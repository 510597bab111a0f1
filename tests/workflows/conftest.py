"""Temporal for the workflow tests: the time-skipping test server and the dev server, from wheels;
the worker's resources over the suite's services and database; the fake SMTP server and HTTP
provider (the journeys' external parties)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from deploy import binaries
from deploy.devstack import SEARCH_ATTRIBUTES
from runtime import app
from runtime.config import Settings
from runtime.db import Database
from tests.workflows import fakes
from workflows.journeys import store as journeys_store
from workflows.journeys.channels.config import ChannelSettings, HttpProviderSettings, SmtpSettings
from workflows.worker import Resources

PROVIDER_KEY = "provider-key-0123456789"


async def register_search_attributes(client: Client) -> None:
    """What `make up` passes to the dev server as --search-attribute, for the test server."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                spec.partition("=")[0]: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                for spec in SEARCH_ATTRIBUTES
            },
        )
    )


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of the test's own (it starts in about 0.15 s). Its clock and
    its time-skipping lock are global to the server, so when it was shared, what one test left
    behind reached every later one: a run left holding a lock froze time (see `until_asleep`), a
    lock left released let timers fire at once (a quiet-hours deferral then sent at once), and a
    clock skipped days ahead by earlier tests moved the next test into another day, zone offset
    or season, and ahead of the services' real clocks. Each test now starts at the real time
    with nothing running, and a failed test takes its leftovers with it."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binaries.temporal_test_server())
    )
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture
def worker_settings(
    settings: Settings,
    tagging: app.RunningService,
    audience: app.RunningService,
    tasks: app.RunningService,
    request: pytest.FixtureRequest,
) -> Settings:
    """The suite's settings pointed at the in-process services, with a task queue per test."""
    return dataclasses.replace(
        settings,
        tagging_address=f"127.0.0.1:{tagging.port}",
        audience_address=f"127.0.0.1:{audience.port}",
        tasks_address=f"127.0.0.1:{tasks.port}",
        temporal_task_queue=f"test-{request.node.name}"[:200],
    )


@pytest.fixture(scope="session")
async def journeys_db(pg_dsn: str) -> AsyncIterator[Database]:
    """The worker's schema, migrated as the worker does at start, and a pool over it."""
    await journeys_store.migrate(pg_dsn)
    database = await Database.connect(pg_dsn, min_size=1, max_size=4)
    yield database
    await database.close()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[fakes.MailBox]:
    with fakes.smtp_server() as box:
        yield box


@pytest.fixture(scope="session")
def provider() -> Iterator[fakes.Provider]:
    with fakes.http_provider() as running:
        yield running


@pytest.fixture
def channel_settings(mailbox: fakes.MailBox, provider: fakes.Provider) -> ChannelSettings:
    """Every channel configured: e-mail to the SMTP server, the rest to the HTTP provider (with its
    batch endpoint, which broadcasts use)."""
    return ChannelSettings(
        smtp=SmtpSettings(host=mailbox.host, port=mailbox.port, sender="journeys@shop.test"),
        providers={
            name: HttpProviderSettings(
                url=f"{provider.url}?channel={name}",
                api_key=PROVIDER_KEY,
                batch_url=f"{provider.batch_url}?channel={name}",
            )
            for name in ("sms", "app_push", "wecom")
        },
        timeout_seconds=10,
        default_time_zone="Asia/Shanghai",
    )


@pytest.fixture
async def resources(
    worker_settings: Settings, journeys_db: Database, channel_settings: ChannelSettings
) -> AsyncIterator[Resources]:
    async with (
        grpc.aio.insecure_channel(worker_settings.tagging_address) as tagging,
        grpc.aio.insecure_channel(worker_settings.audience_address) as audience,
        grpc.aio.insecure_channel(worker_settings.tasks_address) as tasks,
    ):
        yield Resources(journeys_db, tagging, audience, tasks, channel_settings)


@pytest.fixture
async def worker_tagging_channel(resources: Resources) -> grpc.aio.Channel:
    return resources.tagging
