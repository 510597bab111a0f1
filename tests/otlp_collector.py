"""A real OTLP/gRPC trace collector for tests: OpenTelemetry's TraceService on a local port,
keeping every span exported to it.

It serves from threads of its own (a plain grpc server, not grpc.aio), so an exporter flushing
from the test's event loop thread never waits on that loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class Collected:
    """A span as received, with the service.name of the resource that sent it."""

    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    def attribute(self, key: str) -> str:
        """A string attribute of the span ("" when it has none of that key)."""
        return next((a.value.string_value for a in self.span.attributes if a.key == key), "")


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Collected] = []
        self.endpoint = ""

    def Export(  # noqa: N802 (the servicer's method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        found: list[Collected] = []
        for resource_spans in request.resource_spans:
            names = [
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            ]
            service = names[0] if names else ""
            for scope_spans in resource_spans.scope_spans:
                found.extend(Collected(service, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str | None = None) -> list[Collected]:
        """Every span received so far (of `trace_id` only, when given)."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """A collector listening on 127.0.0.1; its `endpoint` is what an exporter is pointed at."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield collector
    finally:
        server.stop(0)
