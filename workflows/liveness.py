"""Heartbeats that say only "this worker is alive", for activities that do not beat themselves.

An activity's attempt on a worker that died (SIGKILL, a lost node) is retried only when one of its
timeouts fires: without a heartbeat timeout, its whole start-to-close timeout (30 s for a member
journey's steps, which wait on services and channels). With a short heartbeat timeout and these
beats, the attempt is retried within that timeout instead, however long a live attempt may take.

Only the activities of the workflow types named are beaten, and only when scheduled with a heartbeat
timeout: activities that beat with progress details (broadcast batches, journey control) keep
their own beats, whose details an empty beat would replace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

# Beats per heartbeat timeout (the SDK sends at most one per 0.8 of it; the rest stay local).
BEATS_PER_TIMEOUT = 4


class Liveness(Interceptor):
    def __init__(self, workflow_types: Iterable[str]) -> None:
        self._workflow_types = frozenset(workflow_types)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Beating(next, self._workflow_types)


class _Beating(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, workflow_types: frozenset[str]) -> None:
        super().__init__(next)
        self._workflow_types = workflow_types

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        timeout = info.heartbeat_timeout
        if not timeout or info.workflow_type not in self._workflow_types:
            return await super().execute_activity(input)
        beating = asyncio.create_task(_beat(timeout.total_seconds() / BEATS_PER_TIMEOUT))
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def _beat(every: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(every)
