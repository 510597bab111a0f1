"""Periodic jobs: the workflow each schedule starts calls the real services; the schedules are
created once, follow their configuration, and start the job when triggered."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import grpc
import pytest
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc
from memberops.tasks.v1 import points_pb2, tasks_service_pb2_grpc
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import ConfigError, Settings
from tests.audience.helpers import member, order
from tests.conftest import GLOBEX, TENANT_ACME, TENANT_GLOBEX, tasks_definition, unique
from tests.tasks.points_helpers import ROLLING, all_entries, earn
from tests.waiting import eventually
from workflows.periodic import schedules
from workflows.periodic.payloads import (
    EVALUATE_LEVELS,
    EXPIRE_POINTS,
    GRANT_LEVEL_BENEFITS,
    RECOMPUTE_TAGS,
    JobInput,
    JobResult,
)
from workflows.periodic.workflow import PeriodicJobWorkflow
from workflows.worker import Resources, build_worker


async def run_job(
    env: WorkflowEnvironment, settings: Settings, resources: Resources, job: JobInput
) -> JobResult:
    """Runs one job to its end at the environment's time. A job does not wait on any timer of its
    own, so time is not skipped while it runs: skipping would race to the next timer of the test
    server (a run's ten-year execution timeout), and the job would act ten years ahead."""
    with env.auto_time_skipping_disabled():
        async with build_worker(env.client, settings, resources):
            return await env.client.execute_workflow(
                PeriodicJobWorkflow.run,
                job,
                id=f"periodic-test-{uuid.uuid4()}",
                task_queue=settings.temporal_task_queue,
            )


class SkippedClock:
    """Real time plus what a test skipped on the time-skipping server: the clock of a tasks server
    that must see the workflow's time as now, as it does in production (it refuses an `as_of`
    in its future)."""

    def __init__(self) -> None:
        self.skipped = dt.timedelta()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.skipped


@contextlib.asynccontextmanager
async def tasks_on(clock: SkippedClock, settings: Settings, resources: Resources) -> AsyncIterator[Resources]:
    """`resources` with a tasks server of their own, on `clock`."""
    running = await app.start(tasks_definition(clock.now), settings, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield dataclasses.replace(resources, tasks=channel)
    finally:
        await running.stop()


async def test_the_expiry_job_expires_what_is_due_and_a_rerun_changes_nothing(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    tasks_settings: Settings,
) -> None:
    clock = SkippedClock()
    async with tasks_on(clock, tasks_settings, resources) as clocked:
        tasks = tasks_service_pb2_grpc.TasksServiceStub(clocked.tasks)
        tagging = tagging_service_pb2_grpc.TaggingServiceStub(clocked.tagging)
        member_id = await member(tagging, unique("batch"))
        await earn(tasks, member_id, 300, policy=ROLLING, days=1)
        clock.skipped = dt.timedelta(days=2)
        await time_skipping_env.sleep(clock.skipped)  # the job acts for the workflow's time
        job = JobInput(TENANT_ACME, EXPIRE_POINTS)
        first = await run_job(time_skipping_env, worker_settings, clocked, job)
        second = await run_job(time_skipping_env, worker_settings, clocked, job)
        expiries = [e for e in await all_entries(tasks, member_id) if e.reason == points_pb2.REASON_EXPIRY]
    assert first.job == EXPIRE_POINTS and second.summary == "0 lots, 0 points expired"
    assert [e.delta for e in expiries] == [-300]


async def test_the_recompute_job_evaluates_scheduled_dimensions(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    """rfm_segment is scheduled only: a member's order gives it no value until a recompute."""
    tagging = tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging)
    member_id = await member(tagging, unique("batch"), metadata=GLOBEX)
    await order(tagging, member_id, 2, [("tea", 5_000)], metadata=GLOBEX)

    async def rfm() -> list[str]:
        request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
        held = await tagging.GetMemberTags(request, metadata=GLOBEX)
        return [t.value for t in held.tags if t.dimension == "rfm_segment"]

    assert await rfm() == []
    result = await run_job(
        time_skipping_env, worker_settings, resources, JobInput(TENANT_GLOBEX, RECOMPUTE_TAGS)
    )
    assert result.job == RECOMPUTE_TAGS and result.summary.endswith(" tags")
    assert len(await rfm()) == 1


async def test_the_level_job_reports_what_it_evaluated_and_a_rerun_downgrades_nobody(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    job = JobInput(TENANT_ACME, EVALUATE_LEVELS)
    first = await run_job(time_skipping_env, worker_settings, resources, job)
    second = await run_job(time_skipping_env, worker_settings, resources, job)
    assert re.fullmatch(r"\d+ members, \d+ up, \d+ down", first.summary)
    assert second.job == EVALUATE_LEVELS and second.summary.endswith(", 0 down")


async def test_the_level_benefits_job_reports_what_it_granted_and_a_rerun_grants_nothing(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    job = JobInput(TENANT_ACME, GRANT_LEVEL_BENEFITS)
    first = await run_job(time_skipping_env, worker_settings, resources, job)
    second = await run_job(time_skipping_env, worker_settings, resources, job)
    assert re.fullmatch(r"\d+ monthly and \d+ birthday coupons, \d+ out of stock", first.summary)
    assert second.job == GRANT_LEVEL_BENEFITS
    assert second.summary.startswith("0 monthly and 0 birthday coupons")


async def test_an_unknown_job_fails_at_once(
    time_skipping_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    with pytest.raises(WorkflowFailureError) as caught:
        await run_job(time_skipping_env, worker_settings, resources, JobInput(TENANT_ACME, "polish_tags"))
    assert isinstance(caught.value.cause, ApplicationError)
    assert "unknown job 'polish_tags'" in str(caught.value.cause)


async def listed_schedules(client: Client, prefix: str) -> list[str]:
    return sorted([s.id async for s in await client.list_schedules() if s.id.startswith(prefix)])


async def finished_runs(client: Client, schedule_id: str) -> list[WorkflowExecutionStatus | None]:
    query = f"WorkflowType = 'PeriodicJob' AND WorkflowId STARTS_WITH '{schedule_id}'"
    return [
        w.status async for w in client.list_workflows(query) if w.status != WorkflowExecutionStatus.RUNNING
    ]


async def test_schedules_are_made_once_follow_the_configuration_and_start_the_job(
    dev_server_env: WorkflowEnvironment, worker_settings: Settings, resources: Resources
) -> None:
    client, queue = dev_server_env.client, worker_settings.temporal_task_queue
    tenant = f"t{uuid.uuid4().hex[:8]}"  # schedules of its own in the shared dev server
    plan = schedules.Plan.from_env({"MEMBEROPS_SCHEDULE_TIME_ZONE": "Europe/Madrid"})
    made = await schedules.ensure(client, [tenant], plan, queue)
    assert made == [
        (f"periodic/{tenant}/{RECOMPUTE_TAGS}", "created"),
        (f"periodic/{tenant}/{EXPIRE_POINTS}", "created"),
        (f"periodic/{tenant}/{EVALUATE_LEVELS}", "created"),
        (f"periodic/{tenant}/{GRANT_LEVEL_BENEFITS}", "created"),
        (f"periodic/{tenant}/{schedules.DETECT_ANOMALIES}", "created"),
    ]
    again = await schedules.ensure(client, [tenant, tenant], plan, queue)
    assert [what for _, what in again] == ["updated"] * 5
    anomalies = await client.get_schedule_handle(f"periodic/{tenant}/{schedules.DETECT_ANOMALIES}").describe()
    assert isinstance(anomalies.schedule.action, ScheduleActionStartWorkflow)
    assert anomalies.schedule.action.workflow == "KpiAnomalyCheck"
    at = [t.astimezone(ZoneInfo("Europe/Madrid")) for t in anomalies.info.next_action_times]
    assert at and all((t.hour, t.minute) == (6, 0) for t in at)  # "0 6 * * *" there
    described = await client.get_schedule_handle(f"periodic/{tenant}/{EXPIRE_POINTS}").describe()
    upcoming = [t.astimezone(ZoneInfo("Europe/Madrid")) for t in described.info.next_action_times]
    assert upcoming and all((t.hour, t.minute) == (0, 30) for t in upcoming)  # "30 0 * * *" there

    off = schedules.Plan.from_env(
        {
            "MEMBEROPS_SCHEDULE_RECOMPUTE_TAGS": "off",
            "MEMBEROPS_SCHEDULE_EVALUATE_LEVELS": "off",
            "MEMBEROPS_SCHEDULE_GRANT_LEVEL_BENEFITS": "off",
            "MEMBEROPS_SCHEDULE_DETECT_ANOMALIES": "off",
        }
    )
    assert await schedules.ensure(client, [tenant], off, queue) == [
        (f"periodic/{tenant}/{RECOMPUTE_TAGS}", "removed"),
        (f"periodic/{tenant}/{EXPIRE_POINTS}", "updated"),
        (f"periodic/{tenant}/{EVALUATE_LEVELS}", "removed"),
        (f"periodic/{tenant}/{GRANT_LEVEL_BENEFITS}", "removed"),
        (f"periodic/{tenant}/{schedules.DETECT_ANOMALIES}", "removed"),
    ]
    # Schedule listings come from the visibility store, which catches up with a removal shortly after.

    async def only_expiry_listed() -> bool:
        listed = await listed_schedules(client, f"periodic/{tenant}/")
        return listed == [f"periodic/{tenant}/{EXPIRE_POINTS}"]

    await eventually(only_expiry_listed, "did the listing drop the removed schedule", interval=0.2)

    # Triggered now, a schedule starts the job on the worker (which has tokens for the suite's
    # tenants only, hence acme's schedule).
    await schedules.ensure(client, [TENANT_ACME], off, queue)
    sid = schedules.schedule_id(TENANT_ACME, EXPIRE_POINTS)
    async with build_worker(client, worker_settings, resources):
        await client.get_schedule_handle(sid).trigger()

        async def finished() -> list[WorkflowExecutionStatus | None]:
            return list(await finished_runs(client, sid))

        runs = await eventually(finished, "did the triggered job finish", interval=0.2)
    assert runs and set(runs) == {WorkflowExecutionStatus.COMPLETED}
    for handle_id in (sid, f"periodic/{tenant}/{EXPIRE_POINTS}"):
        await client.get_schedule_handle(handle_id).delete()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MEMBEROPS_SCHEDULE_TIME_ZONE": "Mars/Olympus"}, "MEMBEROPS_SCHEDULE_TIME_ZONE"),
        ({"MEMBEROPS_SCHEDULE_EXPIRE_POINTS": "every day"}, "MEMBEROPS_SCHEDULE_EXPIRE_POINTS"),
        ({"MEMBEROPS_SCHEDULE_RECOMPUTE_TAGS": "0 3 * *"}, "MEMBEROPS_SCHEDULE_RECOMPUTE_TAGS"),
    ],
)
def test_a_bad_schedule_setting_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        schedules.Plan.from_env(env)
