"""RebuildTagHistory: checked requests, one operation per request id, progress readable with no
worker running, every dimension recomputed at every instant in increasing order (across runs that
continue as new and across a worker restart), and a failed step reported as the operation's error.

Each test has a tenant and a tagging server of its own (so its full recomputes see only its own
members, and its rebuilds rewrite no other test's history), started workflows go to the test's
task queue on the dev server, and the worker's activities call that tagging server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.tagging import history_rebuilds
from services.tagging import server as tagging_server
from tests.conftest import ACME, bearer, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_order
from tests.tagging.rule_builders import ALWAYS, Fn, Op, agg, cond
from tests.waiting import eventually
from tests.workflows.journey_helpers import HISTORIES
from workflows.tag_history.payloads import Progress, RebuildInput, RecomputeAt, workflow_id
from workflows.tag_history.workflow import TagHistoryRebuildWorkflow
from workflows.worker import Resources, build_worker

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

DAY = dt.timedelta(days=1)
RULES = ["loyalty", "purchase_frequency"]


@dataclasses.dataclass(frozen=True)
class Rebuilds:
    """A tenant of the test's own, its tagging server, and what a worker for it needs."""

    tenant_id: str
    metadata: tuple[tuple[str, str], ...]
    stub: Stub
    settings: Settings
    resources: Resources
    client: Client

    def worker(self) -> Any:
        return build_worker(self.client, self.settings, self.resources)

    def handle(self, request_id: str) -> WorkflowHandle[Any, Progress]:
        return self.client.get_workflow_handle_for(
            TagHistoryRebuildWorkflow.run, workflow_id(self.tenant_id, request_id)
        )

    async def rebuild(self, **fields: Any) -> tagging_service_pb2.TagHistoryRebuild:
        return await self.stub.RebuildTagHistory(
            tagging_service_pb2.RebuildTagHistoryRequest(**fields), metadata=self.metadata
        )

    async def status(self, request_id: str) -> tagging_service_pb2.TagHistoryRebuild:
        request = tagging_service_pb2.GetTagHistoryRebuildRequest(name=f"tagHistoryRebuilds/{request_id}")
        return await self.stub.GetTagHistoryRebuild(request, metadata=self.metadata)

    async def finished(self, request_id: str) -> tagging_service_pb2.TagHistoryRebuild:
        async def ended() -> tagging_service_pb2.TagHistoryRebuild | None:
            status = await self.status(request_id)
            return status if status.done or status.error else None

        return await eventually(ended, f"rebuild {request_id} ended")


