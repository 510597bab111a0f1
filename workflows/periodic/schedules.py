"""The periodic jobs' Temporal Schedules: `python -m workflows.periodic.schedules` (run by `make up`).

One schedule per tenant and job, id `periodic/{tenant}/{job}`, each starting a `PeriodicJob`
workflow, or for `detect_anomalies` a `KpiAnomalyCheck` (workflows/anomalies/) over the days of the
schedule's zone. Creating them is idempotent: an existing schedule is updated to the configured times, a
job configured `off` loses its schedule. Runs never overlap (a recompute still running when the
next is due makes that one skip), and a run missed while Temporal was down is caught up within an
hour, not later.

Times are cron expressions in MEMBEROPS_SCHEDULE_TIME_ZONE (default Asia/Shanghai), one variable a
job: MEMBEROPS_SCHEDULE_RECOMPUTE_TAGS (default `0 3 * * *`), MEMBEROPS_SCHEDULE_EXPIRE_POINTS
(default `30 0 * * *`), MEMBEROPS_SCHEDULE_EVALUATE_LEVELS (default `0 4 * * *`),
MEMBEROPS_SCHEDULE_GRANT_LEVEL_BENEFITS (default `30 4 * * *`: after the levels are evaluated),
MEMBEROPS_SCHEDULE_DETECT_ANOMALIES (default `0 6 * * *`); `off` removes the job's schedule.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from runtime import zones
from runtime.config import ConfigError, Settings
from workflows.anomalies.payloads import CheckInput
from workflows.anomalies.workflow import KpiAnomalyCheckWorkflow
from workflows.periodic.payloads import (
    EVALUATE_LEVELS,
    EXPIRE_POINTS,
    GRANT_LEVEL_BENEFITS,
    JOBS,
    RECOMPUTE_TAGS,
    JobInput,
)
from workflows.periodic.workflow import PeriodicJobWorkflow

DEFAULT_TIME_ZONE = "Asia/Shanghai"
DETECT_ANOMALIES = "detect_anomalies"
# Every scheduled job: the PeriodicJob ones, then the KPI anomaly check (after the night's jobs).
SCHEDULED = (*JOBS, DETECT_ANOMALIES)
DEFAULT_CRON = {
    RECOMPUTE_TAGS: "0 3 * * *",
    EXPIRE_POINTS: "30 0 * * *",
    EVALUATE_LEVELS: "0 4 * * *",
    GRANT_LEVEL_BENEFITS: "30 4 * * *",
    DETECT_ANOMALIES: "0 6 * * *",
}
OFF = "off"
CATCHUP_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Plan:
    """When each job runs: a cron expression per job (None: not scheduled) in one time zone."""

    time_zone: str
    cron: Mapping[str, str | None]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Plan:
        env = os.environ if env is None else env
        time_zone = env.get("MEMBEROPS_SCHEDULE_TIME_ZONE", DEFAULT_TIME_ZONE)
        if zones.find(time_zone) is None:
            raise ConfigError(f"MEMBEROPS_SCHEDULE_TIME_ZONE: unknown time zone {time_zone!r}")
        cron: dict[str, str | None] = {}
        for job in SCHEDULED:
            name = f"MEMBEROPS_SCHEDULE_{job.upper()}"
            value = env.get(name, DEFAULT_CRON[job]).strip()
            if value != OFF and len(value.split()) != 5:
                raise ConfigError(f"{name} must be a 5-field cron expression or {OFF!r}, got {value!r}")
            cron[job] = None if value == OFF else value
        return cls(time_zone, cron)


def schedule_id(tenant_id: str, job: str) -> str:
    return f"periodic/{tenant_id}/{job}"


def action_of(tenant_id: str, job: str, time_zone: str, task_queue: str) -> ScheduleActionStartWorkflow:
    """What the job's schedule starts: the anomaly check over the days of the schedule's zone, or
    the PeriodicJob workflow."""
    sid = schedule_id(tenant_id, job)
    if job == DETECT_ANOMALIES:
        check = CheckInput(tenant_id, time_zone)
        return ScheduleActionStartWorkflow(KpiAnomalyCheckWorkflow.run, check, id=sid, task_queue=task_queue)
    return ScheduleActionStartWorkflow(
        PeriodicJobWorkflow.run, JobInput(tenant_id, job), id=sid, task_queue=task_queue
    )


def schedule_of(tenant_id: str, job: str, cron: str, time_zone: str, task_queue: str) -> Schedule:
    return Schedule(
        action=action_of(tenant_id, job, time_zone, task_queue),
        spec=ScheduleSpec(cron_expressions=[cron], time_zone_name=time_zone),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
    )


async def ensure(
    client: Client, tenants: Iterable[str], plan: Plan, task_queue: str
) -> list[tuple[str, str]]:
    """Makes the schedules match `plan` for every tenant; returns (schedule id, what was done)."""
    done: list[tuple[str, str]] = []
    for tenant_id in sorted(set(tenants)):
        for job in SCHEDULED:
            sid, cron = schedule_id(tenant_id, job), plan.cron[job]
            if cron is None:
                done.append((sid, "removed" if await _delete(client, sid) else "off"))
                continue
            wanted = schedule_of(tenant_id, job, cron, plan.time_zone, task_queue)
            try:
                await client.create_schedule(sid, wanted)
                done.append((sid, "created"))
            except ScheduleAlreadyRunningError:

                def update(_: ScheduleUpdateInput, wanted: Schedule = wanted) -> ScheduleUpdate:
                    return ScheduleUpdate(schedule=wanted)

                await client.get_schedule_handle(sid).update(update)
                done.append((sid, "updated"))
    return done


async def _delete(client: Client, sid: str) -> bool:
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def main() -> None:
    settings = Settings.from_env()
    tenants = settings.require_tokens().values()
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    for sid, what in await ensure(client, tenants, Plan.from_env(), settings.temporal_task_queue):
        print(f"{sid:<40} {what}")


if __name__ == "__main__":
    asyncio.run(main())
