"""RebuildTagHistory and GetTagHistoryRebuild: the tagging service's side of a history rebuild.

The rebuild itself is a Temporal workflow (workflows/tag_history) that calls RecomputeTags(as_of)
back; this module checks the request, resolves its dimensions once (an empty list means the active
rule and model dimensions at the call, recorded in the workflow's input so the run never looks
them up again), starts the workflow under the id `tag-history/{tenant}/{request_id}`, and reads
where it stands from its memo and, once it ended, its result or failure.

A request id is one rebuild: a retry with the same arguments answers the same operation, with
other arguments ALREADY_EXISTS. Temporal's workflow id (reuse rejected) is what enforces it, for
as long as the namespace keeps the closed workflow (its retention period).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import tagging_service_pb2
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from runtime import checks
from runtime.db import Database
from runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Violations,
)
from runtime.temporal_client import LazyClient, answered
from services.tagging import catalog, definition_store
from workflows.tag_history.payloads import ARGUMENTS_KEY, MEMO_KEY, Progress, RebuildInput, workflow_id
from workflows.tag_history.workflow import TagHistoryRebuildWorkflow

NAME_PREFIX = "tagHistoryRebuilds/"
MAX_REQUEST_ID = 128
MIN_STEP = dt.timedelta(hours=1)
DEFAULT_STEP = dt.timedelta(days=1)
# Ten years of days: each instant costs a full recompute of every dimension named.
MAX_INSTANTS = 3660
TENANT = SearchAttributeKey.for_keyword("MemberOpsTenant")


@dataclasses.dataclass(frozen=True)
class Status:
    """What GetTagHistoryRebuild answers, from the workflow's memo and outcome."""

    request_id: str
    workflow_id: str
    rebuild: dict[str, Any]
    progress: Progress
    done: bool
    error: str


def checked(request: tagging_service_pb2.RebuildTagHistoryRequest, now: dt.datetime) -> RebuildInput:
    """The request checked against `now`, every violation named, as the rebuild it asks for (its
    tenant and dimensions not resolved yet): `end` unset, or past now by less than the clock skew,
    is now; the digest is of what the caller sent (an unset `end` digests as unset, so a retry of
    it matches)."""
    violations = Violations()
    if not request.request_id:
        violations.add("request_id", "is required")
    checks.text(request.request_id, MAX_REQUEST_ID, violations, "request_id")
    catalog.named_dimensions(list(request.dimensions), violations, "dimensions")
    start = checks.timestamp(request.start, violations, "start") if request.HasField("start") else None
    checks.past_time(start, now, violations, "start")
    end: dt.datetime | None = now
    if request.HasField("end"):
        end = checks.timestamp(request.end, violations, "end")
        if end is not None and end > now + checks.CLOCK_SKEW:
            violations.add("end", "must not be in the future")
            end = None
    step = _step(request, violations)
    if start is not None and end is not None:
        end = min(end, now)
        if start >= end:
            violations.add("end" if request.HasField("end") else "start", "start must be before end")
        elif step and RebuildInput("", "", [], start, end, step, "").instants() > MAX_INSTANTS:
            violations.add("step", f"makes more than {MAX_INSTANTS} instants from start to end")
    violations.raise_if_any()
    assert start is not None and end is not None
    digest = _digest(request, step)
    return RebuildInput("", request.request_id, list(request.dimensions), start, end, step, digest)


def _step(request: tagging_service_pb2.RebuildTagHistoryRequest, violations: Violations) -> int:
    if not request.HasField("step"):
        return int(DEFAULT_STEP.total_seconds())
    if request.step.nanos:
        violations.add("step", "must be whole seconds")
    if request.step.seconds < MIN_STEP.total_seconds():
        violations.add("step", f"must be at least {int(MIN_STEP.total_seconds())}s (an hour)")
        return 0
    return request.step.seconds


