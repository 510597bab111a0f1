"""/metrics as Prometheus scrapes it, from the suite's in-process services: the gRPC interceptor on
every call shape (refused calls too), the database pools, the feed consumers, the real-time
refreshes and the ledger move with what the test does. Values are compared before and after, never
against a duration. (A worker's /metrics, journeys and Temporal SDK metrics:
tests/workflows/test_worker_metrics.py.)"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from memberops.tasks.v1 import tasks_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from runtime import app, auth, grpc_metrics, metrics
from runtime.db import OPEN
from runtime.grpc_server import GrpcServer, ServiceBinding
from tests.audience.helpers import in_batch, order
from tests.conftest import ACME, TENANT_ACME, TOKEN_ACME, unique
from tests.tasks.points_helpers import earn
from tests.test_interceptor import SERVICE, register
from tests.waiting import eventually

TAGGING = "memberops.tagging.v1.TaggingService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = metrics.serve("127.0.0.1:0")
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


async def scrape(endpoint: str) -> Samples:
    """Every sample of one scrape, by (name, labels); parsed as Prometheus would."""
    status, text = await asyncio.to_thread(_get, f"{endpoint}/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def calls(samples: Samples, method: str, code: str, service: str = SERVICE) -> float:
    return value(
        samples, "grpc_server_handled_total", grpc_service=service, grpc_method=method, grpc_code=code
    )


async def test_healthz_answers_200_and_other_paths_404(endpoint: str) -> None:
    assert await asyncio.to_thread(_get, f"{endpoint}/healthz") == (200, "ok\n")
    assert (await asyncio.to_thread(_get, f"{endpoint}/nothing"))[0] == 404


# --- the interceptor on every call shape ---------------------------------------------------------


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A server wired as the services are: the metrics interceptor outside authentication."""
    server = GrpcServer(
        [ServiceBinding(SERVICE, register)],
        auth.TokenAuthenticator({TOKEN_ACME: TENANT_ACME}),
        [grpc_metrics.MetricsInterceptor()],
    )
    port = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(0)


def rpc(channel: grpc.aio.Channel, shape: str, name: str) -> Any:
    return getattr(channel, shape)(f"/{SERVICE}/{name}")


async def requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_every_call_shape_is_counted_and_timed_by_type_method_and_code(
    endpoint: str, channel: grpc.aio.Channel
) -> None:
    """The probe server of tests/test_interceptor.py, with the metrics interceptor outside its
    authentication as in the services."""
    before = await scrape(endpoint)
    assert await rpc(channel, "unary_unary", "WhoAmI")(b"", metadata=ACME) == b"acme"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(channel, "unary_unary", "WhoAmI")(b"")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError):
        await rpc(channel, "unary_unary", "Missing")(b"", metadata=ACME)
    assert len([m async for m in rpc(channel, "unary_stream", "Count")(b"", metadata=ACME)]) == 3
    assert (
        await rpc(channel, "stream_unary", "Concatenate")(requests(b"a", b"b"), metadata=ACME) == b"a+b@acme"
    )
    assert (
        len([m async for m in rpc(channel, "stream_stream", "Echo")(requests(b"a", b"b"), metadata=ACME)])
        == 2
    )
    stream = rpc(channel, "unary_stream", "Forever")(b"", metadata=ACME)
    assert await stream.read() == b"tick"
    stream.cancel()

    async def cancelled() -> bool:
        return calls(await scrape(endpoint), "Forever", "CANCELLED") > calls(before, "Forever", "CANCELLED")

    await eventually(cancelled, "the cancelled stream counted")
    after = await scrape(endpoint)

    def moved(name: str, **labels: str) -> float:
        labels["grpc_service"] = SERVICE
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "grpc_server_handled_total"
    assert moved(handled, grpc_method="WhoAmI", grpc_code="OK") == 1
    assert moved(handled, grpc_method="WhoAmI", grpc_code="UNAUTHENTICATED") == 1
    assert moved(handled, grpc_method="Missing", grpc_code="NOT_FOUND") == 1
    shapes = {"Count": "server_stream", "Concatenate": "client_stream", "Echo": "bidi_stream"}
    for method, grpc_type in shapes.items():
        assert moved(handled, grpc_method=method, grpc_type=grpc_type, grpc_code="OK") == 1, method
    assert moved("grpc_server_started_total", grpc_method="WhoAmI", grpc_type="unary") == 2
    for method in ("WhoAmI", "Count", "Concatenate", "Echo", "Forever"):
        timed = moved("grpc_server_handling_seconds_count", grpc_method=method)
        assert timed == moved("grpc_server_started_total", grpc_method=method) >= 1, method


