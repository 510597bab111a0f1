"""The audience service over real gRPC, after tagging has started (its migrations publish the views)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from memberops.audience.v1 import audience_service_pb2_grpc

from runtime import app


@pytest.fixture(scope="session")
async def audience_channel(
    tagging: app.RunningService, audience: app.RunningService
) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def audience_stub(audience_channel: grpc.aio.Channel) -> audience_service_pb2_grpc.AudienceServiceAsyncStub:
    return audience_service_pb2_grpc.AudienceServiceStub(audience_channel)
