"""What the anomaly check's workflow and activities exchange (Temporal-serialisable dataclasses;
days as ISO dates, `YYYY-MM-DD`)."""

from __future__ import annotations

from dataclasses import dataclass, field

WORKFLOW = "KpiAnomalyCheck"
FETCH_SERIES = "anomalies.fetch_series"
STORE_FINDINGS = "anomalies.store_findings"
KPIS = ("orders", "gmv", "new_members", "send_failure_rate", "sign_ins")
DEFAULT_TIME_ZONE = "Asia/Shanghai"
# Yesterday and the six days before: a run missed (Temporal down, a failed day) is caught up.
DAYS_CHECKED = 7


@dataclass(frozen=True)
class CheckInput:
    """One check of a tenant: what its schedule starts (`temporal workflow start --input` takes this
    as JSON). `last_day` '' means yesterday in `time_zone` when the fetch runs."""

    tenant_id: str
    time_zone: str = DEFAULT_TIME_ZONE
    last_day: str = ""
    days: int = DAYS_CHECKED


@dataclass(frozen=True)
class SeriesRequest:
    tenant_id: str
    time_zone: str
    last_day: str
    days: int


@dataclass(frozen=True)
class Series:
    """Every KPI's daily values from `first_day` to `last_day` (one per day, None: no value that
    day), of which the days from `first_checked` on are checked."""

    first_day: str
    first_checked: str
    last_day: str
    values: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    kpi: str
    day: str
    value: float
    baseline: float
    robust_z: float
    direction: str
    history_days: int


@dataclass(frozen=True)
class StoreRequest:
    """The days checked (`first_checked` to `last_day`) and what was flagged in them: the stored
    flags of those days become exactly these."""

    tenant_id: str
    first_checked: str
    last_day: str
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class CheckResult:
    first_checked: str
    last_day: str
    # Checked (kpi, day) pairs and those flagged.
    checked: int
    flagged: int
    # A line for the Temporal UI and `temporal workflow show`.
    summary: str