# --- the services --------------------------------------------------------------------------------


async def test_service_calls_are_counted_refused_and_streamed_ones_too(
    endpoint: str, tagging_stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub
) -> None:
    before = await scrape(endpoint)
    member = member_pb2.Member(member_id=unique())
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    with pytest.raises(grpc.aio.AioRpcError):
        await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member))

    async def imported() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        yield tagging_service_pb2.ImportMembersRequest(members=[member_pb2.Member(member_id=unique())])

    await tagging_stub.ImportMembers(imported(), metadata=ACME)
    after = await scrape(endpoint)
    assert calls(after, "UpsertMember", "OK", TAGGING) - calls(before, "UpsertMember", "OK", TAGGING) == 1
    assert (
        calls(after, "UpsertMember", "UNAUTHENTICATED", TAGGING)
        - calls(before, "UpsertMember", "UNAUTHENTICATED", TAGGING)
        == 1
    )
    assert calls(after, "ImportMembers", "OK", TAGGING) - calls(before, "ImportMembers", "OK", TAGGING) == 1
    streamed = {"grpc_service": TAGGING, "grpc_method": "ImportMembers", "grpc_type": "client_stream"}
    assert value(after, "grpc_server_handling_seconds_count", **streamed) > value(
        before, "grpc_server_handling_seconds_count", **streamed
    )


async def test_each_service_pool_is_reported(
    endpoint: str, tagging: app.RunningService, audience: app.RunningService, tasks: app.RunningService
) -> None:
    samples = await scrape(endpoint)
    for service in ("tagging", "audience", "tasks"):
        labels = {"service": service, "pool": "primary"}
        size = value(samples, "memberops_db_pool_connections", **labels)
        in_use = value(samples, "memberops_db_pool_connections_in_use", **labels)
        assert size >= 1 and 0 <= in_use <= size, service
        # The suite's settings: db_pool_max=8, summed over the process's pools of the service.
        pools = sum(1 for database in list(OPEN) if database.name == service)
        assert value(samples, "memberops_db_pool_connections_max", **labels) == 8 * pools >= 8, service


async def test_an_order_moves_the_feed_consumers_the_refresh_and_the_ledger(
    endpoint: str,
    tagging_stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
    audience: app.RunningService,
    tasks: app.RunningService,
) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as audience_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{tasks.port}") as tasks_channel,
    ):
        audiences = audience_service_pb2_grpc.AudienceServiceStub(audience_channel)
        tasks_stub = tasks_service_pb2_grpc.TasksServiceStub(tasks_channel)
        # A dynamic audience (of this test's members only), so that the maintainer follows acme's
        # feed rather than skipping to its end.
        batch = unique("batch")
        await audiences.CreateAudience(
            audience_service_pb2.CreateAudienceRequest(
                audience=audience_pb2.Audience(audience_id=unique("dyn"), rule=in_batch(batch), dynamic=True)
            ),
            metadata=ACME,
        )
        before = await scrape(endpoint)
        member_id = unique()
        member = member_pb2.Member(member_id=member_id)
        member.attributes.update({"batch": batch})
        await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
        await order(tagging_stub, member_id, 0, [("tea", 1_000)])
        await earn(tasks_stub, member_id, 10)

        def applied(samples: Samples, consumer: str) -> float:
            return value(
                samples,
                "memberops_feed_entries_applied_total",
                consumer=consumer,
                feed="tagging",
                tenant=TENANT_ACME,
            )

        async def followed() -> Samples | None:
            now = await scrape(endpoint)
            moved = all(applied(now, c) > applied(before, c) for c in ("tasks", "audience"))
            return now if moved else None

        after = await eventually(followed, "the tasks follower and the audience maintainer applied the entry")

    for consumer in ("tasks", "audience"):
        lag = [
            v
            for (name, labels), v in after.items()
            if name == "memberops_feed_lag_seconds"
            and {("consumer", consumer), ("feed", "tagging"), ("tenant", TENANT_ACME)} <= labels
        ]
        assert len(lag) == 1 and lag[0] >= 0, consumer
    refreshes = {"tenant": TENANT_ACME, "outcome": "ok"}
    assert value(after, "memberops_tag_refresh_seconds_count", **refreshes) > value(
        before, "memberops_tag_refresh_seconds_count", **refreshes
    )
    task_entries = {"tenant": TENANT_ACME, "kind": "task"}
    assert (
        value(after, "memberops_ledger_entries_total", **task_entries)
        - value(before, "memberops_ledger_entries_total", **task_entries)
        >= 1
    )
    assert ("memberops_tag_refresh_queued_members", frozenset({("tenant", TENANT_ACME)})) in after
