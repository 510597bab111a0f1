"""Slow and unread `ExportAudience` readers cost only themselves (issue 17, item 1).

An unread stream here is a client that takes its first chunk and then stops reading, on a channel
whose receive window is small (1 KiB, no window growth), so the server's stream really waits on
flow control: the audience is far larger than fits in the window, at one id per chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.errors import ResourceExhausted
from services.audience import server as audience_server
from services.audience.exports import ExportLimits, ExportSlots
from services.audience.stream_budget import within_idle_budget
from tests.audience.helpers import create, import_batch, in_batch
from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import health_stub
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

UNREAD = 200
BIG = 300
# A deadline on every call that must answer: a hang check, not a latency bound.
HANG = 10
SLOW_READER = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def audience_with(settings: Settings, limits: ExportLimits) -> AsyncIterator[app.RunningService]:
    """An audience server of the test's own with these export limits (the session's server follows
    the feeds; this one needs no background loops)."""

    def wire(db: Database | None, tenants: frozenset[str], s: Settings) -> app.Wiring:
        wiring = audience_server.wire(db, tenants, s, exports=limits)
        return dataclasses.replace(wiring, background=())

    definition = dataclasses.replace(audience_server.DEFINITION, wire=wire)
    running = await app.start(definition, settings, "127.0.0.1:0")
    try:
        yield running
    finally:
        await running.stop()


def export_request(audience_id: str, chunk_size: int = 0) -> audience_service_pb2.ExportAudienceRequest:
    return audience_service_pb2.ExportAudienceRequest(name=f"audiences/{audience_id}", chunk_size=chunk_size)


async def read_all(call: Any) -> list[str]:
    ids: list[str] = []
    while (chunk := await call.read()) is not grpc.aio.EOF:
        ids.extend(chunk.member_ids)
    return ids


async def test_two_hundred_unread_exports_leave_counts_exports_and_health_answering(
    settings: Settings, audience: app.RunningService, tagging_stub: TaggingStub
) -> None:
    """200 unread exports of one tenant (its cap, raised to 200 for this) against a pool of 8: a
    count and a small export still answer, health says SERVING, and the tenant's next export is
    RESOURCE_EXHAUSTED while another tenant's runs. Before issue 17 each unread export held a
    pooled connection inside a transaction, and the ninth left nothing for anyone else."""
    big_batch, small_batch = unique("batch"), unique("batch")
    await import_batch(tagging_stub, big_batch, BIG, ACME)
    await import_batch(tagging_stub, small_batch, 2, ACME)
    await import_batch(tagging_stub, small_batch, 2, GLOBEX)
    async with (
        audience_with(settings, ExportLimits(per_tenant=UNREAD)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=SLOW_READER) as slow_channel,
    ):
        stub: AudienceStub = audience_service_pb2_grpc.AudienceServiceStub(channel)
        slow: AudienceStub = audience_service_pb2_grpc.AudienceServiceStub(slow_channel)
        big = await create(stub, in_batch(big_batch))
        small = await create(stub, in_batch(small_batch))
        other = await create(stub, in_batch(small_batch), metadata=GLOBEX)
        unread = [
            slow.ExportAudience(export_request(big.audience_id, 1), metadata=ACME) for _ in range(UNREAD)
        ]
        try:
            firsts = await asyncio.wait_for(asyncio.gather(*(call.read() for call in unread)), 6 * HANG)
            assert all(len(first.member_ids) == 1 for first in firsts)  # type: ignore[attr-defined]

            count = await stub.CountAudience(
                audience_service_pb2.CountAudienceRequest(name=f"audiences/{big.audience_id}"),
                metadata=ACME,
                timeout=HANG,
            )
            assert count.member_count == BIG
            exported = await read_all(
                stub.ExportAudience(export_request(other.audience_id), metadata=GLOBEX, timeout=HANG)
            )
            assert exported == [f"{small_batch}-00000", f"{small_batch}-00001"]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await read_all(
                    stub.ExportAudience(export_request(small.audience_id), metadata=ACME, timeout=HANG)
                )
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
            health = await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HANG)
            assert health.status == SERVING
            assert not any(call.done() for call in unread), "the unread exports were meant to stay open"
        finally:
            for call in unread:
                call.cancel()


async def test_an_export_left_unread_past_its_budget_ends_with_deadline_exceeded(
    settings: Settings, audience: app.RunningService, tagging_stub: TaggingStub
) -> None:
    """The client sees the chunks already sent, then DEADLINE_EXCEEDED. The server's budget timer
    and this test's sleep run on the same event loop, so the timer, due long before, fires first."""
    batch = unique("batch")
    await import_batch(tagging_stub, batch, BIG, ACME)
    budget = 0.2
    async with (
        audience_with(settings, ExportLimits(idle_seconds=budget)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=SLOW_READER) as slow_channel,
    ):
        slow: AudienceStub = audience_service_pb2_grpc.AudienceServiceStub(slow_channel)
        big = await create(slow, in_batch(batch))
        call = slow.ExportAudience(export_request(big.audience_id, 1), metadata=ACME)
        first: Any = await asyncio.wait_for(call.read(), HANG)
        await asyncio.sleep(10 * budget)  # the client under test: it does not read for 10 budgets
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(read_all(call), HANG)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
        assert "not read for 0.2 s" in (caught.value.details() or "")
        assert len(first.member_ids) == 1


