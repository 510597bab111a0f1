"""One JSON access-log line per call, with request id and tenant bound and no secret in it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from runtime import logs
from tests.conftest import ACME, TOKEN_ACME
from tests.waiting import eventually


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("info", service="test", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    logs.configure("info", service="tests")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_access_log_binds_request_id_and_tenant(
    tagging_channel: grpc.aio.Channel, captured: io.StringIO
) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetMember(
            tagging_service_pb2.GetMemberRequest(name="members/nobody-here"),
            metadata=(*ACME, ("x-request-id", "req-abc-123")),
        )
    # grpc.aio sends an aborted call's status before the handler unwinds, so the access-log line
    # may be written just after the client has its answer.

    async def logged() -> list[dict[str, Any]]:
        return [e for e in lines(captured) if e.get("request_id") == "req-abc-123"]

    entries = await eventually(logged, "was an access-log line written for the call", interval=0.01)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["event"] == "rpc"
    assert entry["tenant"] == "acme"
    assert entry["code"] == "NOT_FOUND"
    assert entry["method"] == "/memberops.tagging.v1.TaggingService/GetMember"
    assert entry["level"] == "info"
    assert TOKEN_ACME not in captured.getvalue()


def test_secrets_and_contact_data_are_redacted(captured: io.StringIO) -> None:
    logs.get_logger("t").info("event", authorization="Bearer x", phone="+8613800000000", member_id="m-1")
    (entry,) = lines(captured)
    assert entry["authorization"] == entry["phone"] == "[redacted]"
    assert entry["member_id"] == "m-1"
    assert entry["service"] == "test"
