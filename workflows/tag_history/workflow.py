"""The history rebuild: every dimension recomputed as of start, start + step, ... before end.

The workflow touches no database: each step is one `RecomputeTags(dimensions=[d], as_of=t)` of the
tagging service, which makes what the rules find at t the dimension's valid-time history from t
until the member's next recorded change. So each dimension's instants must run in increasing order
(an earlier one run after a later one would overwrite the later one's history); different
dimensions are independent and run in LANES parallel lanes.

Resumable: a failed step is retried by Temporal, and a worker that dies is replaced by the history.
A long range does not grow one history without bound: after `steps_per_run` steps the run continues
as new, carrying each dimension's position (`RebuildInput.done`). Progress is kept in the memo
(readable with no worker running) and answered by the `progress` query.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.tag_history.payloads import (
        MEMO_KEY,
        PROGRESS_QUERY,
        RECOMPUTE_AT,
        WORKFLOW,
        Progress,
        RebuildInput,
        RecomputeAt,
        Recomputed,
    )

LANES = 2
# One dimension's recompute of 1M members takes a minute or two; the activity heartbeats.
START_TO_CLOSE = timedelta(hours=3)
HEARTBEAT = timedelta(minutes=1)
# A step that keeps failing (the service down) is retried for hours; a permanent error fails the run.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=10), maximum_attempts=50
)


@workflow.defn(name=WORKFLOW)
class TagHistoryRebuildWorkflow:
    def __init__(self) -> None:
        self._progress = Progress(0, 0)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, rebuild: RebuildInput) -> Progress:
        instants = rebuild.instants()
        done = list(rebuild.done) or [0] * len(rebuild.dimensions)
        counts = [rebuild.added, rebuild.removed]
        self._progress = dataclasses.replace(rebuild, done=done).progress()
        waiting = deque(i for i, position in enumerate(done) if position < instants)
        budget = [max(1, rebuild.steps_per_run)]

        async def lane() -> None:
            while waiting and budget[0] > 0:
                i = waiting.popleft()
                while done[i] < instants and budget[0] > 0:
                    budget[0] -= 1
                    step = RecomputeAt(rebuild.tenant_id, rebuild.dimensions[i], rebuild.instant(done[i]))
                    result: Recomputed = await workflow.execute_activity(
                        RECOMPUTE_AT,
                        step,
                        result_type=Recomputed,
                        start_to_close_timeout=START_TO_CLOSE,
                        heartbeat_timeout=HEARTBEAT,
                        retry_policy=RETRY,
                    )
                    done[i] += 1
                    counts[0] += result.added
                    counts[1] += result.removed
                    self._report(dataclasses.replace(rebuild, done=done, added=counts[0], removed=counts[1]))

        await asyncio.gather(*(lane() for _ in range(LANES)))
        carried = dataclasses.replace(rebuild, done=done, added=counts[0], removed=counts[1])
        if any(position < instants for position in done):
            workflow.continue_as_new(carried, memo=carried.memo())
        return carried.progress()

    def _report(self, rebuild: RebuildInput) -> None:
        self._progress = rebuild.progress()
        workflow.upsert_memo({MEMO_KEY: self._progress})