@pytest.fixture
async def rebuilds(
    worker_settings: Settings, resources: Resources, dev_server_env: WorkflowEnvironment
) -> AsyncIterator[Rebuilds]:
    tenant_id = f"rb{uuid.uuid4().hex[:10]}"
    token = f"test-token-{tenant_id}-0123456789"
    settings = dataclasses.replace(
        worker_settings,
        auth_tokens={**worker_settings.auth_tokens, token: tenant_id},
        temporal_address=dev_server_env.client.service_client.config.target_host,
    )

    def wire(db: Any, tenants: frozenset[str], served: Settings) -> app.Wiring:
        return tagging_server.wire(db, frozenset({tenant_id}), served)

    definition = dataclasses.replace(tagging_server.DEFINITION, wire=wire)
    running = await app.start(definition, settings, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Rebuilds(
                tenant_id,
                bearer(token),
                tagging_service_pb2_grpc.TaggingServiceStub(channel),
                settings,
                dataclasses.replace(resources, tagging=channel),
                dev_server_env.client,
            )
    finally:
        await running.stop()


def stamp(value: dt.datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def midnight(days_ago: int) -> dt.datetime:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - days_ago * DAY


async def runs(client: Client, workflow_id_: str) -> list[WorkflowHistory]:
    """The histories of every run of the workflow, first run first (each names the run it
    continued)."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = (await client.get_workflow_handle(workflow_id_).describe()).run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id_, run_id=run_id).fetch_history()
        histories.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
    return histories


async def steps_run(client: Client, workflow_id_: str) -> list[RecomputeAt]:
    """Every step the rebuild's runs scheduled, in the order they were scheduled, run after run."""
    steps: list[RecomputeAt] = []
    for history in await runs(client, workflow_id_):
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                payloads = event.activity_task_scheduled_event_attributes.input.payloads
                (step,) = await client.data_converter.decode(payloads, [RecomputeAt])
                steps.append(step)
    return steps


def in_order(steps: list[RecomputeAt], dimensions: list[str], instants: list[dt.datetime]) -> bool:
    """Each dimension recomputed once at each instant, earliest first."""
    return all([s.as_of for s in steps if s.dimension == d] == instants for d in dimensions)


async def test_a_rebuild_recomputes_each_dimension_at_each_instant_in_order(rebuilds: Rebuilds) -> None:
    request_id = unique("rebuild")
    start, end = midnight(5), midnight(1)
    started = await rebuilds.rebuild(
        request_id=request_id, dimensions=RULES, start=stamp(start), end=stamp(end)
    )
    # Readable with no worker running: the memo the service started it with.
    assert (started.name, started.workflow_id) == (
        f"tagHistoryRebuilds/{request_id}",
        f"tag-history/{rebuilds.tenant_id}/{request_id}",
    )
    assert list(started.dimensions) == RULES and started.step.seconds == DAY.total_seconds()
    assert (started.total_steps, started.done_steps, started.done) == (8, 0, False)
    async with rebuilds.worker():
        finished = await rebuilds.finished(request_id)
        steps = await steps_run(rebuilds.client, workflow_id(rebuilds.tenant_id, request_id))
    assert (finished.total_steps, finished.done_steps, finished.done, finished.error) == (8, 8, True, "")
    assert finished.start.ToDatetime(dt.UTC) == start and finished.end.ToDatetime(dt.UTC) == end
    assert {s.tenant_id for s in steps} == {rebuilds.tenant_id}
    assert in_order(steps, RULES, [start + i * DAY for i in range(4)]) and len(steps) == 8


async def test_empty_dimensions_mean_every_active_rule_and_model_dimension_at_the_call(
    rebuilds: Rebuilds,
) -> None:
    request_id = unique("rebuild")
    started = await rebuilds.rebuild(request_id=request_id, start=stamp(midnight(1)))
    listed = await rebuilds.stub.ListTagDefinitions(
        tagging_service_pb2.ListTagDefinitionsRequest(page_size=1000), metadata=rebuilds.metadata
    )
    evaluated = {tags_pb2.TAG_KIND_FACT, tags_pb2.TAG_KIND_RULE, tags_pb2.TAG_KIND_MODEL}
    expected = sorted(d.dimension for d in listed.tag_definitions if d.kind in evaluated)
    assert list(started.dimensions) == expected and len(expected) >= 10
    # `end` unset is now: two instants (yesterday's midnight and today's) for every dimension.
    assert started.total_steps == 2 * len(expected)


async def test_the_same_request_id_is_the_same_rebuild_and_other_arguments_are_refused(
    rebuilds: Rebuilds,
) -> None:
    request_id = unique("rebuild")
    arguments: dict[str, Any] = {"request_id": request_id, "dimensions": RULES, "start": stamp(midnight(3))}
    first = await rebuilds.rebuild(**arguments)
    again = await rebuilds.rebuild(**arguments)  # end unset both times: the same arguments
    assert again == first
    run_ids = {(await rebuilds.handle(request_id).describe()).run_id}
    for other in (
        {"start": stamp(midnight(4))},
        {"dimensions": ["loyalty"]},
        {"step": Duration(seconds=7200)},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rebuilds.rebuild(**{**arguments, **other})
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert request_id in (refused.value.details() or "")
    assert {(await rebuilds.handle(request_id).describe()).run_id} == run_ids
    # Another tenant's request id of the same name is not this one.
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        name = tagging_service_pb2.GetTagHistoryRebuildRequest(name=first.name)
        await rebuilds.stub.GetTagHistoryRebuild(name, metadata=ACME)
    assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND
    async with rebuilds.worker():
        finished = await rebuilds.finished(request_id)
    assert finished.done and await rebuilds.rebuild(**arguments) == dataclasses_replace_done(first, finished)


def dataclasses_replace_done(
    first: tagging_service_pb2.TagHistoryRebuild, finished: tagging_service_pb2.TagHistoryRebuild
) -> tagging_service_pb2.TagHistoryRebuild:
    """`first` as it reads once done: a retry after the end answers the finished operation."""
    done = tagging_service_pb2.TagHistoryRebuild()
    done.CopyFrom(first)
    done.done_steps, done.done = finished.done_steps, True
    return done


async def test_a_long_range_continues_as_new_and_a_restarted_worker_resumes_in_order(
    rebuilds: Rebuilds,
) -> None:
    """Three steps a run over 2 dimensions x 6 instants: the runs carry each dimension's position,
    and a worker stopped midway leaves the progress where it was for the next worker to finish."""
    request_id = unique("rebuild")
    start = midnight(7)
    rebuild = RebuildInput(
        rebuilds.tenant_id,
        request_id,
        RULES,
        start,
        midnight(1),
        int(DAY.total_seconds()),
        "d",
        steps_per_run=3,
    )
    await history_rebuilds.start_workflow(rebuilds.client, rebuilds.settings.temporal_task_queue, rebuild)
    assert (await rebuilds.status(request_id)).done_steps == 0

    async def past(steps: int) -> tagging_service_pb2.TagHistoryRebuild | None:
        status = await rebuilds.status(request_id)
        return status if status.done_steps >= steps else None

    async with rebuilds.worker():
        midway = await eventually(lambda: past(4), "four steps done")
    stopped = await rebuilds.status(request_id)
    assert stopped.done_steps >= 4 and stopped.total_steps == 12 and not stopped.done
    async with rebuilds.worker():
        finished = await rebuilds.finished(request_id)
    histories = await runs(rebuilds.client, workflow_id(rebuilds.tenant_id, request_id))
    if os.environ.get("MEMBEROPS_RECORD_HISTORIES"):  # see tests/workflows/test_replay.py
        (HISTORIES / "tag_history_continued_as_new.json").write_text(histories[0].to_json())
        (HISTORIES / "tag_history_last_run.json").write_text(histories[-1].to_json())
    steps = await steps_run(rebuilds.client, workflow_id(rebuilds.tenant_id, request_id))
    assert midway.done_steps >= 4
    assert (finished.done_steps, finished.done, finished.error) == (12, True, "")
    # The last run still answers the arguments (each run carries them in its memo).
    assert list(finished.dimensions) == RULES and finished.start.ToDatetime(dt.UTC) == start
    assert in_order(steps, RULES, [start + i * DAY for i in range(6)])
    assert len(histories) >= 4  # 12 steps, at most 3 a run


async def test_a_step_that_cannot_succeed_fails_the_rebuild_with_why(rebuilds: Rebuilds) -> None:
    """A dimension retired after the rebuild started: its recompute is NOT_FOUND, not retried."""
    name = f"freq_{uuid.uuid4().hex[:8]}"
    definition = tags_pb2.TagDefinition(
        dimension=name,
        display_name="Anything",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[tags_pb2.TagValue(value="all", rule=ALWAYS)],
    )
    await rebuilds.stub.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition), metadata=rebuilds.metadata
    )
    request_id = unique("rebuild")
    await rebuilds.rebuild(request_id=request_id, dimensions=[name], start=stamp(midnight(2)))
    await rebuilds.stub.RetireTagDefinition(
        tagging_service_pb2.RetireTagDefinitionRequest(name=f"tagDefinitions/{name}"),
        metadata=rebuilds.metadata,
    )
    async with rebuilds.worker():
        failed = await rebuilds.finished(request_id)
    assert not failed.done and failed.done_steps == 0
    assert "NOT_FOUND" in failed.error and name in failed.error


def invalid(**fields: Any) -> tagging_service_pb2.RebuildTagHistoryRequest:
    base: dict[str, Any] = {
        "request_id": unique("rebuild"),
        "dimensions": ["loyalty"],
        "start": stamp(midnight(3)),
    }
    return tagging_service_pb2.RebuildTagHistoryRequest(**{**base, **fields})


NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (invalid(request_id=""), "request_id"),
        (invalid(request_id="x" * 129), "request_id"),
        (tagging_service_pb2.RebuildTagHistoryRequest(request_id="r"), "start"),
        (invalid(start=stamp(NOW + 2 * DAY)), "start"),
        (invalid(start=stamp(dt.datetime(1999, 12, 31, tzinfo=dt.UTC))), "start"),
        (invalid(end=stamp(NOW + DAY)), "end"),
        (invalid(end=stamp(midnight(4))), "end"),
        (invalid(step=Duration(seconds=1800)), "step"),
        (invalid(step=Duration(seconds=3600, nanos=5)), "step"),
        (invalid(step=Duration(seconds=-86400)), "step"),
        (invalid(start=stamp(midnight(200)), step=Duration(seconds=3600)), "step"),
        (invalid(dimensions=["Not A Name"]), "dimensions[0]"),
    ],
)
async def test_a_bad_request_names_its_field(
    tagging_stub: Stub, request_: tagging_service_pb2.RebuildTagHistoryRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.RebuildTagHistory(request_, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


def lifecycle_at(t: dt.datetime, registered: dt.datetime, paid: list[dt.datetime]) -> str:
    """The built-in lifecycle (new 30 days, active 90, churned from 180) as of `t`."""
    bought = [p for p in paid if p <= t]
    if (len(bought) == 1 and t - bought[0] < 30 * DAY) or (not bought and t - registered < 30 * DAY):
        return "new"
    if not bought:
        return ""
    since = t - max(bought)
    return "active" if since < 90 * DAY else "silent" if since < 180 * DAY else "churned"


def recency_at(t: dt.datetime, registered: dt.datetime, paid: list[dt.datetime]) -> str:
    """RECENCY as of `t`: an order in the last 30 days, else in the last 365."""
    ages = [t - p for p in paid if p <= t]
    return (
        "recent" if any(a < 30 * DAY for a in ages) else "lapsed" if any(a < 365 * DAY for a in ages) else ""
    )


RECENCY = tags_pb2.TagDefinition(
    dimension="recency",
    display_name="Bought lately",
    category=tags_pb2.TAG_CATEGORY_TRANSACTION,
    kind=tags_pb2.TAG_KIND_RULE,
    refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
    cardinality=tags_pb2.CARDINALITY_SINGLE,
    values=[
        tags_pb2.TagValue(
            value="recent", rule=cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 30), Op.OPERATOR_GE, 1)
        ),
        tags_pb2.TagValue(
            value="lapsed", rule=cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 365), Op.OPERATOR_GE, 1)
        ),
    ],
)
EXPECTED = {"lifecycle": lifecycle_at, "recency": recency_at}


