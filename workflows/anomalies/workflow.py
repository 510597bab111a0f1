"""One anomaly check of a tenant: what its schedule starts (see workflows/periodic/schedules.py).

Deterministic: the fetch activity reads the clock (which day is yesterday) and the KPIs, the
workflow scores the days with the pure `stats`, the store activity writes the flags.
"""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.anomalies import stats
    from workflows.anomalies.payloads import (
        FETCH_SERIES,
        KPIS,
        STORE_FINDINGS,
        WORKFLOW,
        CheckInput,
        CheckResult,
        Finding,
        Series,
        SeriesRequest,
        StoreRequest,
    )

START_TO_CLOSE = timedelta(minutes=5)
# A service that stays down fails the run after about an hour; the next day's run catches up.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5), maximum_attempts=15
)


def findings(series: Series) -> tuple[int, list[Finding]]:
    """(checked (kpi, day) pairs, the flagged ones) of the series' checked days."""
    first = dt.date.fromisoformat(series.first_day)
    days = stats.checked_days(
        dt.date.fromisoformat(series.last_day),
        (dt.date.fromisoformat(series.last_day) - dt.date.fromisoformat(series.first_checked)).days + 1,
    )
    checked, found = 0, []
    for kpi in KPIS:
        values = {first + timedelta(days=i): v for i, v in enumerate(series.values.get(kpi, []))}
        for day in days:
            scored = stats.check_day(kpi, values, day)
            if scored is None:
                continue
            checked += 1
            if scored.flagged:
                found.append(
                    Finding(
                        kpi,
                        day.isoformat(),
                        scored.value,
                        scored.baseline,
                        scored.robust_z,
                        scored.direction,
                        scored.history_days,
                    )
                )
    return checked, found


@workflow.defn(name=WORKFLOW)
class KpiAnomalyCheckWorkflow:
    @workflow.run
    async def run(self, check: CheckInput) -> CheckResult:
        series: Series = await workflow.execute_activity(
            FETCH_SERIES,
            SeriesRequest(check.tenant_id, check.time_zone, check.last_day, check.days),
            result_type=Series,
            start_to_close_timeout=START_TO_CLOSE,
            retry_policy=RETRY,
        )
        checked, found = findings(series)
        await workflow.execute_activity(
            STORE_FINDINGS,
            StoreRequest(check.tenant_id, series.first_checked, series.last_day, found),
            result_type=int,
            start_to_close_timeout=START_TO_CLOSE,
            retry_policy=RETRY,
        )
        flagged = ", ".join(f"{f.kpi} {f.day} {f.direction}" for f in found) or "nothing"
        return CheckResult(
            series.first_checked,
            series.last_day,
            checked,
            len(found),
            f"{series.first_checked}..{series.last_day}: {checked} KPI days checked, flagged {flagged}",
        )
