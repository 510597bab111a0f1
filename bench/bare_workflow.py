"""The baseline of bench_enrolment: a workflow that runs one activity, doing nothing, and ends.

In a module of its own with no imports beyond Temporal's, so the workflow sandbox loads it fast.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import activity, workflow


class BareActivities:
    """Counts the activity's runs, so the benchmark sees when every workflow got that far."""

    def __init__(self, ran: Callable[[], None]) -> None:
        self._ran = ran

    @activity.defn(name="bench.bare")
    async def bare(self, member_id: str) -> str:
        self._ran()
        return member_id


@workflow.defn(name="BenchBare")
class BareWorkflow:
    @workflow.run
    async def run(self, member_id: str) -> str:
        return await workflow.execute_activity_method(
            BareActivities.bare, member_id, start_to_close_timeout=timedelta(seconds=30)
        )