async def held(
    rebuilds: Rebuilds, member_id: str, as_of: dt.datetime | None, known_at: Any = None
) -> dict[str, str]:
    """The member's lifecycle and recency values (as of, as believed at)."""
    request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
    if as_of is not None:
        request.as_of.CopyFrom(stamp(as_of))
    if known_at is not None:
        request.known_at.CopyFrom(stamp(known_at))
    reply = await rebuilds.stub.GetMemberTags(request, metadata=rebuilds.metadata)
    values = {t.dimension: t.value for t in reply.tags}
    return {dimension: values.get(dimension, "") for dimension in EXPECTED}


async def test_a_daily_rebuild_writes_the_history_the_rules_give_and_keeps_the_old_belief(
    rebuilds: Rebuilds, db: Database
) -> None:
    """A buys 25 and 10 days ago, B 200 days ago, C 50 days ago; RECENCY is defined after those
    facts, so its past (C recent until 20 days ago, then lapsed) is history nobody wrote yet.
    After a daily rebuild of the last 40 days of both dimensions, GetMemberTags(as_of) answers
    each day's values; known_at before the rebuild answers what was believed then."""
    hours = dt.timedelta(hours=6)
    facts = {
        unique("a"): (midnight(200), [midnight(25) + hours, midnight(10) + hours]),
        unique("b"): (midnight(300), [midnight(200) + hours]),
        unique("c"): (midnight(300), [midnight(50) + hours]),
    }
    for member_id, (registered, paid) in facts.items():
        profile = member_pb2.Profile(register_time=stamp(registered))
        upsert = tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(member_id=member_id, profile=profile)
        )
        await rebuilds.stub.UpsertMember(upsert, metadata=rebuilds.metadata)
        for i, when in enumerate(paid):
            order = an_order(member_id, f"{member_id}-{i}", paid_time=stamp(when))
            record = tagging_service_pb2.RecordOrderRequest(order=order)
            await rebuilds.stub.RecordOrder(record, metadata=rebuilds.metadata)
    create = tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=RECENCY)
    await rebuilds.stub.CreateTagDefinition(create, metadata=rebuilds.metadata)
    recompute = tagging_service_pb2.RecomputeTagsRequest(dimensions=["recency"])
    await rebuilds.stub.RecomputeTags(recompute, metadata=rebuilds.metadata)

    def expected_at(member_id: str, t: dt.datetime) -> dict[str, str]:
        return {dimension: value_at(t, *facts[member_id]) for dimension, value_at in EXPECTED.items()}

    async def present() -> bool:
        now = dt.datetime.now(dt.UTC)
        return all([await held(rebuilds, m, None) == expected_at(m, now) for m in facts])

    async def corrected() -> bool:
        """The service's own correction of back-dated facts has run (it rewrites their history
        in the background): what is believed before the rebuild no longer moves."""
        async with db.transaction(rebuilds.tenant_id, readonly=True) as conn:
            return not await conn.fetchval("SELECT count(*) FROM tagging.history_corrections")

    await eventually(present, "the present lifecycle refreshed")
    await eventually(corrected, "the back-dated orders' history corrected")
    start = midnight(40)
    probes = [start + i * DAY + dt.timedelta(hours=1) for i in range(41)]
    probes = [p for p in probes if p < dt.datetime.now(dt.UTC)]
    believed = {(m, p): await held(rebuilds, m, p) for m in facts for p in probes}
    known_at = dt.datetime.now(dt.UTC)
    request_id = unique("rebuild")
    await rebuilds.rebuild(request_id=request_id, dimensions=list(EXPECTED), start=stamp(start))
    async with rebuilds.worker():
        finished = await rebuilds.finished(request_id)
    assert (finished.done, finished.error, finished.done_steps) == (True, "", finished.total_steps)
    rebuilt = {(m, p): await held(rebuilds, m, p) for m in facts for p in probes}
    assert rebuilt == {(m, p): expected_at(m, p) for m in facts for p in probes}
    old = {(m, p): await held(rebuilds, m, p, known_at) for m in facts for p in probes}
    assert old == believed
    # The service corrected lifecycle's past for the back-dated orders itself; RECENCY had no
    # past until the rebuild wrote it.
    changed = {d for key in old for d in EXPECTED if old[key][d] != rebuilt[key][d]}
    assert changed == {"recency"}
    assert await present()
