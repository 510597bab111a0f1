"""`memberops_kpi_anomalies{tenant,kpi}`: the days the KPI anomaly check flagged in the last
WINDOW_DAYS days (before today), served by the journeys service.

The figures are read from the table once a minute by a background loop of the service (one small
query per configured tenant) and kept here; a scrape only reads what was kept (runtime/metrics.py:
the endpoint answers from its own thread, never waiting for the database). Each journeys replica
serves the same figures: aggregate with `max by (tenant, kpi)`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime import logs
from runtime.db import Database
from workflows.anomalies import store
from workflows.anomalies.payloads import KPIS

log = logs.get_logger("memberops.journeys.anomalies")

WINDOW_DAYS = 7
REFRESH_SECONDS = 60.0


class AnomalyGauge(Collector):
    """The kept figures: every KPI of every tenant read so far (0 for a KPI without flags)."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}

    def keep(self, tenant_id: str, counts: dict[str, int]) -> None:
        self._counts[tenant_id] = {kpi: counts.get(kpi, 0) for kpi in KPIS}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "memberops_kpi_anomalies",
            f"Days of the last {WINDOW_DAYS} the daily KPI anomaly check flagged (ListAnomalies), by KPI.",
            labels=["tenant", "kpi"],
        )
        for tenant_id, counts in sorted(self._counts.copy().items()):
            for kpi, n in counts.items():
                family.add_metric([tenant_id, kpi], n)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


GAUGE = AnomalyGauge()
REGISTRY.register(GAUGE)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AnomalyCounts:
    """Reads every tenant's recent flags into GAUGE: `run` once a minute, `refresh` once."""

    def __init__(
        self,
        db: Database,
        tenants: frozenset[str],
        gauge: AnomalyGauge = GAUGE,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._db = db
        self._tenants = sorted(tenants)
        self._gauge = gauge
        self._clock = clock

    async def refresh(self) -> None:
        since = self._clock().date() - dt.timedelta(days=WINDOW_DAYS)
        for tenant_id in self._tenants:
            async with self._db.transaction(tenant_id, readonly=True) as conn:
                self._gauge.keep(tenant_id, await store.counts_since(conn, since))

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a database away for a minute: the figures kept stay, and we retry
                log.exception("reading KPI anomalies for the metric failed")
            await asyncio.sleep(REFRESH_SECONDS)
