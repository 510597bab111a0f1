"""The gRPC server every service runs: grpc.aio, health, reflection, auth, logs, error mapping.

A service contributes `ServiceBinding`s; this module adds the standard health service (SERVING
once started, NOT_SERVING as soon as shutdown begins), server reflection, and one interceptor that
authenticates the caller, binds request id and tenant to the logs, writes one access-log line per
call and turns domain errors into status codes with `google.rpc` details.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import auth, errors, inbound, status
from runtime.logs import get_logger

log = get_logger("memberops.grpc")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Services a caller may use without a token: probes and tooling (buf curl, grpcurl).
PUBLIC_SERVICES = frozenset({HEALTH_SERVICE, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})
REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
# Long enough for a server-streaming export or a feed stream to end on its own most of the time;
# a longer one is cut and its client resumes from its cursor or page token.
_MAX_CONNECTION_AGE_GRACE_MS = 10 * 60 * 1000
# How long gRPC core keeps a call that arrived before the server asked for the next one of its
# method; older ones it cancels, and their callers get CANCELLED from a server that never saw them.
# gRPC's default is 30 s, yet under bursts (a thousand concurrent peer calls, tests/tasks run alone)
# it cancelled calls queued for a second or two: about one run in three failed with such a
# CANCELLED, none in eight with this, and hundreds of calls fail at once with 1 s. A call's own
# deadline is what should end its wait, so this is a day.
_MAX_UNREQUESTED_SECONDS = 24 * 60 * 60


@dataclass(frozen=True)
class ServiceBinding:
    """One protobuf service and the function that adds its servicer to a server."""

    full_name: str
    register: Callable[[grpc.aio.Server], None]

    @classmethod
    def of(
        cls,
        descriptor: ServiceDescriptor,
        add_to_server: Callable[[Any, grpc.aio.Server], None],
        servicer: object,
    ) -> ServiceBinding:
        """Binds `servicer` with the generated `add_XServicer_to_server` of `descriptor`'s service."""
        return cls(descriptor.full_name, lambda server: add_to_server(servicer, server))


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: auth.TokenAuthenticator) -> None:
        self._auth = authenticator
        # method -> its wrapped handler: a method's handler never changes, so it is wrapped once.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or method.split("/")[1] in PUBLIC_SERVICES:
            return handler
        wrapped = self._wrapped[method] = _wrap_handler(handler, lambda context: self._rpc(method, context))
        return wrapped

    @asynccontextmanager
    async def _rpc(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        pairs = context.invocation_metadata() or ()
        metadata = {key: value for key, value in pairs}
        request_id = str(metadata.get(REQUEST_ID_HEADER) or "")[:_MAX_REQUEST_ID] or _new_request_id()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        # Bound and reset by hand rather than with `bound_contextvars`: this runs on every call.
        bound = structlog.contextvars.bind_contextvars(method=method, request_id=request_id)
        try:
            try:
                # Two headers would leave the tenant to whichever a proxy or library keeps.
                if sum(1 for key, _ in pairs if key == "authorization") > 1:
                    raise errors.Unauthenticated("send exactly one authorization header")
                tenant = self._auth.tenant_for(_text(metadata.get("authorization")))
            except errors.Unauthenticated as error:
                log.info("rpc", code="UNAUTHENTICATED", reason=error.message)
                await context.abort_with_status(status.to_status(error))
            token = auth.bind_tenant(tenant)
            tenant_bound = structlog.contextvars.bind_contextvars(tenant=tenant)
            try:
                try:
                    yield
                except errors.DomainError as error:
                    code = status.code_for(error)
                    await context.abort_with_status(status.to_status(error))
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    # GeneratorExit: a stream the client cancelled while the handler waited on it.
                    code = context.code() or grpc.StatusCode.CANCELLED
                    raise
                except Exception as error:
                    aborted = status.transient(error)
                    if aborted is not None:
                        code = grpc.StatusCode.ABORTED
                        log.warning("rpc rolled back by a conflict", error=str(error))
                        await context.abort_with_status(status.to_status(aborted))
                    else:
                        code = grpc.StatusCode.INTERNAL
                        log.exception("rpc failed")
                        await context.abort_with_status(status.internal_status())
                finally:
                    took = round((time.perf_counter() - started) * 1000, 2)
                    log.info("rpc", code=code.name, duration_ms=took)
            finally:
                _undo(lambda: structlog.contextvars.reset_contextvars(**tenant_bound))
                _undo(lambda: auth.unbind_tenant(token))
        finally:
            _undo(lambda: structlog.contextvars.reset_contextvars(**bound))


def _undo(reset: Callable[[], None]) -> None:
    """Resets a context variable bound for the call. A stream the client cancelled is closed by the
    event loop from another context, where the call's tokens are unknown (ValueError); that
    context is dropped afterwards, so there is nothing to undo there."""
    with contextlib.suppress(ValueError):
        reset()


# A call without an x-request-id gets one unique to this process's run and the call: a random
# prefix drawn once and a counter (a uuid4 per call was a system call on every request).
_RUN_PREFIX = uuid.uuid4().hex[:12]
_CALLS = itertools.count(1)


def _new_request_id() -> str:
    return f"{_RUN_PREFIX}{next(_CALLS):012x}"


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    scope: Callable[[grpc.aio.ServicerContext[Any, Any]], Any],
) -> grpc.RpcMethodHandler[Any, Any]:
    """Runs the handler inside `scope(context)`, keeping its streaming shape, and refuses there
    requests that `inbound` would not admit (so the refusal is mapped like any domain error)."""
    # The stubs type handler behaviours as synchronous; under grpc.aio they are coroutines and
    # async generators, so they are handled as Any here.
    h: Any = handler
    decode = inbound.guarded(handler.request_deserializer)
    if h.unary_unary:
        inner_uu = h.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            async with scope(context):
                return await inner_uu(inbound.admit(request), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, decode, handler.response_serializer)
    if h.unary_stream:
        inner_us = h.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with scope(context):
                async for item in inner_us(inbound.admit(request), context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, decode, handler.response_serializer)
    if h.stream_unary:
        inner_su = h.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            async with scope(context):
                return await inner_su(_admitted(requests), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, decode, handler.response_serializer)
    inner_ss = h.stream_stream

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async with scope(context):
            async for item in inner_ss(_admitted(requests), context):
                yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, decode, handler.response_serializer)


