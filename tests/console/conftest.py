"""The console in-process against the suite's in-process services (tests/conftest.py), and a gRPC
server that implements nothing (every call UNIMPLEMENTED) to stand for a service without an RPC."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from console import app
from console.clients import Peers
from runtime import app as runtime_app
from tests.audience.conftest import audience_channel, audience_stub  # noqa: F401
from tests.journeys.conftest import journeys_channel, journeys_stub  # noqa: F401
from tests.workflows.conftest import (  # noqa: F401 (a journey run on a worker, for the member page)
    channel_settings,
    journeys_db,
    mailbox,
    provider,
    resources,
    time_skipping_env,
    worker_settings,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@asynccontextmanager
async def console_client(peers: Peers) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client of a console over `peers`, served on a real port of 127.0.0.1."""
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app.build(peers), host="127.0.0.1", port=0)
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@pytest.fixture(scope="session")
async def nothing_served() -> AsyncIterator[str]:
    """The address of a gRPC server with no service: every call there is UNIMPLEMENTED."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture(scope="session")
def service_peers(
    tagging: runtime_app.RunningService,
    tasks: runtime_app.RunningService,
    journeys: runtime_app.RunningService,
    audience: runtime_app.RunningService,
) -> Peers:
    return Peers(
        f"127.0.0.1:{tagging.port}",
        f"127.0.0.1:{tasks.port}",
        f"127.0.0.1:{journeys.port}",
        f"127.0.0.1:{audience.port}",
    )
