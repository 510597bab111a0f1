"""The journeys service over real gRPC, with the audience and tagging services it asks and a
Temporal dev server for what state changes and broadcasts start (nothing runs them here: the
workflows' own tests do)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from memberops.journeys.v1 import journeys_service_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from services.journeys import server as journeys_server

# The audience service's client, for audiences journeys name; the Temporal dev server.
from tests.audience.conftest import audience_channel, audience_stub  # noqa: F401
from tests.workflows.conftest import dev_server_env  # noqa: F401

TASK_QUEUE = "journeys-service-tests"


@pytest.fixture(scope="session")
async def journeys(
    tasks_settings: Settings,
    dev_server_env: WorkflowEnvironment,  # noqa: F811
) -> AsyncIterator[app.RunningService]:
    """The suite's journeys service, pointed at the dev server (the suite-wide one has none)."""
    settings = dataclasses.replace(
        tasks_settings,
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=TASK_QUEUE,
    )
    running = await app.start(journeys_server.DEFINITION, settings, "127.0.0.1:0")
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def journeys_channel(journeys: app.RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{journeys.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def journeys_stub(journeys_channel: grpc.aio.Channel) -> journeys_service_pb2_grpc.JourneyServiceAsyncStub:
    return journeys_service_pb2_grpc.JourneyServiceStub(journeys_channel)
