"""The cohort workflow: one broadcast journey for a whole audience snapshot, in batches.

One run per journey and snapshot, id `journey/{key}/snapshot/{snapshot_id}` (see `client.py`),
backed by a unique row. It interprets the same definitions as the member workflow, but for many
members at a time: the members' state lives in `journeys.cohort_members` (the step each is at and
from when it may go on), and each activity call takes a batch of due members one step further,
set-based. The workflow itself only keeps counters and decides what to call next; it pages the
snapshot in (enrolling each page) while the batches already run, sleeps until the next member is
due (a wait, a member-local hour, a deferral for quiet hours, caps or rate limits), applies member
events (goals, exit criteria) signalled to it, and continues as new every so many calls so its
history stays bounded however large the snapshot.

Signals: `event` (an event of one member), `pause`/`resume` (no batch starts while paused).
Cancelling the workflow stops the broadcast: members still in it are recorded as `stopped`. After
the last step the cohort stays until the goal's attribution window of its last member ends, so
conversions of treated and holdout members are counted alike; the `funnel` query gives both and
the uplift.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # The member event inside CohortEvent: its module must be known inside the sandbox too, where
    # the data converter resolves the nested dataclass's annotations.
    import workflows.journeys.payloads  # noqa: F401
    from workflows.journeys.cohort.activities import CohortActivities
    from workflows.journeys.cohort.payloads import (
        ArmFigures,
        BatchOutcome,
        BatchRequest,
        CohortEvent,
        CohortFunnel,
        CohortInput,
        CohortState,
        CohortStep,
        OpenRequest,
    )
    from workflows.journeys.workflow import JOURNEY, TENANT

ATTEMPT_TIMEOUT = timedelta(minutes=10)
HEARTBEAT_TIMEOUT = timedelta(minutes=2)
CALL_TIMEOUT = timedelta(days=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# Member events per apply_events call.
EVENTS_PER_CALL = 1000
STEP_COUNTERS = ("entered", "sent", "skipped", "deferred", "failed", "unknown", "held_out", "done")

_I = TypeVar("_I")
_O = TypeVar("_O")


@workflow.defn(name="CohortJourney")
class CohortJourneyWorkflow:
    def __init__(self) -> None:
        self._input: CohortInput | None = None
        self._state: CohortState | None = None
        self._phase = "opening"
        self._detail = ""
        self._calls = 0
        # Signals that arrive before the cohort is open.
        self._early_events: list[CohortEvent] = []
        self._early_pause = False

    # --- the run ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: CohortInput) -> CohortFunnel:
        self._input = request
        workflow.upsert_search_attributes(
            [TENANT.value_set(request.tenant_id), JOURNEY.value_set(request.journey_key)]
        )
        if request.state is None:
            info = workflow.info()
            opened = await self._call(
                CohortActivities.open,
                OpenRequest(
                    request.tenant_id,
                    request.journey_key,
                    request.version,
                    request.snapshot,
                    info.workflow_id,
                    info.first_execution_run_id,
                ),
            )
            if not opened.accepted:
                self._phase, self._detail = "not_started", opened.reason
                return self.funnel()
            self._state = CohortState(
                opened.cohort_id,
                opened.version,
                opened.snapshot_id,
                step_ids=opened.step_ids,
                start_time=workflow.now(),
            )
        else:
            self._state = dataclasses.replace(request.state, runs=request.state.runs + 1)
        state = self._state
        state.events.extend(self._early_events)
        state.paused = state.paused or self._early_pause
        try:
            self._phase = "active" if state.loaded else "loading"
            await self._walk(request, state)
            self._phase = "measuring"
            await self._measure(state)
            await self._finish(state, "completed")
        except asyncio.CancelledError:
            self._phase = "stopping"
            await self._finish(state, "stopped")
        return self.funnel()

    async def _walk(self, request: CohortInput, state: CohortState) -> None:
        """Until every member has taken its last step (or left)."""
        while True:
            await workflow.wait_condition(lambda: not state.paused)
            if state.events:
                await self._apply_events(state)
                continue
            if self._calls >= request.calls_per_run or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(dataclasses.replace(request, state=state))
            if not state.loaded:
                await self._load_and_advance(request, state)
                continue
            advanced = await self._advance(request, state)
            if advanced is None:
                continue
            if advanced.next_due is None:
                return
            if advanced.next_due > workflow.now():
                # Asleep until the next member is due; an event or a pause wakes the loop.
                until = advanced.next_due
                await self._wait(lambda: bool(state.events), until)

    async def _load_and_advance(self, request: CohortInput, state: CohortState) -> None:
        """The next snapshot page is enrolled while a batch of those enrolled already goes on."""
        loaded, _ = await asyncio.gather(self._load(request, state), self._advance(request, state))
        if loaded is None:
            return
        self._add(loaded.figures)
        state.page_token = loaded.next_page_token
        if loaded.measure_until is not None:
            state.measure_until = loaded.measure_until
        if not state.page_token:
            state.loaded = True
            self._phase = "active"

    async def _load(self, request: CohortInput, state: CohortState) -> BatchOutcome | None:
        """The next snapshot page; None when reading it failed for good (the broadcast pauses)."""
        seq = state.seq
        state.seq += 1
        try:
            loaded = await self._call(
                CohortActivities.load,
                BatchRequest(
                    request.tenant_id,
                    state.cohort_id,
                    seq,
                    request.batch_size,
                    ordinal=state.pages + 1,
                    page_token=state.page_token,
                ),
            )
        except ActivityError as error:
            self._pause_after(error)
            return None
        state.pages += 1
        return loaded

    async def _advance(self, request: CohortInput, state: CohortState) -> BatchOutcome | None:
        """One batch; None when it failed for good (the broadcast pauses; resuming repeats it)."""
        if state.retry_seq is None:
            state.retry_seq, state.seq = state.seq, state.seq + 1
        try:
            advanced = await self._call(
                CohortActivities.advance,
                BatchRequest(
                    request.tenant_id,
                    state.cohort_id,
                    state.retry_seq,
                    request.batch_size,
                    ordinal=state.batches + 1,
                ),
                heartbeat=True,
            )
        except ActivityError as error:
            self._pause_after(error)
            return None
        state.retry_seq = None
        state.batches += 1
        self._add(advanced.figures)
        return advanced

    def _pause_after(self, error: ActivityError) -> None:
        assert self._state is not None
        self._state.paused = True
        self._detail = f"paused: a call failed ({error.cause or error}); resume to repeat it"

    async def _apply_events(self, state: CohortState) -> None:
        assert self._input is not None
        events = tuple(state.events[:EVENTS_PER_CALL])
        seq = state.seq
        state.seq += 1
        applied = await self._call(
            CohortActivities.apply_events,
            BatchRequest(self._input.tenant_id, state.cohort_id, seq, events=events),
        )
        del state.events[: len(events)]
        self._add(applied.figures)

    async def _measure(self, state: CohortState) -> None:
        """Counts conversions of treated and holdout members until the attribution window of the
        last member to enter ends."""
        while state.measure_until is not None and workflow.now() < state.measure_until:
            await self._wait(lambda: bool(state.events), state.measure_until)
            if state.events:
                await self._apply_events(state)
        while state.events:
            await self._apply_events(state)

    async def _finish(self, state: CohortState, how: str) -> None:
        assert self._input is not None
        seq = state.seq
        state.seq += 1
        finished = await self._call(
            CohortActivities.finish,
            BatchRequest(self._input.tenant_id, state.cohort_id, seq, state=how),
        )
        # The database's sum of every batch: the same figures, also after a cancelled call.
        state.figures = dict(finished.figures)
        self._phase = how

    # --- helpers ------------------------------------------------------------------------------

    async def _call(
        self, method: Callable[[Any, _I], Awaitable[_O]], request: _I, *, heartbeat: bool = False
    ) -> _O:
        self._calls += 1
        try:
            result = await workflow.execute_activity_method(
                method,
                request,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=CALL_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT if heartbeat else None,
                retry_policy=RETRY,
                # A stopped broadcast waits for a running batch to end before it settles the rest.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError:
            self._stop_if_cancelled()
            raise
        # A cancellation that came while the call ran is not raised by it when it completed.
        self._stop_if_cancelled()
        return result

    def _stop_if_cancelled(self) -> None:
        if workflow.cancellation_reason() is not None and self._phase not in ("stopping", "stopped"):
            raise asyncio.CancelledError()

    async def _wait(self, condition: Callable[[], bool], until: dt.datetime) -> None:
        remaining = until - workflow.now()
        if remaining <= timedelta():
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(condition, timeout=remaining)

    def _add(self, figures: Mapping[str, int]) -> None:
        assert self._state is not None
        totals = self._state.figures
        for key, value in figures.items():
            totals[key] = totals.get(key, 0) + value

    # --- signals and the query ----------------------------------------------------------------

    @workflow.signal
    def event(self, event: CohortEvent) -> None:
        (self._state.events if self._state is not None else self._early_events).append(event)

    @workflow.signal
    def pause(self) -> None:
        if self._state is not None:
            self._state.paused = True
        self._early_pause = True

    @workflow.signal
    def resume(self) -> None:
        if self._state is not None:
            self._state.paused = False
        self._early_pause = False
        self._detail = ""

    @workflow.query
    def funnel(self) -> CohortFunnel:
        assert self._input is not None
        state = self._state
        if state is None:
            return CohortFunnel(
                journey_key=self._input.journey_key,
                snapshot=self._input.snapshot,
                version=self._input.version,
                cohort_id=0,
                state=self._phase,
                detail=self._detail,
            )
        f = state.figures
        treated, holdout = _arm(f, "treated"), _arm(f, "holdout")
        paused = state.paused and self._phase in ("loading", "active")
        return CohortFunnel(
            journey_key=self._input.journey_key,
            snapshot=f"snapshots/{state.snapshot_id}",
            version=state.version,
            cohort_id=state.cohort_id,
            state="paused" if paused else self._phase,
            detail=self._detail,
            not_enrolled=f.get("not_enrolled", 0),
            treated=treated,
            holdout=holdout,
            uplift_points=round((treated.conversion_rate - holdout.conversion_rate) * 100, 4),
            steps=tuple(_step(f, step_id) for step_id in state.step_ids),
            deferrals={
                k.removeprefix("deferral:"): v for k, v in sorted(f.items()) if k.startswith("deferral:")
            },
            snapshot_arms={
                k.removeprefix("snapshot_arm:"): v
                for k, v in sorted(f.items())
                if k.startswith("snapshot_arm:")
            },
            exited=f.get("exited", 0),
            events_ignored=f.get("events_ignored", 0),
            pending_events=len(state.events),
        )


def _arm(figures: Mapping[str, int], arm: str) -> ArmFigures:
    entered, converted = figures.get(f"entered:{arm}", 0), figures.get(f"converted:{arm}", 0)
    return ArmFigures(
        entered=entered,
        converted=converted,
        gmv_minor=figures.get(f"gmv:{arm}", 0),
        conversion_rate=converted / entered if entered else 0.0,
    )


def _step(figures: Mapping[str, int], step_id: str) -> CohortStep:
    prefix = f"step:{step_id}:"
    arms = {
        k.removeprefix(f"{prefix}arm:"): v
        for k, v in sorted(figures.items())
        if k.startswith(f"{prefix}arm:")
    }
    count = {name: figures.get(f"{prefix}{name}", 0) for name in STEP_COUNTERS}
    return CohortStep(
        step_id=step_id,
        entered=count["entered"],
        sent=count["sent"],
        skipped=count["skipped"],
        deferred=count["deferred"],
        failed=count["failed"],
        unknown=count["unknown"],
        held_out=count["held_out"],
        done=count["done"],
        arms=arms,
    )
