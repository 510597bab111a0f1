"""One OpenTelemetry trace from a member's first order to the new-customer journey's welcome:
tagging's RecordOrder, the feed entry it writes, the dispatcher's span for that entry, the
journey's workflow and activities, and the gRPC calls those make, exported over OTLP to a real
(local) collector. A first order recorded through an untraced server (no trace context in its
entry) begins its trace at the dispatcher's span instead.

The tracer provider is the test's own, installed with `tracing.configured` around what the test
builds (a tagging server, the worker's channels and Temporal client), never as OpenTelemetry's
global one: the suite's other servers stay untraced, and no later test pays for spans.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import structlog
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from temporalio.client import WorkflowHandle
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from runtime import app, logs, tracing
from runtime.channels import peer_channel
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, TAGGING_TASK_QUEUE, TENANT_ACME, tagging_definition, unique
from tests.otlp_collector import Collected, Collector, otlp_collector
from tests.tagging.facts_helpers import stamp
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.journey_helpers import activate, figures, member_in, phone_of, seed_member
from workflows import worker
from workflows.dispatcher import store as dispatch_store
from workflows.dispatcher.payloads import DispatcherInput
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys import client, store
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.payloads import Funnel
from workflows.journeys.shipped import NEW_CUSTOMER
from workflows.journeys.workflow import JourneyWorkflow

RECORD_ORDER = "/memberops.tagging.v1.TaggingService/RecordOrder"
GET_MEMBER = "/memberops.tagging.v1.TaggingService/GetMember"
SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


def daytime_zone() -> str:
    """A fixed-offset zone where it is early afternoon now, so the shipped journey's quiet hours
    (21:00-09:00, member-local) never defer the welcome this test waits for."""
    offset = (13 - dt.datetime.now(dt.UTC).hour + 12) % 24 - 12
    # POSIX-style names: Etc/GMT+11 is UTC-11.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("info", service="tests", stream=stream)
    try:
        yield stream
    finally:
        structlog.contextvars.clear_contextvars()
        logs.configure("info", service="tests")


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@asynccontextmanager
async def traced_stack(
    env: WorkflowEnvironment,
    settings: Settings,
    worker_settings: Settings,
    peer_ports: dict[str, int],
    journeys_db: Database,
    channel_settings: ChannelSettings,
) -> AsyncIterator[Settings]:
    """A tagging server of the test's own and a worker, both built while tracing is configured
    (the worker as `python -m workflows.worker` builds it: `connect`, traced channels), the
    worker's calls going to that tagging server; yields the worker's settings."""
    tagging_settings = dataclasses.replace(
        settings,
        temporal_address=env.client.service_client.config.target_host,
        temporal_task_queue=TAGGING_TASK_QUEUE,
    )
    tagging = await app.start(tagging_definition(peer_ports), tagging_settings, "127.0.0.1:0")
    traced = dataclasses.replace(
        worker_settings,
        tagging_address=f"127.0.0.1:{tagging.port}",
        temporal_address=env.client.service_client.config.target_host,
        temporal_namespace=env.client.namespace,
    )
    try:
        temporal = await worker.connect(traced, attempts=1)
        async with (
            peer_channel(traced.tagging_address) as tagging_channel,
            peer_channel(traced.audience_address) as audience_channel,
            peer_channel(traced.tasks_address) as tasks_channel,
        ):
            resources = worker.Resources(
                journeys_db, tagging_channel, audience_channel, tasks_channel, channel_settings
            )
            async with worker.build_worker(temporal, traced, resources):
                yield traced
    finally:
        await tagging.stop()


async def record_first_order(tagging_address: str, member_id: str, request_id: str) -> None:
    """The backend's call, untraced: the tagging server's span for it begins the trace."""
    line = facts_pb2.OrderLine(line_id="1", sku="tea-1", category="tea", quantity=1, unit_price_minor=9_800)
    order = facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=stamp(dt.datetime.now(dt.UTC)),
        amount_minor=9_800,
        lines=[line],
    )
    async with grpc.aio.insecure_channel(tagging_address) as channel:
        await tagging_service_pb2_grpc.TaggingServiceStub(channel).RecordOrder(
            tagging_service_pb2.RecordOrderRequest(order=order),
            metadata=(*ACME, ("x-request-id", request_id)),
        )


async def welcomed(handle: WorkflowHandle[JourneyWorkflow, Funnel]) -> Funnel | None:
    """The run's funnel once its welcome is sent (the send activity has returned by then)."""
    try:
        funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
    except RPCError:
        return None  # not started yet
    steps = {step.step_id for step in funnel.steps}
    return funnel if "welcome" in steps and figures(funnel, "welcome").get("sent") == 1 else None


def one(spans: list[Collected], name: str, kind: int | None = None) -> Collected:
    found = [s for s in spans if s.name == name and (kind is None or s.span.kind == kind)]
    assert len(found) == 1, f"{name}: {[(s.name, s.span.kind) for s in spans]}"
    return found[0]


