"""The shared interceptor on every call shape: auth, tenant binding, and error mapping."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from runtime import auth
from runtime.errors import InvalidArgument, NotFound
from runtime.grpc_server import GrpcServer, ServiceBinding
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TOKEN_ACME, TOKEN_GLOBEX
from tests.grpc_helpers import field_violations

SERVICE = "memberops.test.v1.Probe"


async def whoami(request: bytes, context: Any) -> bytes:
    return auth.current_tenant().encode()


async def crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("secret internal detail")


async def deadlock(request: bytes, context: Any) -> bytes:
    raise asyncpg.DeadlockDetectedError("deadlock detected")


async def missing(request: bytes, context: Any) -> bytes:
    raise NotFound("widgets/w-1 not found")


async def refuse(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
    raise AssertionError("abort returns never")


slow_call_cancelled = asyncio.Event()


async def slow(request: bytes, context: Any) -> bytes:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        slow_call_cancelled.set()
        raise
    return b"too late"


async def count_to_three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        yield f"{auth.current_tenant()}:{i}".encode()


forever_closed = asyncio.Event()


async def forever(request: bytes, context: Any) -> AsyncIterator[bytes]:
    try:
        while True:
            yield b"tick"
    finally:
        forever_closed.set()


async def fail_midway(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise InvalidArgument.field("page_token", "is not one we issued")


async def concatenate(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"+".join([r async for r in requests]) + b"@" + auth.current_tenant().encode()


async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request + b"@" + auth.current_tenant().encode()


def register(server: grpc.aio.Server) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Deadlock": grpc.unary_unary_rpc_method_handler(deadlock),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Count": grpc.unary_stream_rpc_method_handler(count_to_three),
        "FailMidway": grpc.unary_stream_rpc_method_handler(fail_midway),
        "Forever": grpc.unary_stream_rpc_method_handler(forever),
        "Concatenate": grpc.stream_unary_rpc_method_handler(concatenate),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer(
        [ServiceBinding(SERVICE, register)],
        auth.TokenAuthenticator({TOKEN_ACME: "acme", TOKEN_GLOBEX: "globex"}),
    )
    port = await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(0)


def rpc(channel: grpc.aio.Channel, shape: str, name: str) -> Any:
    """A raw-bytes callable for one probe method (the stubs cannot type serializer-less calls)."""
    return getattr(channel, shape)(f"/{SERVICE}/{name}")


async def test_each_call_sees_its_own_tenant(channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "unary_unary", "WhoAmI")
    assert await call(b"", metadata=ACME) == b"acme"
    assert await call(b"", metadata=GLOBEX) == b"globex"


async def test_unexpected_errors_are_internal_without_details(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "Crash")(b"", metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")


async def test_a_transaction_the_database_rolled_back_is_aborted(channel: grpc.aio.Channel) -> None:
    """A deadlock (or a serialization failure) is a conflict the caller may retry, not a crash."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "Deadlock")(b"", metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "retry" in (caught.value.details() or "")


async def test_domain_errors_map_to_their_codes(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "Missing")(b"", metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "widgets/w-1 not found"


async def test_a_handler_may_abort_with_its_own_code(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "Refuse")(b"", metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_server_streaming_is_authenticated_and_bound(channel: grpc.aio.Channel) -> None:
    replies = [r async for r in rpc(channel, "unary_stream", "Count")(b"", metadata=GLOBEX)]
    assert replies == [b"globex:0", b"globex:1", b"globex:2"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [r async for r in rpc(channel, "unary_stream", "Count")(b"")]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_error_midway_through_a_stream_keeps_its_details(channel: grpc.aio.Channel) -> None:
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in rpc(channel, "unary_stream", "FailMidway")(b"", metadata=ACME):
            received.append(reply)
    assert received == [b"first"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"page_token": "is not one we issued"}


async def test_client_streaming_and_bidi_are_bound(channel: grpc.aio.Channel) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    assert (
        await rpc(channel, "stream_unary", "Concatenate")(parts(), metadata=ACME)
        == b"a+b+c@" + TENANT_ACME.encode()
    )
    echoed = [r async for r in rpc(channel, "stream_stream", "Echo")(parts(), metadata=GLOBEX)]
    assert echoed == [b"a@globex", b"b@globex", b"c@globex"]


async def test_the_server_stops_work_when_the_deadline_passes(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "Slow")(b"", metadata=ACME, timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(slow_call_cancelled.wait(), timeout=5)


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN_ACME}")],
        [("authorization", f"Bearer {TOKEN_ACME}"), ("authorization", f"Bearer {TOKEN_GLOBEX}")],
        [("authorization", f"Bearer {TOKEN_ACME}"), ("authorization", f"Bearer {TOKEN_ACME}")],
    ],
)
async def test_two_authorization_headers_are_unauthenticated(
    channel: grpc.aio.Channel, headers: list[tuple[str, str]]
) -> None:
    """Whichever header a proxy or library keeps would pick the tenant: the request is ambiguous."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(channel, "unary_unary", "WhoAmI")(b"", metadata=tuple(headers))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_stream_the_client_cancels_unwinds_without_errors(channel: grpc.aio.Channel) -> None:
    """The handler of a cancelled stream is closed by the event loop from another context; undoing
    the call's bindings there must not raise (it logged a traceback per cancelled stream)."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        call = rpc(channel, "unary_stream", "Forever")(b"", metadata=ACME)
        assert await call.read() == b"tick"
        call.cancel()
        await asyncio.wait_for(forever_closed.wait(), timeout=10)
        # A task that died with an error reports it when collected, through the loop's handler, at
        # once; the turns of the loop let callbacks the closing scheduled run first.
        for _ in range(10):
            await asyncio.sleep(0)
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("exception") for c in unhandled] == []
