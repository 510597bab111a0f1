"""The kpi_anomalies table of the worker's schema (SQL only): written by the check's activity,
read by ListAnomalies and the memberops_kpi_anomalies metric of the journeys service."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class Anomaly:
    kpi: str
    day: dt.date
    value: float
    baseline: float
    robust_z: float
    direction: str
    history_days: int
    detect_time: dt.datetime


async def replace_days(
    conn: Connection, tenant_id: str, first: dt.date, last: dt.date, found: Sequence[Anomaly]
) -> int:
    """Makes the flags of the days `first` to `last` exactly `found`: each row inserted or updated
    by its natural key (tenant, kpi, day), flags a re-run no longer raises deleted. Repeating it
    changes nothing more; returns the rows `found` wrote."""
    await conn.execute(
        """DELETE FROM journeys.kpi_anomalies a
           WHERE a.tenant_id = $1 AND a.day BETWEEN $2 AND $3
             AND (a.kpi, a.day) NOT IN (SELECT * FROM unnest($4::text[], $5::date[]))""",
        tenant_id,
        first,
        last,
        [a.kpi for a in found],
        [a.day for a in found],
    )
    if not found:
        return 0
    await conn.execute(
        """INSERT INTO journeys.kpi_anomalies (tenant_id, kpi, day, value, baseline, robust_z, direction,
                                               history_days, detect_time)
           SELECT $1, f.* FROM unnest($2::text[], $3::date[], $4::float8[], $5::float8[], $6::float8[],
                                      $7::text[], $8::int[], $9::timestamptz[]) AS f
           ON CONFLICT (tenant_id, kpi, day) DO UPDATE
           SET value = excluded.value, baseline = excluded.baseline, robust_z = excluded.robust_z,
               direction = excluded.direction, history_days = excluded.history_days,
               detect_time = excluded.detect_time""",
        tenant_id,
        [a.kpi for a in found],
        [a.day for a in found],
        [a.value for a in found],
        [a.baseline for a in found],
        [a.robust_z for a in found],
        [a.direction for a in found],
        [a.history_days for a in found],
        [a.detect_time for a in found],
    )
    return len(found)


_COLUMNS = "kpi, day, value, baseline, robust_z, direction, history_days, detect_time"


async def page(
    conn: Connection,
    first: dt.date,
    last: dt.date,
    kpi: str,
    after: tuple[dt.date, str] | None,
    limit: int,
) -> list[Anomaly]:
    """Up to `limit` anomalies of the days `first` to `last` (of `kpi`, '' for all), newest day
    first then by KPI, after the (day, kpi) `after`."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM journeys.kpi_anomalies
            WHERE day BETWEEN $1 AND $2 AND ($3 = '' OR kpi = $3)
              AND ($4::date IS NULL OR day < $4 OR (day = $4 AND kpi > $5))
            ORDER BY day DESC, kpi LIMIT $6""",
        first,
        last,
        kpi,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [Anomaly(**dict(row)) for row in rows]


async def counts_since(conn: Connection, first: dt.date) -> dict[str, int]:
    """Flagged days per KPI from `first` on."""
    rows = await conn.fetch(
        "SELECT kpi, count(*) AS n FROM journeys.kpi_anomalies WHERE day >= $1 GROUP BY kpi", first
    )
    return {row["kpi"]: row["n"] for row in rows}
