"""The cohort workflow's activities: enrol a snapshot page, advance a batch, apply member events.

Each call carries the workflow's call number (`seq`). What a call does is committed together with
its row in `journeys.cohort_batches`, so a retried call finds it: a finished call answers what it
did, a call that had claimed sends goes on delivering them. The time a call acts at is the Temporal
server's start time of the attempt, as for member journeys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import TypeVar
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import field_mask_pb2
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import tagging_service_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime import metrics
from runtime.buckets import BUCKETS
from runtime.db import Database
from runtime.errors import InvalidArgument, NotFound
from workflows import service_calls
from workflows.journeys import local_time, states
from workflows.journeys import steps as step_kinds
from workflows.journeys import store as journeys_store
from workflows.journeys.activities import holdout_salt, now, recipient_of
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.cohort import delivery, store
from workflows.journeys.cohort.delivery import Claim
from workflows.journeys.cohort.payloads import (
    BatchOutcome,
    BatchRequest,
    Opened,
    OpenRequest,
    cohort_workflow_id,
)
from workflows.journeys.definition import (
    PROFILE_FIELDS,
    JourneyDefinition,
    Step,
    duration,
    validate_broadcast,
)
from workflows.journeys.payloads import matches
from workflows.journeys.sending import Recipient, Sender

_T = TypeVar("_T")

# What a batch reads of a member: contact data, consent, and the profile fields templates use.
READ_MASK = field_mask_pb2.FieldMask(
    paths=["contact", *(f"profile.{name}" for name in PROFILE_FIELDS if name != "member_id")]
)
# Members per BatchGetMembers call (a reply stays well under gRPC's 4 MiB).
MEMBERS_PER_CALL = 2000
# Members per AddMemberTags call.
TAGS_PER_CALL = 10_000
# Parts of a batch in flight at once: one part's database work overlaps another's tagging call,
# provider request and Python work.
PARTS_AT_ONCE = 3


async def _limited(work: Sequence[Awaitable[_T]], at_once: int) -> list[_T | BaseException]:
    """Runs the awaitables, `at_once` at a time; every one runs to its end, failures are returned."""
    gate = asyncio.Semaphore(at_once)

    async def one(item: Awaitable[_T]) -> _T:
        async with gate:
            return await item

    return await asyncio.gather(*(one(item) for item in work), return_exceptions=True)


def entered(batch: store.Batch) -> int:
    return batch.figures.get("entered:treated", 0) + batch.figures.get("entered:holdout", 0)


def invalid(error: InvalidArgument) -> ApplicationError:
    return ApplicationError(
        error.message,
        [{"field": v.field, "description": v.description} for v in error.violations],
        type="INVALID_ARGUMENT",
        non_retryable=True,
    )


class CohortActivities(service_calls.ServiceActivities):
    def __init__(
        self,
        db: Database,
        services: service_calls.Services,
        sender: Sender,
        channel_settings: ChannelSettings,
    ) -> None:
        super().__init__(db, services)
        self._delivery = delivery.Delivery(db, sender, channel_settings)
        self._sender = sender
        self._settings = channel_settings
        # Versions never change, so what was read once serves every later call.
        self._definitions: dict[tuple[str, str, int], JourneyDefinition] = {}

    def all(self) -> list[object]:
        return [self.open, self.load, self.advance, self.apply_events, self.finish]

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return service_calls.metadata(self._token_for_tenant, tenant_id)

    async def _definition(self, tenant_id: str, key: str, version: int) -> JourneyDefinition:
        cached = self._definitions.get((tenant_id, key, version))
        if cached is None:
            cached = (await journeys_store.get_definition(self._db, tenant_id, key, version)).definition
            self._definitions[(tenant_id, key, version)] = cached
        return cached

    async def _cohort(self, tenant_id: str, cohort_id: int) -> tuple[store.Cohort, JourneyDefinition]:
        async with store.transaction(self._db, tenant_id, readonly=True) as conn:
            cohort = await store.get_cohort(conn, cohort_id)
        if cohort is None:
            raise ApplicationError(f"cohort {cohort_id} does not exist", type="NOT_FOUND", non_retryable=True)
        return cohort, await self._definition(tenant_id, cohort.journey_key, cohort.version)

    # --- opening ---------------------------------------------------------------------------------

    @activity.defn(name="cohorts.open")
    async def open(self, request: OpenRequest) -> Opened:
        """Checks the definition and the snapshot, then takes the cohort's row for this workflow."""
        try:
            if request.version:
                stored = await journeys_store.get_definition(
                    self._db, request.tenant_id, request.journey_key, request.version
                )
            else:
                stored = await states.live_definition(self._db, request.tenant_id, request.journey_key)
            validate_broadcast(stored.definition)
        except NotFound as error:
            raise ApplicationError(error.message, type="NOT_FOUND", non_retryable=True) from error
        except InvalidArgument as error:
            raise invalid(error) from error
        definition = stored.definition
        broadcast = definition.entry.broadcast
        assert broadcast is not None
        name = request.snapshot or broadcast.snapshot
        if not name.startswith("snapshots/") or len(name) == len("snapshots/"):
            raise invalid(InvalidArgument.field("snapshot", "must be snapshots/{snapshot_id}"))
        if broadcast.snapshot and name != broadcast.snapshot:
            raise invalid(
                InvalidArgument.field("snapshot", f"the journey broadcasts to {broadcast.snapshot}")
            )
        snapshot = await self._snapshot(request.tenant_id, name)
        if broadcast.audience and snapshot.audience != f"audiences/{broadcast.audience}":
            raise invalid(
                InvalidArgument.field(
                    "snapshot", f"is a snapshot of {snapshot.audience}, not of {broadcast.audience}"
                )
            )
        snapshot_id = name.removeprefix("snapshots/")
        expected = cohort_workflow_id(definition.key, snapshot_id)
        if request.workflow_id != expected:
            return Opened(
                accepted=False, reason=f"a broadcast of this journey and snapshot runs as {expected}"
            )
        opened = await store.open_cohort(
            self._db,
            request.tenant_id,
            definition.key,
            stored.version,
            snapshot_id,
            request.workflow_id,
            request.first_run_id,
            now(),
        )
        if isinstance(opened, str):
            return Opened(accepted=False, reason=opened)
        cohort, mine = opened
        if not mine:
            return Opened(
                accepted=False, reason=f"this snapshot was broadcast already (run {cohort.first_run_id})"
            )
        return Opened(
            accepted=True,
            cohort_id=cohort.cohort_id,
            version=cohort.version,
            snapshot_id=snapshot_id,
            step_ids=tuple(step.id for step in definition.steps),
        )

    async def _snapshot(self, tenant_id: str, name: str) -> audience_pb2.Snapshot:
        try:
            return await self._audience.GetSnapshot(
                audience_service_pb2.GetSnapshotRequest(name=name),
                metadata=self._auth(tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("GetSnapshot", error) from error

    # --- loading the snapshot --------------------------------------------------------------------

    @activity.defn(name="cohorts.load")
    async def load(self, request: BatchRequest) -> BatchOutcome:
        """Enrols one page of the snapshot's members at the first step, due now."""
        cohort, definition = await self._cohort(request.tenant_id, request.cohort_id)
        at = now()
        async with store.transaction(self._db, request.tenant_id, readonly=True) as conn:
            done = await store.get_batch(conn, cohort.cohort_id, request.seq)
        if done is None:
            try:
                page = await self._audience.ListSnapshotMembers(
                    audience_service_pb2.ListSnapshotMembersRequest(
                        parent=f"snapshots/{cohort.snapshot_id}",
                        page_size=request.size,
                        page_token=request.page_token,
                    ),
                    metadata=self._auth(request.tenant_id),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as error:
                raise service_calls.permanent("ListSnapshotMembers", error) from error
            done = await self._enrol(request, cohort, definition, list(page.member_ids), list(page.arms), at)
            done = store.Batch(done.state, done.figures, {"next_page_token": page.next_page_token})
        goal = definition.goal
        return BatchOutcome(
            figures=done.figures,
            next_page_token=str(done.detail.get("next_page_token", "")),
            measure_until=at + duration(goal.attribution) if goal is not None and entered(done) else None,
        )

    async def _enrol(
        self,
        request: BatchRequest,
        cohort: store.Cohort,
        definition: JourneyDefinition,
        member_ids: list[str],
        arms: list[str],
        at: dt.datetime,
    ) -> store.Batch:
        async with store.transaction(self._db, request.tenant_id) as conn:
            await store.lock_batch(conn, cohort.cohort_id, request.seq)
            found = await store.get_batch(conn, cohort.cohort_id, request.seq)
            if found is not None:
                return found
            others = await store.other_cohorts(conn, cohort.journey_key, cohort.cohort_id)
            rows = await store.enrol_members(
                conn,
                request.tenant_id,
                cohort,
                others,
                member_ids,
                arms,
                holdout_salt(definition.key),
                definition.holdout_percent * BUCKETS // 100,
                definition.reentry.policy,
                duration(definition.reentry.cooldown),
                at,
            )
            figures: Counter[str] = Counter()
            for row in rows:
                figures["entered:holdout" if row["holdout"] else "entered:treated"] += row["n"]
                figures[f"snapshot_arm:{row['snapshot_arm']}"] += row["n"]
            entered = sum(row["n"] for row in rows)
            figures[f"step:{definition.steps[0].id}:entered"] += entered
            figures["not_enrolled"] += len(member_ids) - entered
            detail = {"next_page_token": ""}
            if store.statistics_due(request.ordinal):
                await store.refresh_statistics(conn, "cohort_members")
            await store.save_batch(
                conn, request.tenant_id, cohort.cohort_id, request.seq, "done", +figures, detail, at
            )
        for row in rows:
            metrics.enrolled(
                request.tenant_id, cohort.journey_key, "holdout" if row["holdout"] else "treated", row["n"]
            )
        return store.Batch("done", dict(+figures), detail)

    # --- advancing a batch -----------------------------------------------------------------------

    @activity.defn(name="cohorts.advance")
    async def advance(self, request: BatchRequest) -> BatchOutcome:
        """Takes up to `size` due members one step each, in parts of up to PART_SIZE, a few parts at
        a time: set-based per step, their sends claimed in the message log, then handed to the
        providers. A repeated call settles the parts it wrote and takes nothing new."""
        cohort, definition = await self._cohort(request.tenant_id, request.cohort_id)
        at = now()
        async with store.transaction(self._db, request.tenant_id, readonly=True) as conn:
            parts = await store.batch_parts(conn, cohort.cohort_id, request.seq)
            due = [] if parts else await store.due_members(conn, cohort.cohort_id, at, request.size)
        if parts:
            work = [
                self._settle_part(request, cohort, definition, part, batch, at)
                for part, batch in parts.items()
            ]
        else:
            size = delivery.PART_SIZE
            work = [
                self._take_part(request, cohort, definition, n, due[i : i + size], at)
                for n, i in enumerate(range(0, len(due), size))
            ]
        figures: Counter[str] = Counter()
        failure: BaseException | None = None
        for result in await _limited(work, PARTS_AT_ONCE):
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                figures.update(result)
        if failure is not None:
            raise failure
        async with store.transaction(self._db, request.tenant_id) as conn:
            if not parts and store.statistics_due(request.ordinal):
                await store.refresh_statistics(conn, "cohort_members", "messages")
            next_due = await store.next_due(conn, cohort.cohort_id)
        return BatchOutcome(figures=dict(+figures), next_due=next_due)

    async def _take_part(
        self,
        request: BatchRequest,
        cohort: store.Cohort,
        definition: JourneyDefinition,
        part: int,
        due: Sequence[store.Due],
        at: dt.datetime,
    ) -> dict[str, int]:
        steps = definition.steps
        kinds = [step_kinds.of(step) for step in steps]
        wanted: set[str] = set()
        preferring: set[str] = set()
        for d in due:
            if d.position >= len(steps):
                continue  # its trailing wait is over: it only leaves the steps
            step, kind = steps[d.position], kinds[d.position]
            if kind.needs_recipient and not (kind.treats and d.holdout):
                wanted.add(d.member_id)
            if step.wait_until_hour is not None and step.wait_until_hour.preferred:
                preferring.add(d.member_id)
        recipients, hours = await asyncio.gather(
            self._recipients(request.tenant_id, sorted(wanted)),
            self._preferred_hours(request.tenant_id, sorted(preferring)),
        )
        ready = await self._sender.ready(request.tenant_id)
        plan = delivery.Plan(definition, cohort.cohort_id, at, self._sender, hours, ready=ready)
        for d in due:
            plan.add(d, recipients.get(d.member_id), self._zone(recipients.get(d.member_id)))
        for position, members in plan.tags.items():
            await self._add_tags(request.tenant_id, definition, steps[position], members, plan)
        batch = await self._delivery.claim(request.tenant_id, cohort, request.seq, part, plan)
        if batch.state == "claimed":
            claims = [Claim(*item) for item in batch.detail.get("claimed", [])]
            batch = await self._delivery.deliver(
                request.tenant_id,
                cohort,
                definition,
                request.seq,
                part,
                claims,
                recipients,
                at,
                fresh=True,
                figures=batch.figures,
                rendered=plan.rendered,
            )
        activity.heartbeat()
        return batch.figures

    async def _settle_part(
        self,
        request: BatchRequest,
        cohort: store.Cohort,
        definition: JourneyDefinition,
        part: int,
        batch: store.Batch,
        at: dt.datetime,
    ) -> dict[str, int]:
        """A part an earlier attempt wrote: its sends delivered (the members' data as it is now)."""
        if batch.state == "claimed":
            claims = [Claim(*item) for item in batch.detail.get("claimed", [])]
            recipients = await self._recipients(request.tenant_id, sorted({c.member_id for c in claims}))
            batch = await self._delivery.deliver(
                request.tenant_id, cohort, definition, request.seq, part, claims, recipients, at, fresh=False
            )
        activity.heartbeat()
        return batch.figures

    def _zone(self, recipient: Recipient | None) -> ZoneInfo:
        return local_time.zone(recipient.time_zone if recipient else "", self._settings.default_time_zone)

    async def _recipients(self, tenant_id: str, member_ids: Sequence[str]) -> dict[str, Recipient]:
        """Contact data, consent and personal fields of these members, read from tagging in a few
        calls at once; members tagging does not know are reported as not found."""
        chunks = [member_ids[i : i + MEMBERS_PER_CALL] for i in range(0, len(member_ids), MEMBERS_PER_CALL)]

        async def fetch(chunk: Sequence[str]) -> tagging_service_pb2.BatchGetMembersResponse:
            try:
                return await self._tagging.BatchGetMembers(
                    tagging_service_pb2.BatchGetMembersRequest(
                        names=[f"members/{m}" for m in chunk], allow_missing=True, read_mask=READ_MASK
                    ),
                    metadata=self._auth(tenant_id),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as error:
                raise service_calls.permanent("BatchGetMembers", error) from error

        found: dict[str, Recipient] = {}
        for reply in await asyncio.gather(*(fetch(chunk) for chunk in chunks)):
            for member in reply.members:
                found[member.member_id] = recipient_of(member)
        return {m: found.get(m) or Recipient(member_id=m, found=False) for m in member_ids}

    async def _preferred_hours(self, tenant_id: str, member_ids: Sequence[str]) -> dict[str, int]:
        """The members' own send hours (their `preferred_send_hour` tag), in one tagging call per
        part; members without one are left out (they get the step's fallback hour)."""
        if not member_ids:
            return {}
        try:
            reply = await self._tagging.BatchGetMemberTags(
                tagging_service_pb2.BatchGetMemberTagsRequest(
                    members=[f"members/{m}" for m in member_ids],
                    dimensions=[local_time.PREFERRED_SEND_HOUR],
                ),
                metadata=self._auth(tenant_id),
                timeout=60,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("BatchGetMemberTags", error) from error
        held: dict[str, list[str]] = {}
        for tag in reply.tags:
            held.setdefault(tag.member_id, []).append(tag.value)
        hours = {m: local_time.preferred_hour(values) for m, values in held.items()}
        return {m: hour for m, hour in hours.items() if hour is not None}

    async def _add_tags(
        self,
        tenant_id: str,
        definition: JourneyDefinition,
        step: Step,
        member_ids: list[str],
        plan: delivery.Plan,
    ) -> None:
        """Sets the strategy tag on the treated members at the step; a member already holding it is
        left alone, so a retried batch changes nothing."""
        assert step.add_tag is not None
        failed = ""
        for i in range(0, len(member_ids), TAGS_PER_CALL):
            try:
                await self._tagging.AddMemberTags(
                    tagging_service_pb2.AddMemberTagsRequest(
                        dimension=step.add_tag.dimension,
                        value=step.add_tag.value,
                        member_ids=member_ids[i : i + TAGS_PER_CALL],
                        operator=f"journey:{definition.key}"[:64],
                        reason=f"journey step {step.id}",
                    ),
                    metadata=self._auth(tenant_id),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as error:
                cause = service_calls.permanent("AddMemberTags", error)
                if not isinstance(cause, ApplicationError):
                    raise cause from error
                failed = str(cause)
        plan.tagged(step, member_ids, failed)

    # --- member events ---------------------------------------------------------------------------

    @activity.defn(name="cohorts.apply_events")
    async def apply_events(self, request: BatchRequest) -> BatchOutcome:
        """Goals convert members (with the order's amount as GMV) within their attribution window;
        exit criteria that happened since the member entered end them (history ends nobody). Events
        of members not (or no longer) in the cohort change nothing."""
        cohort, definition = await self._cohort(request.tenant_id, request.cohort_id)
        at = now()
        goal = definition.goal
        # (member, amount, when it happened): a goal counts when its fact is inside the window.
        goals: list[tuple[str, int, dt.datetime]] = []
        exits: list[tuple[str, dt.datetime]] = []
        for item in request.events:
            if goal is not None and matches(goal.event, item.event):
                goals.append((item.member_id, item.event.amount_minor, item.event.occur_time or at))
            # A goal event may be an exit criterion too: it exits a member it did not convert
            # (outside the window), as in a member journey; conversions are applied first.
            if any(matches(criterion, item.event) for criterion in definition.exit_on):
                exits.append((item.member_id, item.event.occur_time or at))
        async with store.transaction(self._db, request.tenant_id) as conn:
            await store.lock_batch(conn, cohort.cohort_id, request.seq)
            found = await store.get_batch(conn, cohort.cohort_id, request.seq)
            if found is not None:
                return BatchOutcome(figures=found.figures)
            figures: Counter[str] = Counter()
            if goals and goal is not None:
                for row in await store.convert(conn, cohort.cohort_id, goals, duration(goal.attribution), at):
                    arm = "holdout" if row["holdout"] else "treated"
                    figures[f"converted:{arm}"] += row["n"]
                    figures[f"gmv:{arm}"] += int(row["gmv"])
            if exits:
                figures["exited"] += await store.exit_members(conn, cohort.cohort_id, exits, at)
            used = figures["converted:treated"] + figures["converted:holdout"] + figures["exited"]
            figures["events_ignored"] += len(request.events) - used
            await store.save_batch(
                conn, request.tenant_id, cohort.cohort_id, request.seq, "done", +figures, {}, at
            )
        return BatchOutcome(figures=dict(+figures))

    # --- the end ---------------------------------------------------------------------------------

    @activity.defn(name="cohorts.finish")
    async def finish(self, request: BatchRequest) -> BatchOutcome:
        """Ends the members still in the journey (completed, or stopped when the broadcast is
        cancelled), settles sends a stopped broadcast had claimed, and returns the cohort's figures
        summed from its batches: the funnel as the database has it."""
        cohort, definition = await self._cohort(request.tenant_id, request.cohort_id)
        at = now()
        async with store.transaction(self._db, request.tenant_id) as conn:
            await store.lock_batch(conn, cohort.cohort_id, request.seq)
            if await store.get_batch(conn, cohort.cohort_id, request.seq) is None:
                for seq, part, detail in await store.claimed_batches(conn, cohort.cohort_id):
                    claims = [Claim(*item) for item in detail.get("claimed", [])]
                    await self._delivery.settle(
                        conn, request.tenant_id, cohort, definition, seq, part, claims, at
                    )
                ended = await store.finish(conn, cohort.cohort_id, request.state, at)
                await store.save_batch(
                    conn,
                    request.tenant_id,
                    cohort.cohort_id,
                    request.seq,
                    "done",
                    {request.state: ended},
                    {},
                    at,
                )
            figures = await store.total_figures(conn, cohort.cohort_id)
        return BatchOutcome(figures=figures)
