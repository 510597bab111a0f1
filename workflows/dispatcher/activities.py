"""The dispatcher's activities: one round reads the next entries of tagging's and audience's feeds,
enrols members into the journeys their events enter, signals the running journeys the events wake
and the open cohorts (broadcasts) whose goal or exit criteria they are, and then moves the
dispatcher's cursors (stored in the worker's schema) past them.

A round is at least once: a worker that dies mid-round leaves the cursors where they were, and the
retried round dispatches the same entries again. That changes nothing: an entry event already
dispatched is skipped (`journeys.dispatches`), a start is refused by the workflow id's reuse policy
and by the enrolment row (one per journey and entry event), and a run takes an event id once. A
cohort takes an event again, but only its active members convert or exit, so a member's goal or
exit counts once (the replayed event is counted as `events_ignored` in the cohort's funnel).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from runtime import metrics, tracing
from runtime.db import Database
from workflows import service_calls
from workflows.dispatcher import events
from workflows.dispatcher import store as dispatch_store
from workflows.dispatcher.payloads import DispatchCounts, DispatchRequest, DispatchResult, ReportRequest
from workflows.journeys import client as journeys_client
from workflows.journeys import report, states, store
from workflows.journeys.activities import now
from workflows.journeys.cohort.payloads import CohortEvent
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import JourneyDefinition
from workflows.journeys.payloads import JourneyInput, MemberEvent
from workflows.journeys.report import JourneyReport
from workflows.journeys.workflow import JourneyWorkflow

# How often an idle round asks the feeds again: the latency the dispatcher adds at most.
POLL_SECONDS = 0.25
# Temporal calls (starts, signals) one round has in flight at once.
IN_FLIGHT = 64
# Journeys whose running members (and open cohorts) the dispatcher signals (only active ones enrol).
FOLLOWED = ("active", "paused", "archived")

# The definition each open cohort runs, by (journey, version).
CohortDefinitions = dict[tuple[str, int], JourneyDefinition]


@dataclass
class _Round:
    """What a round did, filled in by the members' walks."""

    started: int = 0
    skipped: int = 0
    signalled: int = 0
    too_old: int = 0
    cohort_signals: int = 0
    dispatches: list[dispatch_store.Dispatch] = field(default_factory=list)


