"""The journeys service over real gRPC (tests/conftest.py), with the audience service's client for
the audiences journeys name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from memberops.journeys.v1 import journeys_service_pb2_grpc

from runtime import app
from tests.audience.conftest import audience_channel, audience_stub  # noqa: F401


@pytest.fixture(scope="session")
async def journeys_channel(journeys: app.RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{journeys.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def journeys_stub(journeys_channel: grpc.aio.Channel) -> journeys_service_pb2_grpc.JourneyServiceAsyncStub:
    return journeys_service_pb2_grpc.JourneyServiceStub(journeys_channel)
