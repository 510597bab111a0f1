"""The tenant's WeCom sync: one long-running workflow per tenant (id `wecom-sync/{tenant}`), started
or woken by signal-with-start (workflows/wecom/client.py) when a connector is put, a reconciliation
asked for or a callback stored.

It runs rounds like the dispatcher (workflows/dispatcher/workflow.py, the model): each round first
pulls the stored callbacks into manual tags (the callbacks' activity `wecom_pull`), then runs one
activity (`wecom.round`, activities.py) that pushes the next batch of tagging's feed, or a page of a
running full reconciliation, then reads back the results of WeCom messages sent
(`wecom.read_results`, the WeCom channel's). Where the push and the reconciliation stand lives in the database
(journeys.wecom_sync), written with each member's effect, so the workflow carries no position: a
round retried after a crash goes on from there. With the connector missing or off, the sync sleeps
until a signal wakes it (or `off_seconds` pass). After ROUNDS_PER_RUN rounds, or when Temporal
suggests it, it continues as new with its totals.

Signals: `wake` (a connector put), `callbacks` (callbacks stored), `resync(request_id)` (a full
reconciliation started in the sync's row). Query: `status`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.wecom.activities import WeComActivities
    from workflows.wecom.payloads import RoundRequest, RoundResult, SyncStatus, WeComSyncInput

TENANT = SearchAttributeKey.for_keyword("MemberOpsTenant")
ROUNDS_PER_RUN = 500
ROUND_TIMEOUT = timedelta(minutes=30)
# A live round heartbeats after each member, while it polls the feed, and every second of WeCom's
# quota backoff; its longest silent step is one WeCom or tagging call (30 s and 5 s at most).
HEARTBEAT_TIMEOUT = timedelta(seconds=45)
# A round that fails (WeCom or tagging unreachable, WeCom busy past the client's budget, a bad
# secret until an operator fixes it) is tried again, without end.
FOREVER = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60))
# The callbacks' pull (workflows/wecom/pull_activities.py), called by name. Its failure never holds
# the push up: the callbacks stay stored and the next round pulls them.
PULL_ACTIVITY = "wecom_pull"
PULL_RETRY = RetryPolicy(maximum_attempts=3)
# The WeCom channel's read-back of its messages' results (workflows/journeys/channels/
# wecom_results.py), after each round with the connector on; added after runs were recorded.
READ_RESULTS_ACTIVITY = "wecom.read_results"
READ_RESULTS_PATCH = "wecom-read-results"


@workflow.defn(name="WeComSync")
class WeComSyncWorkflow:
    @workflow.init
    def __init__(self, request: WeComSyncInput) -> None:
        self._input = request
        self._rounds, self._totals = request.rounds, request.totals
        self._woken = False
        self._last: RoundResult | None = None
        self._last_time: datetime | None = None

    @workflow.run
    async def run(self, request: WeComSyncInput) -> None:
        workflow.upsert_search_attributes([TENANT.value_set(request.tenant_id)])
        for _ in range(ROUNDS_PER_RUN):
            self._woken = False
            await self._pull(request)
            result = await workflow.execute_activity_method(
                WeComActivities.round,
                RoundRequest(request.tenant_id, request.batch_size, request.idle_seconds),
                start_to_close_timeout=ROUND_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=FOREVER,
            )
            self._record(result)
            if result.enabled and workflow.patched(READ_RESULTS_PATCH):
                await self._read_results(request)
            if not result.enabled:
                await self._sleep(request.off_seconds)
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(dataclasses.replace(request, rounds=self._rounds, totals=self._totals))

    async def _pull(self, request: WeComSyncInput) -> None:
        try:
            await workflow.execute_activity(
                PULL_ACTIVITY,
                request.tenant_id,
                start_to_close_timeout=ROUND_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=PULL_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("pulling WeCom's callbacks failed; the push goes on")

    async def _read_results(self, request: WeComSyncInput) -> None:
        """The customer-side results of WeCom messages sent (the WeCom channel's activity); their
        failure never holds the push up either."""
        try:
            await workflow.execute_activity(
                READ_RESULTS_ACTIVITY,
                request.tenant_id,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=PULL_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("reading WeCom's message results failed; the push goes on")

    async def _sleep(self, seconds: float) -> None:
        """Until a signal wakes the sync, or `seconds` pass."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._woken, timeout=timedelta(seconds=seconds))

    def _record(self, result: RoundResult) -> None:
        self._rounds, self._totals = self._rounds + 1, self._totals.plus(result.counts)
        self._last, self._last_time = result, workflow.now()

    @workflow.signal
    def wake(self) -> None:
        self._woken = True

    @workflow.signal
    def callbacks(self) -> None:
        self._woken = True

    @workflow.signal
    def resync(self, request_id: str) -> None:
        """The reconciliation is in the sync's row already; the signal wakes the sync to run it."""
        self._woken = True

    @workflow.query
    def status(self) -> SyncStatus:
        return SyncStatus(
            tenant_id=self._input.tenant_id,
            rounds=self._rounds,
            totals=self._totals,
            last_round_time=self._last_time,
            last_round=self._last,
        )