async def _admitted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The stream's requests; a refused one ends it, its fields named `requests[k].…`."""
    k = 0
    async for request in requests:
        yield inbound.admit(request, f"requests[{k}]")
        k += 1


class GrpcServer:
    """A started grpc.aio server with health and reflection; `stop` drains it gracefully."""

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        authenticator: auth.TokenAuthenticator,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        """`interceptors` run outside the one that authenticates (metrics, traces: they see every
        call, refused ones too)."""
        self._bindings = list(bindings)
        self._server = grpc.aio.server(
            interceptors=[*interceptors, RpcInterceptor(authenticator)],
            options=[
                # Fail loudly when the port is taken instead of silently sharing it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                # Clients reconnect at least every few minutes, and so look the name up again: behind
                # a headless Service, replicas the autoscaler added get their share of long-lived
                # channels. Calls in flight get the grace to finish.
                ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", _MAX_CONNECTION_AGE_GRACE_MS),
                ("grpc.server_max_unrequested_time_in_server", _MAX_UNREQUESTED_SECONDS),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        for binding in self._bindings:
            binding.register(self._server)
        names = [b.full_name for b in self._bindings]
        reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], self._server)
        self.port = 0

    async def start(self, address: str) -> int:
        """Binds `address` (port 0 picks a free one), starts serving, returns the bound port."""
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self._server.start()
        for name in ["", *(b.full_name for b in self._bindings)]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING at once, then lets calls in flight finish for up to `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


class Servable(Protocol):
    async def start(self, address: str) -> int: ...

    async def stop(self, grace: float) -> None: ...


async def serve_until_signal(server: Servable, address: str, grace: float) -> None:
    """Runs `server` on `address` until SIGTERM or SIGINT, then shuts it down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start(address)
    log.info("serving", address=address, port=port)
    await stop.wait()
    log.info("shutting down", grace_seconds=grace)
    await server.stop(grace)
    log.info("stopped")
