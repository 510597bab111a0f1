"""The shared server bootstrap: health, reflection, graceful shutdown, internal errors."""

from __future__ import annotations

import asyncio
import gc

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from runtime import app
from runtime.config import Settings
from services.tagging import server as tagging_server
from tests.grpc_helpers import health_stub, reflection_stub

SERVICES = {
    "tagging": "memberops.tagging.v1.TaggingService",
    "audience": "memberops.audience.v1.AudienceService",
    "tasks": "memberops.tasks.v1.TasksService",
    "journeys": "memberops.journeys.v1.JourneyService",
}


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    tagging: app.RunningService,
    audience: app.RunningService,
    tasks: app.RunningService,
    journeys: app.RunningService,
) -> dict[str, app.RunningService]:
    return {"tagging": tagging, "audience": audience, "tasks": tasks, "journeys": journeys}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_each_service_reports_serving(running: dict[str, app.RunningService], service: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running[service].port}") as channel:
        health = health_stub(channel)
        for name in ("", SERVICES[service]):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def reflect(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Asks the server reflection service, as `buf curl` and grpcurl do."""
    return [reply async for reply in reflection_stub(channel).ServerReflectionInfo(iter(requests))]


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_reflection_describes_each_service(
    running: dict[str, app.RunningService], service: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running[service].port}") as channel:
        listed, described = await reflect(
            channel,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICES[service]),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICES[service], "grpc.health.v1.Health"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {
        m.name
        for f in files
        for s in f.service
        for m in s.method
        if s.name == SERVICES[service].split(".")[-1]
    }
    if service == "tagging":
        assert {"UpsertMember", "GetMember"} <= methods


async def test_shutdown_reports_not_serving_before_the_server_stops(settings: Settings) -> None:
    running = await app.start(tagging_server.DEFINITION, settings, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_stub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        statuses = [(await watch.read()).status]
        stopping = asyncio.create_task(running.stop(grace=2))
        statuses.append((await watch.read()).status)
        await stopping
    assert statuses == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]


def test_serving_freezes_what_start_up_built_and_collects_less_often() -> None:
    thresholds = gc.get_threshold()
    try:
        app.tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == app.GC_GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