async def test_one_trace_covers_a_first_order_through_to_the_welcome_send(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    worker_settings: Settings,
    peer_ports: dict[str, int],
    journeys_db: Database,
    channel_settings: ChannelSettings,
    provider: fakes.Provider,
    tagging: app.RunningService,
) -> None:
    # The shipped journey under a key of the test's own (tests share the tenant), live.
    definition = dataclasses.replace(NEW_CUSTOMER, key=unique("new-customer"))
    await store.put_definition(journeys_db, TENANT_ACME, definition)
    await activate(journeys_db, TENANT_ACME, definition.key)
    member_id = member_in(definition, holdout=False)
    # A member whose first order goes through the suite's untraced tagging server.
    untraced_member = member_in(definition, holdout=False)
    request_id = unique("req")
    workflow_id = client.workflow_id(TENANT_ACME, definition.key, member_id)
    untraced_run = dev_server_env.client.get_workflow_handle_for(
        JourneyWorkflow.run, client.workflow_id(TENANT_ACME, definition.key, untraced_member)
    )

    with otlp_collector() as collector, captured_logs() as lines:
        traces = tracing.provider_for("memberops-tests", collector.endpoint)
        try:
            with tracing.configured(traces):
                async with traced_stack(
                    dev_server_env, settings, worker_settings, peer_ports, journeys_db, channel_settings
                ) as traced:
                    await seed_member_at(traced, member_id)
                    await seed_member_at(traced, untraced_member)
                    async with dispatching(dev_server_env, traced, journeys_db, definition.key):
                        await record_first_order(traced.tagging_address, member_id, request_id)
                        await record_first_order(f"127.0.0.1:{tagging.port}", untraced_member, unique("req"))
                        handle = dev_server_env.client.get_workflow_handle_for(
                            JourneyWorkflow.run, workflow_id
                        )
                        for run in (handle, untraced_run):
                            await eventually(functools.partial(welcomed, run), "the welcome sent")
                            await run.terminate()
            traces.force_flush()
            spans = check_trace(collector)
            check_untraced_entry(collector, untraced_member)
        finally:
            traces.shutdown()

    assert len(provider.to(phone_of(member_id))) == 1 and len(provider.to(phone_of(untraced_member))) == 1
    # The log lines of the order's call and of the welcome's GetMember name the trace.
    record_line = [e for e in log_lines(lines) if e.get("request_id") == request_id]
    member_lines = [e for e in log_lines(lines) if str(e.get("request_id", "")).startswith(f"{workflow_id}/")]
    assert [(e["event"], e["trace_id"]) for e in record_line] == [("rpc", spans.trace_id)]
    assert member_lines and {e["trace_id"] for e in member_lines} == {spans.trace_id}
    assert spans.get_member_server in {e["span_id"] for e in member_lines}

    # A traced run's history replays with and without the interceptor (headers change no command).
    history = await handle.fetch_history()
    for interceptors in ([], [TracingInterceptor(TracerProvider().get_tracer("replay"))]):
        replayed = await Replayer(workflows=[JourneyWorkflow], interceptors=interceptors).replay_workflow(
            history, raise_on_replay_failure=False
        )
        assert replayed.replay_failure is None


async def seed_member_at(traced: Settings, member_id: str) -> None:
    async with grpc.aio.insecure_channel(traced.tagging_address) as channel:
        await seed_member(channel, member_id, time_zone=daytime_zone())


@asynccontextmanager
async def dispatching(
    env: WorkflowEnvironment, traced: Settings, db: Database, journey_key: str
) -> AsyncIterator[None]:
    """A dispatcher of the test's own for the journey, started as `python -m workflows.dispatcher`
    starts one (untraced) and following the feeds from their end; terminated afterwards."""
    handle = await env.client.start_workflow(
        DispatcherWorkflow.run,
        DispatcherInput(tenant_id=TENANT_ACME, journey_keys=(journey_key,), idle_seconds=2),
        id=unique("dispatcher"),
        task_queue=traced.temporal_task_queue,
    )

    async def following() -> bool:
        cursors = await dispatch_store.cursors(db, TENANT_ACME, handle.id)
        return len(cursors) == len(dispatch_store.FEEDS)

    try:
        await eventually(following, "the dispatcher following the feeds")
        yield
    finally:
        await handle.terminate()


@dataclasses.dataclass(frozen=True)
class Checked:
    trace_id: str
    get_member_server: str


def check_trace(collector: Collector) -> Checked:
    """The order's trace, from its RecordOrder span (the only traced one) to the welcome's calls,
    each span the child of the one that caused it."""
    record = one(collector.spans(), RECORD_ORDER, SERVER)
    assert record.parent_id == ""
    spans = collector.spans(record.trace_id)
    dispatch = one(spans, "dispatch first_order")
    start = one(spans, "StartWorkflow:Journey", CLIENT)
    run = one(spans, "RunWorkflow:Journey", SERVER)
    schedule_send = one(spans, "StartActivity:journeys.send", CLIENT)
    send = one(spans, "RunActivity:journeys.send", SERVER)
    call = one(spans, GET_MEMBER, CLIENT)
    served = one(spans, GET_MEMBER, SERVER)
    assert dispatch.parent_id == record.span_id
    assert start.parent_id == dispatch.span_id
    assert run.parent_id == start.span_id
    # The workflow's own spans hang off the context its start carried (temporalio's interceptor).
    assert schedule_send.parent_id == start.span_id
    assert send.parent_id == schedule_send.span_id
    assert call.parent_id == send.span_id
    assert served.parent_id == call.span_id
    enter = one(spans, "RunActivity:journeys.enter", SERVER)
    assert one(spans, "StartActivity:journeys.enter", CLIENT).span_id == enter.parent_id
    return Checked(record.trace_id, served.span_id)


def check_untraced_entry(collector: Collector, member_id: str) -> None:
    """An entry its writer did not trace begins a trace at the dispatcher's span, which the
    member's run continues."""
    (dispatch,) = [
        s
        for s in collector.spans()
        if s.name == "dispatch first_order"
        and any(
            a.key == "memberops.member_id" and a.value.string_value == member_id for a in s.span.attributes
        )
    ]
    assert dispatch.parent_id == ""
    spans = collector.spans(dispatch.trace_id)
    start = one(spans, "StartWorkflow:Journey", CLIENT)
    assert start.parent_id == dispatch.span_id
    assert one(spans, "RunActivity:journeys.send", SERVER)
