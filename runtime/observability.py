"""What every process adds so that operators can see it: Prometheus metrics and OpenTelemetry
traces (issue 21). One place that `runtime.app` (the four services) and `workflows.worker` call,
so a service's `server.py` wires nothing of it."""

from __future__ import annotations

import grpc

from runtime import grpc_metrics, metrics, tracing
from runtime.config import Settings


def server_interceptors(service: str) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors every gRPC server of `service` runs outside authentication."""
    # Tracing first (outermost): what the others do and log happens inside the call's span.
    return [*tracing.server_interceptors(), grpc_metrics.MetricsInterceptor()]


def start(process: str, settings: Settings) -> None:
    """Called once per process before its event loop starts (serving /metrics, the tracer)."""
    tracing.start(process, settings)
    metrics.start(settings)