class _Context:
    """What `within_idle_budget` uses of a grpc.aio servicer context."""

    def __init__(self) -> None:
        self.aborted = asyncio.Event()
        self.code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.aborted.set()
        raise grpc.aio.AbortError(details)


async def test_the_idle_budget_ends_a_stream_and_closes_its_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncGenerator[int, None]:
        try:
            for i in range(10):
                yield i
        finally:
            closed.set()

    context = _Context()
    stream = within_idle_budget(source(), context, 0.05, "the test stream")
    assert await anext(stream) == 0  # and never asked for the next one
    await asyncio.wait_for(context.aborted.wait(), HANG)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert closed.is_set()

    read = _Context()
    assert [i async for i in within_idle_budget(source(), read, 5, "a read stream")] == list(range(10))
    assert not read.aborted.is_set()


def test_export_slots_are_per_tenant_and_given_back_once() -> None:
    slots = ExportSlots(per_tenant=2)
    first, second = slots.take("acme"), slots.take("acme")
    with pytest.raises(ResourceExhausted):
        slots.take("acme")
    slots.take("globex")
    first()
    first()
    assert slots.open("acme") == 1
    third = slots.take("acme")
    with pytest.raises(ResourceExhausted):
        slots.take("acme")
    second()
    third()
    assert slots.open("acme") == 0


async def test_health_says_not_serving_while_the_pool_is_starved(audience: app.RunningService) -> None:
    """Every connection of the audience server's pool held: NOT_SERVING; given back: SERVING."""
    assert audience.db is not None
    pool = audience.db.pool
    async with grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as channel:
        watch = health_stub(channel).Watch(health_pb2.HealthCheckRequest())

        async def until(status: int) -> None:
            async with asyncio.timeout(3 * HANG):
                while (await watch.read()).status != status:
                    pass

        await until(SERVING)
        held = [await asyncio.wait_for(pool.acquire(), HANG) for _ in range(pool.get_max_size())]
        try:
            await until(NOT_SERVING)
        finally:
            for conn in held:
                await pool.release(conn)
        await until(SERVING)
        watch.cancel()


async def test_a_cancelled_export_gives_its_slot_back(
    settings: Settings, audience: app.RunningService, tagging_stub: TaggingStub
) -> None:
    """With a cap of one, a second export is RESOURCE_EXHAUSTED while the first is open, and runs
    once the first was cancelled: the server learns of the cancel over the wire, so the test waits
    for that (refusals meanwhile are RESOURCE_EXHAUSTED, nothing else)."""
    big_batch, small_batch = unique("batch"), unique("batch")
    await import_batch(tagging_stub, big_batch, BIG, ACME)
    await import_batch(tagging_stub, small_batch, 2, ACME)
    async with (
        audience_with(settings, ExportLimits(per_tenant=1)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=SLOW_READER) as slow_channel,
    ):
        stub: AudienceStub = audience_service_pb2_grpc.AudienceServiceStub(channel)
        slow: AudienceStub = audience_service_pb2_grpc.AudienceServiceStub(slow_channel)
        big = await create(stub, in_batch(big_batch))
        small = await create(stub, in_batch(small_batch))
        unread = slow.ExportAudience(export_request(big.audience_id, 1), metadata=ACME)
        await asyncio.wait_for(unread.read(), HANG)

        async def small_export() -> list[str]:
            call = stub.ExportAudience(export_request(small.audience_id), metadata=ACME, timeout=HANG)
            return await read_all(call)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await small_export()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        unread.cancel()

        async def exported() -> list[str] | None:
            try:
                return await small_export()
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                return None

        got = await eventually(exported, "did the cancelled export give its slot back", within=HANG)
        assert got == [f"{small_batch}-00000", f"{small_batch}-00001"]
