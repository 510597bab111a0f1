"""One run of a periodic job: what a schedule starts (see `schedules.py`)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.periodic.payloads import JOBS, JobInput, JobRequest, JobResult

# Generous: the first recompute of a 1M-member tenant takes minutes; the activity heartbeats.
START_TO_CLOSE = timedelta(hours=3)
HEARTBEAT = timedelta(minutes=1)
# A job that keeps failing is retried for a few hours, then the run fails and the next one tries.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=10), maximum_attempts=20
)


@workflow.defn(name="PeriodicJob")
class PeriodicJobWorkflow:
    @workflow.run
    async def run(self, job: JobInput) -> JobResult:
        if job.job not in JOBS:
            raise ApplicationError(f"unknown job {job.job!r}; one of {', '.join(JOBS)}", non_retryable=True)
        result: JobResult = await workflow.execute_activity(
            job.job,
            JobRequest(job.tenant_id, workflow.now()),
            result_type=JobResult,
            start_to_close_timeout=START_TO_CLOSE,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=RETRY,
        )
        return result