class DispatcherActivities:
    def __init__(
        self,
        db: Database,
        tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
        audience: audience_service_pb2_grpc.AudienceServiceAsyncStub,
        client: Client,
        token_for_tenant: service_calls.TokenForTenant,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self._db = db
        self._tagging = tagging
        self._audience = audience
        self._client = client
        self._token_for_tenant = token_for_tenant
        self._in_flight = asyncio.Semaphore(in_flight)
        # Versions never change, so a cohort's definition read once serves every later round.
        self._versions: dict[tuple[str, str, int], JourneyDefinition] = {}

    def all(self) -> list[object]:
        return [self.dispatch, self.report]

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return service_calls.metadata(self._token_for_tenant, tenant_id)

    @activity.defn(name="dispatcher.dispatch")
    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        try:
            return await self._round(request)
        except asyncio.CancelledError:
            if activity.is_worker_shutdown():
                # Not a cancellation of the dispatcher: fail the attempt so it is retried soon.
                raise ApplicationError("the worker shut down mid-round", type="WorkerShutdown") from None
            raise

    @activity.defn(name="dispatcher.report")
    async def report(self, request: ReportRequest) -> tuple[JourneyReport, ...]:
        """The figures of every journey the dispatcher follows (see workflows/journeys/report.py)."""
        definitions = await self._definitions(request.tenant_id, request.journey_keys)
        return tuple(
            [await report.journey_report(self._db, request.tenant_id, d.key) for d, _ in definitions]
        )

    async def _definitions(self, tenant_id: str, keys: Sequence[str]) -> list[tuple[JourneyDefinition, int]]:
        """The live version of each journey followed, with the version a new entry runs: the live
        one for an active journey, 0 (enrols nobody) for a paused or archived one, whose running
        members still get their events (goals, exit criteria, waits). Drafts are not followed."""
        live = await states.live_definitions(self._db, tenant_id, keys, FOLLOWED)
        return [
            (s.definition, s.version if state.state == "active" else 0)
            for s, state in live
            if events.follows(s.definition)
        ]

    async def _cohort_definitions(self, tenant_id: str, keys: Sequence[str]) -> CohortDefinitions:
        """The version each open cohort of a followed journey runs (broadcasts enrol nobody through
        the dispatcher, but their cohorts take their members' goals and exit criteria)."""
        found: CohortDefinitions = {}
        for key, version in await dispatch_store.open_cohort_versions(self._db, tenant_id, keys, FOLLOWED):
            cached = self._versions.get((tenant_id, key, version))
            if cached is None:
                cached = (await store.get_definition(self._db, tenant_id, key, version)).definition
                self._versions[(tenant_id, key, version)] = cached
            found[(key, version)] = cached
        return found

    # --- one round ----------------------------------------------------------------------------

    async def _round(self, request: DispatchRequest) -> DispatchResult:
        before = await self._cursors(request)
        tagging, audience, asked = await self._read(request, before)
        tagging_times = [events.entry_time(e) for e in tagging.entries]
        audience_times = [events.entry_time(e) for e in audience.entries]
        take_tagging, take_audience = events.merge(
            tagging_times,
            len(tagging.entries) == request.batch_size,
            audience_times,
            len(audience.entries) == request.batch_size,
        )
        tagging_entries = tagging.entries[:take_tagging]
        audience_entries = audience.entries[:take_audience]
        after = {
            "tagging": tagging_entries[-1].cursor if tagging_entries else before["tagging"],
            "audience": audience_entries[-1].cursor if audience_entries else before["audience"],
        }
        definitions = await self._definitions(request.tenant_id, request.journey_keys)
        cohorts = await self._cohort_definitions(request.tenant_id, request.journey_keys)
        wanted = events.kinds([*(d for d, _ in definitions), *cohorts.values()])
        # The two feeds interleaved by write time, each one's own order kept.
        found = list(
            heapq.merge(
                (e for e in (events.tagging_event(t, wanted) for t in tagging_entries) if e is not None),
                (e for e in map(events.audience_event, audience_entries) if e is not None),
                key=lambda e: e.time,
            )
        )
        taken = [
            e
            for e in found
            if any(events.enters(d, e.event) or events.wakes(d, e.event) for d, _ in definitions)
            or any(events.reaches_cohort(d, e.event) for d in cohorts.values())
        ]
        # History an import loaded enrols nobody and is no run's or cohort's goal, exit or wait,
        # however recent its facts' time: only counted, so an operator sees why nothing happened.
        relevant = [e for e in taken if not e.backfilled]
        done = _Round()
        if relevant:
            await self._dispatch(request.tenant_id, relevant, definitions, cohorts, done)
        await dispatch_store.record_round(
            self._db, request.tenant_id, request.dispatcher, before, after, done.dispatches, now()
        )
        for feed, read, took in (("tagging", tagging, take_tagging), ("audience", audience, take_audience)):
            at_head = took == len(read.entries) < request.batch_size
            metrics.FEED.round("dispatcher", feed, request.tenant_id, asked, took, at_head)
        counts = DispatchCounts(
            entries=len(tagging_entries) + len(audience_entries),
            events=len(relevant),
            started=done.started,
            skipped=done.skipped,
            signalled=done.signalled,
            too_old=done.too_old,
            cohort_signals=done.cohort_signals,
            backfilled=len(taken) - len(relevant),
        )
        return DispatchResult(after["tagging"], after["audience"], counts)

    async def _cursors(self, request: DispatchRequest) -> dict[str, str]:
        stored = await dispatch_store.cursors(self._db, request.tenant_id, request.dispatcher)
        missing = [feed for feed in dispatch_store.FEEDS if feed not in stored]
        if not missing:
            return stored
        start = {
            feed: "" if request.start_at == "beginning" else await self._end(request, feed)
            for feed in missing
        }
        return await dispatch_store.start_cursors(
            self._db, request.tenant_id, request.dispatcher, start, now()
        )

    async def _end(self, request: DispatchRequest, feed: str) -> str:
        auth = self._auth(request.tenant_id)
        timeout = service_calls.CALL_TIMEOUT_SECONDS
        if feed == "tagging":
            reply = await self._tagging.ReadFeed(
                tagging_service_pb2.ReadFeedRequest(skip_to_end=True), metadata=auth, timeout=timeout
            )
            return reply.next_cursor
        answer = await self._audience.ReadAudienceFeed(
            audience_service_pb2.ReadAudienceFeedRequest(skip_to_end=True), metadata=auth, timeout=timeout
        )
        return answer.next_cursor

    async def _read(
        self, request: DispatchRequest, cursors: dict[str, str]
    ) -> tuple[tagging_service_pb2.ReadFeedResponse, audience_service_pb2.ReadAudienceFeedResponse, float]:
        """The next page of each feed, waiting up to `idle_seconds` for anything to be there, and
        when (time.monotonic()) the last reads began (see metrics.FeedLag)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.idle_seconds
        auth = self._auth(request.tenant_id)
        timeout = service_calls.CALL_TIMEOUT_SECONDS
        while True:
            asked = time.monotonic()
            tagging, audience = await asyncio.gather(
                self._tagging.ReadFeed(
                    tagging_service_pb2.ReadFeedRequest(
                        after_cursor=cursors["tagging"], limit=request.batch_size
                    ),
                    metadata=auth,
                    timeout=timeout,
                ),
                self._audience.ReadAudienceFeed(
                    audience_service_pb2.ReadAudienceFeedRequest(
                        after_cursor=cursors["audience"], limit=request.batch_size
                    ),
                    metadata=auth,
                    timeout=timeout,
                ),
            )
            if (
                tagging.entries
                or audience.entries
                or loop.time() >= deadline
                or activity.is_worker_shutdown()
            ):
                return tagging, audience, asked
            activity.heartbeat()
            await asyncio.sleep(POLL_SECONDS)

    async def _dispatch(
        self,
        tenant_id: str,
        found: list[events.FeedEvent],
        definitions: list[tuple[JourneyDefinition, int]],
        cohorts: CohortDefinitions,
        done: _Round,
    ) -> None:
        """Walks each member's events in order (members concurrently): first the signals to the
        journeys and cohorts the member runs in, then the starts of the journeys the event enters."""
        by_member: dict[str, list[events.FeedEvent]] = {}
        for e in found:
            by_member.setdefault(e.member_id, []).append(e)
        known = await dispatch_store.members(
            self._db, tenant_id, list(by_member), [e.event.event_id for e in found], now()
        )
        known.cohorts = await dispatch_store.cohort_runs(self._db, tenant_id, list(by_member), list(cohorts))
        await asyncio.gather(
            *(
                self._walk(tenant_id, member_id, walk, definitions, cohorts, known, done)
                for member_id, walk in by_member.items()
            )
        )

    async def _walk(
        self,
        tenant_id: str,
        member_id: str,
        walk: list[events.FeedEvent],
        definitions: list[tuple[JourneyDefinition, int]],
        cohorts: CohortDefinitions,
        known: dispatch_store.Members,
        done: _Round,
    ) -> None:
        for found in walk:
            # A span in the trace of the call that wrote the entry: the starts and signals below
            # carry it into the journeys' workflows and activities.
            with tracing.continued(
                found.traceparent,
                f"dispatch {found.event.kind}",
                {
                    "memberops.tenant": tenant_id,
                    "memberops.member_id": member_id,
                    "memberops.event_id": found.event.event_id,
                },
            ):
                await self._take(tenant_id, member_id, found.event, definitions, cohorts, known, done)
        activity.heartbeat()

    async def _take(
        self,
        tenant_id: str,
        member_id: str,
        event: MemberEvent,
        definitions: list[tuple[JourneyDefinition, int]],
        cohorts: CohortDefinitions,
        known: dispatch_store.Members,
        done: _Round,
    ) -> None:
        """One event of the member: signals to the runs and cohorts it reaches, then the starts of
        the journeys it enters."""
        for definition, _ in definitions:
            running = known.running.get((definition.key, member_id))
            if running is not None and events.wakes(definition, event):
                done.signalled += await self._signal(running, event)
        for cohort in known.cohorts.get(member_id, ()):
            if events.reaches_cohort(cohorts[(cohort.journey_key, cohort.version)], event):
                signal = CohortEvent(member_id, event)
                done.cohort_signals += await self._signal(cohort.workflow_id, signal)
        for definition, version in definitions:
            if not version or not events.enters(definition, event):
                continue
            if events.too_old(definition, event, now()):
                # History, not news: its fact happened before the journey's max_entry_delay.
                done.skipped += 1
                done.too_old += 1
                continue
            pair = (definition.key, member_id)
            if (
                pair in known.running
                or (definition.key, event.event_id) in known.entered
                or store.refusal(definition, known.last.get(pair), now()) is not None
            ):
                done.skipped += 1
                continue
            run_id, started = await self._start(tenant_id, definition, version, member_id, event)
            done.started += started
            done.skipped += not started
            workflow_id = journeys_client.workflow_id(tenant_id, definition.key, member_id)
            known.running[pair] = workflow_id
            known.entered.add((definition.key, event.event_id))
            done.dispatches.append(
                dispatch_store.Dispatch(definition.key, event.event_id, member_id, workflow_id, run_id)
            )

    async def _start(
        self,
        tenant_id: str,
        definition: JourneyDefinition,
        version: int,
        member_id: str,
        event: MemberEvent,
    ) -> tuple[str, bool]:
        """Starts the member's run of `version`; returns its run id and whether this call started
        it (False: a run of that id was there already)."""
        # The goal window starts when the entry fact happened, not when the run started.
        request = JourneyInput(
            tenant_id,
            definition.key,
            member_id,
            version,
            entry_event_id=event.event_id,
            entry_time=event.occur_time,
        )
        async with self._in_flight:
            try:
                handle = await journeys_client.start_member_journey(
                    self._client, activity.info().task_queue, definition, request
                )
            except WorkflowAlreadyStartedError as error:
                return error.run_id or "", False
        return handle.result_run_id or "", True

    async def _signal(self, workflow_id: str, event: MemberEvent | CohortEvent) -> bool:
        """Signals `event` to the current run of `workflow_id` (a member's run: the id its
        enrolment or dispatch recorded; a cohort's: its row's); False when there is none (it ended
        meanwhile)."""
        handle = self._client.get_workflow_handle(workflow_id)
        async with self._in_flight:
            try:
                if isinstance(event, CohortEvent):
                    await handle.signal(CohortJourneyWorkflow.event, event)
                else:
                    await handle.signal(JourneyWorkflow.event, event)
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    return False
                raise
        return True
