"""How a process is traced (runtime/tracing.py): not at all without a collector; with one, as
`observability.start` sets it up, under its name, without the traces polls would start.

A process configured with a collector is a child process: OpenTelemetry's global provider can be
set once per process, and the suite's must stay unset. The one trace from a first order to its
welcome is tests/workflows/test_tracing.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime import tracing
from runtime.config import Settings
from tests.otlp_collector import otlp_collector

ROOT = Path(__file__).resolve().parent.parent

# A process as `observability.start("tagging", settings)` leaves it, making spans through
# OpenTelemetry's global API: a health probe and a feed read each beginning a trace, a feed read
# inside a traced call, and a call of its own.
PROCESS = """
import sys
from opentelemetry import trace
from runtime import observability, tracing
from runtime.config import Settings

observability.start("tagging", Settings(otlp_endpoint=sys.argv[1]))
tracer = trace.get_tracer("test")
with tracer.start_as_current_span("/grpc.health.v1.Health/Check"):
    pass
with tracer.start_as_current_span("/memberops.tagging.v1.TaggingService/ReadFeed"):
    pass
with tracer.start_as_current_span("/memberops.tasks.v1.TasksService/EarnPoints"):
    with tracer.start_as_current_span("/memberops.tagging.v1.TaggingService/ReadFeed"):
        pass
provider = tracing.active()
assert provider is not None
provider.force_flush()
"""


def test_a_process_without_a_collector_wraps_nothing() -> None:
    """No endpoint, no provider: no interceptor anywhere and no trace context for feed entries."""
    tracing.start("tests", Settings(otlp_endpoint=""))
    assert tracing.active() is None
    assert tracing.server_interceptors() == []
    assert tracing.client_interceptors() == []
    assert tracing.temporal_interceptors() == []
    assert tracing.traceparent() is None


def run_process(endpoint: str, service_name: str | None) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    if service_name is not None:
        env["OTEL_SERVICE_NAME"] = service_name
    subprocess.run([sys.executable, "-c", PROCESS, endpoint], cwd=ROOT, env=env, check=True, timeout=60)


def test_a_process_with_a_collector_exports_its_calls_but_not_its_polls() -> None:
    with otlp_collector() as collector:
        run_process(collector.endpoint, None)
        spans = collector.spans()
        assert sorted((s.service, s.name) for s in spans) == [
            ("tagging", "/memberops.tagging.v1.TaggingService/ReadFeed"),
            ("tagging", "/memberops.tasks.v1.TasksService/EarnPoints"),
        ]
        (call,) = [s for s in spans if s.parent_id == ""]
        assert {s.trace_id for s in spans} == {call.trace_id}

        # OTEL_SERVICE_NAME names the process instead of its command.
        run_process(collector.endpoint, "tagging-eu")
        assert {s.service for s in collector.spans()} == {"tagging", "tagging-eu"}
