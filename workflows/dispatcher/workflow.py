"""The dispatcher: one long-running workflow per tenant (id `dispatcher/{tenant}`) that turns
tagging's and audience's feeds into journey enrolments and `event` signals (to member runs, and to
the open cohorts of broadcasts whose goal or exit criteria an event is).

It runs rounds, each one activity (`dispatcher.dispatch`, see activities.py) that waits for the next
entries of both feeds, dispatches them and moves the cursors. The cursors live in the worker's
schema (`journeys.dispatch_cursors`), written in the same transaction as the round's record of the
runs it started, so the workflow carries no position of its own: a worker that dies mid-round
leaves the cursors where they were and the retried round dispatches the same entries again, which
changes nothing (see activities.py). After ROUNDS_PER_RUN rounds, or when Temporal suggests it, the
workflow continues as new with its totals, so its history stays bounded.

Signals `pause` / `resume` hold and release it between rounds; queries `status` (cursors, totals,
the last round) and `funnel` (each followed journey's treated and holdout figures and uplift, read
again every `report_every_seconds` from the same tables as the report command).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.dispatcher.activities import DispatcherActivities
    from workflows.dispatcher.payloads import (
        DispatcherFunnel,
        DispatcherInput,
        DispatcherStatus,
        DispatchRequest,
        DispatchResult,
        ReportRequest,
    )

    # Imported here too, so that the sandbox resolves the report's type hints when decoding it.
    from workflows.journeys.report import JourneyReport

TENANT = SearchAttributeKey.for_keyword("MemberOpsTenant")
ROUNDS_PER_RUN = 1000
# A round waits up to `idle_seconds` for entries, then dispatches a batch, heartbeating as it goes.
ROUND_TIMEOUT = timedelta(minutes=10)
# What bounds a takeover: a round whose worker died (no heartbeat for this long) is retried on
# another worker. A live round beats every POLL_SECONDS while idle and after each member's walk,
# and its longest silent step is one service call (CALL_TIMEOUT_SECONDS, 5 s), so 10 s never cuts
# a live round short. (Changing an activity's timeouts leaves recorded histories replayable.)
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# A round that fails (a service or Temporal unreachable) is tried again, without end.
FOREVER = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
REPORT_RETRY = RetryPolicy(maximum_attempts=3)


@workflow.defn(name="Dispatcher")
class DispatcherWorkflow:
    @workflow.init
    def __init__(self, request: DispatcherInput) -> None:
        self._input = request
        self._rounds, self._totals = request.rounds, request.totals
        self._paused = request.paused
        self._last: DispatchResult | None = None
        self._last_time: datetime | None = None
        self._funnel = DispatcherFunnel(request.tenant_id, None)

    @workflow.run
    async def run(self, request: DispatcherInput) -> None:
        workflow.upsert_search_attributes([TENANT.value_set(request.tenant_id)])
        for _ in range(ROUNDS_PER_RUN):
            await workflow.wait_condition(lambda: not self._paused)
            result = await workflow.execute_activity_method(
                DispatcherActivities.dispatch,
                DispatchRequest(
                    tenant_id=request.tenant_id,
                    dispatcher=workflow.info().workflow_id,
                    journey_keys=request.journey_keys,
                    start_at=request.start_at,
                    batch_size=request.batch_size,
                    idle_seconds=request.idle_seconds,
                ),
                start_to_close_timeout=ROUND_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=FOREVER,
            )
            self._record(result)
            await self._report(request)
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            dataclasses.replace(request, rounds=self._rounds, totals=self._totals, paused=self._paused)
        )

    def _record(self, result: DispatchResult) -> None:
        self._rounds, self._totals = self._rounds + 1, self._totals.plus(result.counts)
        self._last, self._last_time = result, workflow.now()

    async def _report(self, request: DispatcherInput) -> None:
        """Reads the journeys' figures again when they are older than `report_every_seconds`."""
        every = request.report_every_seconds
        last = self._funnel.report_time
        if every <= 0 or (last is not None and workflow.now() - last < timedelta(seconds=every)):
            return
        try:
            journeys: tuple[JourneyReport, ...] = await workflow.execute_activity_method(
                DispatcherActivities.report,
                ReportRequest(request.tenant_id, request.journey_keys),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=REPORT_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("reading the journeys' figures failed; dispatching goes on")
            return
        self._funnel = DispatcherFunnel(request.tenant_id, workflow.now(), journeys)

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.query
    def status(self) -> DispatcherStatus:
        last = self._last
        return DispatcherStatus(
            tenant_id=self._input.tenant_id,
            state="paused" if self._paused else "running",
            tagging_cursor=last.tagging_cursor if last else "",
            audience_cursor=last.audience_cursor if last else "",
            rounds=self._rounds,
            totals=self._totals,
            last_round_time=self._last_time,
            last_round=last,
        )

    @workflow.query
    def funnel(self) -> DispatcherFunnel:
        return self._funnel
