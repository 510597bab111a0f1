"""Prometheus' conventional gRPC server metrics (the names and labels of go-grpc-prometheus and
py-grpc-prometheus), from one grpc.aio server interceptor that runs outside authentication, so
calls it refuses are counted too.

It runs on every call, so the work per call is two counter increments and one histogram
observation on label children made once per method and status code: the wrapped handler and its
children are cached by method name, as the authenticating interceptor caches its own.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram, disable_created_metrics

# No `_created` series: a timestamp more per label child and per scrape, which nothing here reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
# go-grpc-prometheus' default buckets (Prometheus' DefBuckets).
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Response latency (seconds) of RPCs handled by the server, from start to the last message.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"


class _Method:
    """One method's label children; `handled` gets one child per status code as codes occur."""

    __slots__ = ("_labels", "handled", "handling", "started")

    def __init__(self, grpc_type: str, full_method: str) -> None:
        _, service, method = (
            full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "", full_method)
        )
        self._labels = (grpc_type, service, method)
        self.started = STARTED.labels(*self._labels)
        self.handling = HANDLING.labels(*self._labels)
        self.handled: dict[grpc.StatusCode, Any] = {}

    def done(self, code: grpc.StatusCode, started: float) -> None:
        self.handling.observe(time.perf_counter() - started)
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = HANDLED.labels(*self._labels, code.name)
        child.inc()


def _code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The call's status: the one set on the context (by abort or set_code), CANCELLED for a call
    cancelled under the handler, UNKNOWN for an exception grpc turns into UNKNOWN, else OK."""
    set_code = context.code()
    if isinstance(set_code, grpc.StatusCode):
        return set_code
    if error is None or isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _grpc_type(handler: Any) -> str:
    if handler.unary_unary:
        return UNARY
    if handler.unary_stream:
        return SERVER_STREAM
    if handler.stream_unary:
        return CLIENT_STREAM
    return BIDI_STREAM


class _Call:
    """One call's count and time; its status read when it ends (a class, not a generator-based
    context manager: this runs on every call)."""

    __slots__ = ("_context", "_m", "_started")

    def __init__(self, m: _Method, context: Any) -> None:
        self._m, self._context = m, context

    def __enter__(self) -> None:
        self._m.started.inc()
        self._started = time.perf_counter()

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        self._m.done(_code(self._context, error), self._started)


def _measured(behaviour: Any, m: _Method) -> Any:
    """`behaviour` (a coroutine function, or an async generator function for a streamed answer)
    wrapped to count and time each call, keeping its kind."""
    if inspect.isasyncgenfunction(behaviour):

        async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
            with _Call(m, context):
                async for item in behaviour(request, context):
                    yield item

        return streamed

    async def answered(request: Any, context: Any) -> Any:
        with _Call(m, context):
            return await behaviour(request, context)

    return answered


_MAKE = {
    UNARY: grpc.unary_unary_rpc_method_handler,
    SERVER_STREAM: grpc.unary_stream_rpc_method_handler,
    CLIENT_STREAM: grpc.stream_unary_rpc_method_handler,
    BIDI_STREAM: grpc.stream_stream_rpc_method_handler,
}
_BEHAVIOUR = {
    UNARY: "unary_unary",
    SERVER_STREAM: "unary_stream",
    CLIENT_STREAM: "stream_unary",
    BIDI_STREAM: "stream_stream",
}


def measure(handler: grpc.RpcMethodHandler[Any, Any], full_method: str) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler of `full_method` ("/package.Service/Method") counting and timing its calls."""
    grpc_type = _grpc_type(handler)
    behaviour = _measured(getattr(handler, _BEHAVIOUR[grpc_type]), _Method(grpc_type, full_method))
    make: Callable[..., grpc.RpcMethodHandler[Any, Any]] = _MAKE[grpc_type]
    return make(behaviour, handler.request_deserializer, handler.response_serializer)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call the server handles (methods it does not know are not counted:
    grpc answers them UNIMPLEMENTED before any handler)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped[method] = measure(handler, method)
        return wrapped