def _digest(request: tagging_service_pb2.RebuildTagHistoryRequest, step_seconds: int) -> str:
    end = request.end.ToJsonString() if request.HasField("end") else ""
    parts = ("\x1e".join(request.dimensions), request.start.ToJsonString(), end, str(step_seconds))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class HistoryRebuilds:
    def __init__(self, db: Database, temporal: LazyClient, task_queue: str) -> None:
        self._db = db
        self._temporal = temporal
        self._task_queue = task_queue

    async def start(self, tenant_id: str, asked: RebuildInput) -> Status:
        """The rebuild of `asked.request_id`, started unless it exists (ALREADY_EXISTS when it was
        started with other arguments). The existing one is looked up first, so a retry is answered
        even once its dimensions are retired."""
        client = await self._temporal.get()
        handle = _handle(client, tenant_id, asked.request_id)
        existing = await _described(handle)
        if existing is None:
            dimensions = await self._dimensions(tenant_id, asked.dimensions)
            rebuild = dataclasses.replace(asked, tenant_id=tenant_id, dimensions=dimensions)
            # WorkflowAlreadyStartedError: a concurrent call with the same request id started it.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await answered(start_workflow(client, self._task_queue, rebuild))
            existing = await _described(handle)
            assert existing is not None, "a workflow just started is described"
        status = await _status(handle, existing, asked.request_id)
        if status.rebuild.get("digest") != asked.digest:
            raise AlreadyExists(
                f"request_id {asked.request_id!r} started another rebuild "
                f"({NAME_PREFIX}{asked.request_id}) with other arguments"
            )
        return status

    async def get(self, tenant_id: str, request_id: str) -> Status:
        handle = _handle(await self._temporal.get(), tenant_id, request_id)
        described = await _described(handle)
        if described is None:
            raise NotFound(f"{NAME_PREFIX}{request_id} not found")
        return await _status(handle, described, request_id)

    async def _dimensions(self, tenant_id: str, named: list[str]) -> list[str]:
        """The dimensions to rebuild: those named (each active and evaluated by rules, NOT_FOUND or
        INVALID_ARGUMENT naming it otherwise), or every active one evaluated by rules."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await definition_store.list_definitions(conn, "", catalog.MAX_NAMED_DIMENSIONS, False)
        kinds = {row["dimension"]: catalog.from_body(row["body"]).kind for row in rows}
        if not named:
            chosen = sorted(d for d, kind in kinds.items() if kind in catalog.EVALUATED_KINDS)
            if not chosen:
                raise FailedPrecondition("the tenant has no active rule or model dimension to rebuild")
            return chosen
        chosen = []
        for dimension, i in catalog.named_dimensions(named, Violations(), "dimensions").items():
            if dimension not in kinds:
                raise NotFound(f"dimensions[{i}]: tagDefinitions/{dimension} not found or retired")
            if kinds[dimension] not in catalog.EVALUATED_KINDS:
                raise InvalidArgument.field(
                    f"dimensions[{i}]", f"{dimension} is set by operators, not by rules"
                )
            chosen.append(dimension)
        return chosen


def _handle(client: Client, tenant_id: str, request_id: str) -> WorkflowHandle[Any, Progress]:
    return client.get_workflow_handle_for(TagHistoryRebuildWorkflow.run, workflow_id(tenant_id, request_id))


async def start_workflow(client: Client, task_queue: str, rebuild: RebuildInput) -> None:
    await client.start_workflow(
        TagHistoryRebuildWorkflow.run,
        rebuild,
        id=workflow_id(rebuild.tenant_id, rebuild.request_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        memo=rebuild.memo(),
        search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT, rebuild.tenant_id)]),
    )


async def _described(handle: WorkflowHandle[Any, Progress]) -> WorkflowExecutionDescription | None:
    try:
        return await answered(handle.describe())
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _status(
    handle: WorkflowHandle[Any, Progress], described: WorkflowExecutionDescription, request_id: str
) -> Status:
    """Where the rebuild stands: a running one by its memo (kept by the workflow after each step,
    so no worker is needed to answer), a completed one by its result, a failed one with why."""
    arguments: dict[str, Any] = await described.memo_value(ARGUMENTS_KEY, {}, type_hint=dict)
    progress: Progress = await described.memo_value(MEMO_KEY, Progress(0, 0), type_hint=Progress)
    status = Status(request_id, described.id, arguments, progress, done=False, error="")
    if described.status == WorkflowExecutionStatus.RUNNING:
        return status
    try:
        final: Progress = await answered(handle.result())
    except WorkflowFailureError as failure:
        return dataclasses.replace(status, error=_why(failure))
    return dataclasses.replace(status, progress=final, done=True)


def _why(failure: WorkflowFailureError) -> str:
    """The innermost cause's message, e.g. the step's `RecomputeTags: NOT_FOUND: ...`."""
    messages = []
    cause: BaseException | None = failure.cause
    while cause is not None:
        messages.append(str(cause))
        cause = cause.__cause__
    return messages[-1] if messages else str(failure)


def to_proto(status: Status) -> tagging_service_pb2.TagHistoryRebuild:
    rebuild = status.rebuild
    reply = tagging_service_pb2.TagHistoryRebuild(
        name=f"{NAME_PREFIX}{status.request_id}",
        workflow_id=status.workflow_id,
        dimensions=list(rebuild.get("dimensions", [])),
        total_steps=status.progress.total_steps,
        done_steps=status.progress.done_steps,
        done=status.done,
        error=status.error,
    )
    if "start" in rebuild:
        reply.start.CopyFrom(_timestamp(dt.datetime.fromisoformat(rebuild["start"])))
        reply.end.CopyFrom(_timestamp(dt.datetime.fromisoformat(rebuild["end"])))
        reply.step.CopyFrom(Duration(seconds=int(rebuild["step_seconds"])))
    return reply


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def request_id_from_name(name: str) -> str:
    """The request id in `tagHistoryRebuilds/{request_id}`."""
    request_id = name.removeprefix(NAME_PREFIX)
    if not name.startswith(NAME_PREFIX) or not request_id or len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field(
            "name", "must be tagHistoryRebuilds/{request_id}, as RebuildTagHistory named it"
        )
    return request_id
