"""OpenTelemetry traces: one trace from a gRPC call through tagging's feed, the dispatcher and a
journey's workflow to the calls its activities make (issue 21).

A process traces only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: `start` then builds one tracer
provider exporting over OTLP/gRPC in batches, and the servers, channels and Temporal client built
afterwards get their interceptors from here. Without it nothing is wrapped: no interceptor, no
span, and a feed entry written outside a traced call stores no trace context, so tracing costs
nothing where it is off.

The provider is this module's, handed to each interceptor explicitly; `start` also makes it
OpenTelemetry's global one (settable once per process) for any other library. Tests install a
provider of their own around what they build with `configured`, and never touch the global one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from runtime.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from temporalio.contrib.opentelemetry import TracingInterceptor

# Root spans of calls that poll rather than act: health probes, feed reads, the dispatcher's
# rounds and reports. Recording them would bury the traces worth reading under one trace per poll
# (a dispatcher reads two feeds four times a second per tenant). A poll made inside a traced call
# is still recorded with it; these are dropped only where they would start a trace.
POLLS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/memberops.tagging.v1.TaggingService/ReadFeed",
        "/memberops.tagging.v1.TaggingService/StreamFeed",
        "/memberops.audience.v1.AudienceService/ReadAudienceFeed",
        "/memberops.tasks.v1.TasksService/ReadTasksFeed",
        "RunActivity:dispatcher.dispatch",
        "RunActivity:dispatcher.report",
    }
)


class _Process:
    """What this process traces with (one per process; `configured` swaps it in tests)."""

    provider: TracerProvider | None = None


_process = _Process()
_PROPAGATOR = TraceContextTextMapPropagator()


def provider_for(service: str, endpoint: str) -> TracerProvider:
    """A provider naming `service` that exports to the OTLP/gRPC collector at `endpoint`
    (`http://host:4317`: plaintext; `https://`: TLS) in batches, off the event loop."""
    # Imported here: a process that does not trace does not load the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service}), sampler=ParentBased(root=_quiet_roots())
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def _quiet_roots() -> Any:
    """A root sampler that records every trace except those a poll (POLLS) would start."""
    from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415
        ALWAYS_ON,
        Decision,
        Sampler,
        SamplingResult,
    )

    class QuietRoots(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: trace.SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[trace.Link] | None = None,
            trace_state: trace.TraceState | None = None,
        ) -> SamplingResult:
            if name in POLLS:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "QuietRoots"

    return QuietRoots()


def start(process: str, settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """Traces this process when `settings.otlp_endpoint` is set, as OTEL_SERVICE_NAME or else
    `process`. Called once, before anything that traces is built."""
    if not settings.otlp_endpoint or _process.provider is not None:
        return
    env = os.environ if env is None else env
    provider = provider_for(env.get("OTEL_SERVICE_NAME") or process, settings.otlp_endpoint)
    _process.provider = provider
    trace.set_tracer_provider(provider)


def active() -> TracerProvider | None:
    """The provider this process traces with; None when it does not trace."""
    return _process.provider


@contextmanager
def configured(provider: TracerProvider) -> Iterator[None]:
    """Traces what is built inside with `provider`, then returns to what was (tests)."""
    before, _process.provider = _process.provider, provider
    try:
        yield
    finally:
        _process.provider = before


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """A server span per call, continuing the caller's trace from its `traceparent` metadata."""
    provider = _process.provider
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return [interceptor]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """A client span per outgoing call, its context sent along as `traceparent` metadata."""
    provider = _process.provider
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors  # noqa: PLC0415

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=provider
    )
    return interceptors


def temporal_interceptors() -> list[TracingInterceptor]:
    """For the Temporal client that starts and signals workflows, and the worker built on it:
    starts and signals carry the caller's trace in a header, and workflows and activities
    continue it (workflow spans are created only outside replay, so replay is unchanged)."""
    provider = _process.provider
    if provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor  # noqa: PLC0415

    return [TracingInterceptor(provider.get_tracer("memberops.temporal"))]


def traceparent() -> str | None:
    """The current span's context in W3C `traceparent` form (what a feed entry keeps, so its
    consumers continue the trace of the call that wrote it); None outside a traced call."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextmanager
def continued(parent: str | None, name: str, attributes: Attributes = None) -> Iterator[None]:
    """A span `name` for work done on behalf of what wrote `parent` (a `traceparent`): its child,
    in that trace, current inside, so the calls made there carry it on. Without a parent (an
    entry its writer did not trace) it begins a trace of its own, whatever span is current (a
    poll's, not recorded); without tracing, nothing."""
    provider = _process.provider
    if provider is None:
        yield
        return
    # An empty context where there is no parent (or an unreadable one): a root, not a child.
    context = _PROPAGATOR.extract({"traceparent": parent} if parent else {}, context=Context())
    tracer = provider.get_tracer("memberops")
    with tracer.start_as_current_span(name, context=context, attributes=attributes):
        yield
