"""The per-member journey workflow: a generic interpreter of a stored journey definition.

One run per member and entry, id `journey/{tenant}/{key}/member/{member_id}` (see `client.py`). It loads
its definition version (recorded in history, so a newer version never changes a running member),
enrols the member through a unique row, then walks the steps. Everything that decides is
deterministic: time is `workflow.now()`, a split takes the member's bucket of (journey, step) as
a cohort does (runs recorded before the `split-by-bucket` patch drew `workflow.random()`), and
everything else (membership, tags, local time, sends, coupons) is an activity whose result history
records. What each kind of step does is defined once, for member journeys and cohorts, in `steps/`.
The latest coupon an issue_coupon step got is kept in the run for the member's later sends.

Signals: `event` (an event of the member: a goal, an exit criterion, what a wait waits for),
`pause`/`resume` (a paused member stays before its next step; waits keep their deadlines).
Cancelling the workflow stops the member: it records `stopped` and returns its funnel. After the
last step (or an exit step, which ends the steps the same way) a member with a goal stays until the
attribution window ends, so conversions of treated and holdout members are counted alike.

Events are judged by when their fact happened: the goal within [enter time, enter time +
attribution], an exit criterion only since the member entered, a wait_for_event only since the
wait began. A run started late (the dispatcher's `entry_time`) counts its time from the entry fact.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from workflows.journeys import steps
    from workflows.journeys.activities import JourneyActivities
    from workflows.journeys.definition import EventMatch, JourneyDefinition, Step, duration
    from workflows.journeys.payloads import (
        Enrolment,
        EnrolRequest,
        EnterRequest,
        FinishRequest,
        Funnel,
        IssuedCoupon,
        JourneyInput,
        LoadRequest,
        MemberEvent,
        StepFigures,
        matches,
    )
    from workflows.journeys.steps.split import recorded as split_recorded

TENANT = SearchAttributeKey.for_keyword("MemberOpsTenant")
MEMBER = SearchAttributeKey.for_keyword("MemberOpsMember")
JOURNEY = SearchAttributeKey.for_keyword("MemberOpsJourney")

# Service calls retry for a day at most; a step whose call still fails is recorded as failed.
ATTEMPT_TIMEOUT = timedelta(seconds=30)
# An attempt whose worker died is retried after this (the worker beats for live attempts, see
# workflows/liveness.py), not after ATTEMPT_TIMEOUT. Timeouts are not part of a replayed history's
# commands, so runs recorded before keep replaying.
LIVENESS_TIMEOUT = timedelta(seconds=10)
JOURNEY_WORKFLOW = "Journey"
CALL_TIMEOUT = timedelta(days=1)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5))

_I = TypeVar("_I")
_O = TypeVar("_O")


# Patches (see `workflow.patched`): runs recorded before them replay the older path.
# One activity loads the definition and enrols (before: two).
ENTER_ONCE = "enter-in-one-activity"
# Events with an id are taken once, and the run's own entry event not at all.
EVENT_IDS = "event-ids"
# Goals judged by when their fact happened, not when its signal arrived (issue 19).
EVENT_TIME_GOALS = "event-time-goals"
# Facts that happened before a wait_for_event step began (or, for exit criteria, before the
# member entered) are history: they neither end the wait nor exit the member.
EVENT_TIME_WAITS = "event-time-waits-and-exits"
# The goal's window starts when the entry fact happened (JourneyInput.entry_time), not later
# when the dispatcher started the run.
ENTRY_FACT_TIME = "entry-fact-time"


@workflow.defn(name=JOURNEY_WORKFLOW)
class JourneyWorkflow:
    @workflow.init
    def __init__(self, request: JourneyInput) -> None:
        # The input is known before any signal handler runs (signals can come in the first task).
        self._input = request
        self._event_ids: set[str] = set()
        self._definition: JourneyDefinition | None = None
        self._version = 0
        self._enrolment = Enrolment(accepted=False)
        self._state = "enrolling"
        self._paused = False
        self._events: list[MemberEvent] = []
        self._absorbed = 0
        # Why the member left before the end of the steps: converted (the goal) or exited.
        self._ended = ""
        self._converted = False
        self._gmv_minor = 0
        self._enter_time: dt.datetime | None = None
        # When the entry fact happened, if the run takes it (ENTRY_FACT_TIME), and how much later
        # the run started: the member's steps happen that much earlier in the facts' time.
        self._entry_time: dt.datetime | None = None
        self._late = timedelta()
        self._convert_time: dt.datetime | None = None
        self._current = ""
        self._figures: dict[str, dict[str, int]] = {}
        self._deferrals: dict[str, int] = {}
        self._detail = ""
        # An exit step ended the walk.
        self._left = False
        # The latest coupon an issue_coupon step gave the member (its later sends show it).
        self._coupon: IssuedCoupon | None = None

    # --- the run ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: JourneyInput) -> Funnel:
        self._input = request
        workflow.upsert_search_attributes(
            [
                TENANT.value_set(request.tenant_id),
                MEMBER.value_set(request.member_id),
                JOURNEY.value_set(request.journey_key),
            ]
        )
        definition = await self._enter(request)
        if not self._enrolment.accepted:
            self._state, self._detail = "not_enrolled", self._enrolment.reason
            return self.funnel()
        self._definition = definition
        entered = workflow.now()
        self._enter_time = entered if self._entry_time is None else min(entered, self._entry_time)
        self._late = entered - self._enter_time
        self._state = "active"
        self._absorb()
        try:
            await self._walk(definition)
            await self._measure(definition)
            self._state = "converted" if self._converted else "exited" if self._ended else "completed"
        except asyncio.CancelledError:
            self._state = "stopped"
        await self._finish(request)
        return self.funnel()

    async def _enter(self, request: JourneyInput) -> JourneyDefinition:
        """Reads the definition version (kept in history for the run) and enrols the member."""
        info = workflow.info()
        if request.entry_time is not None and workflow.patched(ENTRY_FACT_TIME):
            time = request.entry_time
            self._entry_time = time if time.tzinfo is not None else time.replace(tzinfo=dt.UTC)
        if workflow.patched(ENTER_ONCE):
            entered = await self._call(
                JourneyActivities.enter,
                EnterRequest(
                    request.tenant_id,
                    request.journey_key,
                    request.version,
                    request.member_id,
                    info.workflow_id,
                    info.run_id,
                    request.entry_event_id,
                    self._entry_time,
                ),
            )
            self._version, self._enrolment = entered.version, entered.enrolment
            return entered.definition
        loaded = await self._call(
            JourneyActivities.load_definition,
            LoadRequest(request.tenant_id, request.journey_key, request.version),
        )
        self._version = loaded.version
        self._enrolment = await self._call(
            JourneyActivities.enrol,
            EnrolRequest(
                request.tenant_id,
                request.journey_key,
                self._version,
                request.member_id,
                info.workflow_id,
                info.run_id,
                loaded.definition.holdout_percent,
                request.entry_event_id,
            ),
        )
        return loaded.definition

    async def _finish(self, request: JourneyInput) -> None:
        await self._call(
            JourneyActivities.finish,
            FinishRequest(
                request.tenant_id,
                self._enrolment.enrolment_id,
                self._state,
                self._convert_time,
                self._gmv_minor,
                split_arms=self.split_arms,
                step_figures={
                    step_id: {what: n for what, n in figures.items() if n and not what.startswith("arm:")}
                    for step_id, figures in self._figures.items()
                },
            ),
        )

    async def _walk(self, definition: JourneyDefinition) -> None:
        index = definition.step_index()
        position = 0
        while position < len(definition.steps) and not self._ended:
            await workflow.wait_condition(lambda: not self._paused or bool(self._ended))
            if self._ended:
                return
            step = definition.steps[position]
            self._current = step.id
            self._count(step.id, "entered")
            target = await self._step(step)
            if self._left:
                return
            position = index[target] if target else position + 1
        self._current = ""

    async def _measure(self, definition: JourneyDefinition) -> None:
        """Waits for the goal until the attribution window ends (treated and holdout alike)."""
        if definition.goal is None or self._ended or self._enter_time is None:
            return
        self._state = "measuring"
        end = self._enter_time + duration(definition.goal.attribution)
        await self._sleep_until(end)

    # --- steps (each kind is defined in workflows/journeys/steps) ----------------------------

    async def _step(self, step: Step) -> str:
        """Runs one step; returns the id of the step to go to, or '' for the next one."""
        kind = steps.of(step)
        if kind.treats and self._enrolment.holdout:
            self._count(step.id, "held_out")  # holdout members get no send, award or tag
            return ""
        return await kind.run(step, self)

    # What a step sees of the member (steps.MemberRun).

    @property
    def tenant_id(self) -> str:
        return self._input.tenant_id

    @property
    def member_id(self) -> str:
        return self._input.member_id

    @property
    def definition(self) -> JourneyDefinition:
        assert self._definition is not None
        return self._definition

    @property
    def ended(self) -> bool:
        return bool(self._ended)

    @property
    def enrolment_id(self) -> int:
        return self._enrolment.enrolment_id

    @property
    def entry_number(self) -> int:
        return self._enrolment.entry_number

    @property
    def split_arms(self) -> tuple[str, ...]:
        return tuple(
            split_recorded(step_id, what.removeprefix("arm:"))
            for step_id, figures in self._figures.items()
            for what in figures
            if what.startswith("arm:")
        )

    @property
    def coupon(self) -> IssuedCoupon | None:
        return self._coupon

    def keep_coupon(self, coupon: IssuedCoupon) -> None:
        self._coupon = coupon

    async def call(self, method: Callable[[Any, _I], Awaitable[_O]], request: _I) -> _O:
        return await self._call(method, request)

    def count(self, step_id: str, what: str) -> None:
        self._count(step_id, what)

    async def sleep_until(self, until: dt.datetime) -> None:
        await self._sleep_until(until)

    async def event_until(self, match: EventMatch, until: dt.datetime) -> bool:
        seen = len(self._events)
        if not workflow.patched(EVENT_TIME_WAITS):
            return await self._wait_for(lambda: any(matches(match, e) for e in self._events[seen:]), until)
        # The wait began when the member got to the step, in the facts' time: a run started late
        # takes an order paid between its entry fact and its first wait, even one signalled before
        # the step began; an event without a time counts when it comes during the wait.
        since = workflow.now() - self._late

        def came(index: int, event: MemberEvent) -> bool:
            fresh = index >= seen if event.occur_time is None else _since(event, since)
            return fresh and matches(match, event)

        return await self._wait_for(lambda: any(came(i, e) for i, e in enumerate(self._events)), until)

    async def unpaused(self) -> None:
        await workflow.wait_condition(lambda: not self._paused or bool(self._ended))

    def deferred(self, reason: str) -> None:
        self._deferrals[reason] = self._deferrals.get(reason, 0) + 1

    def leave(self, detail: str) -> None:
        self._left, self._detail = True, detail

    # --- helpers ------------------------------------------------------------------------------

    async def _call(self, method: Callable[[Any, _I], Awaitable[_O]], request: _I) -> _O:
        return await workflow.execute_activity_method(
            method,
            request,
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            schedule_to_close_timeout=CALL_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=RETRY,
        )

    async def _wait_for(self, condition: Callable[[], bool], until: dt.datetime) -> bool:
        """Until `condition()` holds (True), the member leaves, or `until` passes (False)."""
        remaining = until - workflow.now()
        if remaining <= timedelta():
            return bool(condition())
        try:
            await workflow.wait_condition(lambda: bool(condition()) or bool(self._ended), timeout=remaining)
        except TimeoutError:
            return False
        return bool(condition())

    async def _sleep_until(self, until: dt.datetime) -> None:
        """Sleeps until `until`, woken early when the member converts or exits."""
        await self._wait_for(lambda: False, until)

    def _count(self, step_id: str, what: str) -> None:
        figures = self._figures.setdefault(step_id, {})
        figures[what] = figures.get(what, 0) + 1

    def _absorb(self) -> None:
        """Applies the goal and the exit criteria to events not yet looked at."""
        definition = self._definition
        if definition is None or self._enter_time is None:
            return
        for event in self._events[self._absorbed :]:
            if self._ended:
                break
            goal = definition.goal
            window_end = self._enter_time + duration(goal.attribution) if goal else self._enter_time
            # A goal event outside the window converts nobody; it may still be an exit criterion
            # (as in a cohort), if it happened since the member entered.
            if goal is not None and matches(goal.event, event) and self._attributed(event, window_end):
                self._converted, self._ended = True, "converted"
                self._gmv_minor += event.amount_minor
                self._convert_time = self._happened(event)
            elif any(matches(criterion, event) for criterion in definition.exit_on) and self._fresh(event):
                self._ended, self._detail = "exited", f"exit criterion {event.kind}"
        self._absorbed = len(self._events)

    def _fresh(self, event: MemberEvent) -> bool:
        """Whether an exit criterion's fact happened since the member entered (history exits
        nobody). Runs recorded before this took every event."""
        if not workflow.patched(EVENT_TIME_WAITS):
            return True
        return _since(event, self._enter_time)

    def _attributed(self, event: MemberEvent, window_end: dt.datetime) -> bool:
        """Whether a goal event counts: its fact happened inside [enrolment, enrolment +
        attribution] (an order paid before the member entered, or long after, converts nobody).
        Runs recorded before this judged by when the event arrived."""
        assert self._enter_time is not None
        if not workflow.patched(EVENT_TIME_GOALS):
            return workflow.now() <= window_end
        return self._enter_time <= self._happened(event) <= window_end

    def _happened(self, event: MemberEvent) -> dt.datetime:
        """When the event's fact happened (an operator's event without a time: when it arrived)."""
        if event.occur_time is not None and workflow.patched(EVENT_TIME_GOALS):
            time = event.occur_time
            return time if time.tzinfo is not None else time.replace(tzinfo=dt.UTC)
        return workflow.now()

    # --- signals and the query ----------------------------------------------------------------

    @workflow.signal
    def event(self, event: MemberEvent) -> None:
        if event.event_id and workflow.patched(EVENT_IDS):
            if event.event_id in self._event_ids or event.event_id == self._input.entry_event_id:
                return  # a replayed feed entry, or the event this run entered on
            self._event_ids.add(event.event_id)
        self._events.append(event)
        self._absorb()

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.query
    def funnel(self) -> Funnel:
        state = "paused" if self._paused and self._state == "active" else self._state
        return Funnel(
            journey_key=self._input.journey_key,
            version=self._version,
            member_id=self._input.member_id,
            state=state,
            arm="" if not self._enrolment.accepted else "holdout" if self._enrolment.holdout else "treated",
            current_step=self._current,
            steps=tuple(
                StepFigures(
                    step_id=step_id,
                    entered=f.get("entered", 0),
                    sent=f.get("sent", 0),
                    skipped=f.get("skipped", 0),
                    deferred=f.get("deferred", 0),
                    failed=f.get("failed", 0),
                    unknown=f.get("unknown", 0),
                    held_out=f.get("held_out", 0),
                    done=f.get("done", 0),
                    arm=next((k.removeprefix("arm:") for k in f if k.startswith("arm:")), ""),
                )
                for step_id, f in self._figures.items()
            ),
            converted=self._converted,
            gmv_minor=self._gmv_minor,
            enter_time=self._enter_time,
            convert_time=self._convert_time,
            detail=self._detail,
            deferrals=dict(self._deferrals),
        )


def _since(event: MemberEvent, start: dt.datetime | None) -> bool:
    """Whether the event's fact happened at or after `start` (None: any time); an event without
    a time is taken as happening when it arrived, which is after any start."""
    if start is None or event.occur_time is None:
        return True
    time = (
        event.occur_time if event.occur_time.tzinfo is not None else event.occur_time.replace(tzinfo=dt.UTC)
    )
    return time >= start
