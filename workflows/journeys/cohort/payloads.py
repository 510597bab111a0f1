"""Inputs, state and results of the cohort workflow and its activities (Temporal-serialisable dataclasses)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from workflows.journeys.payloads import MemberEvent, StepFigures

# Members per batch activity and per snapshot page.
DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 10_000
# Activity calls per run before the workflow continues as new (its history stays bounded).
DEFAULT_CALLS_PER_RUN = 400


def cohort_workflow_id(journey_key: str, snapshot_id: str) -> str:
    return f"journey/{journey_key}/snapshot/{snapshot_id}"


@dataclass(frozen=True)
class CohortEvent:
    """An event of one member of the cohort (an order: the goal; an exit criterion)."""

    member_id: str
    event: MemberEvent


@dataclass
class CohortState:
    """What one run hands the next through continue-as-new."""

    cohort_id: int
    version: int
    snapshot_id: str
    step_ids: tuple[str, ...] = ()
    # The number of the next activity call (a retried call keeps its number).
    seq: int = 0
    # Snapshot pages loaded and batches taken.
    pages: int = 0
    batches: int = 0
    # An advance call that failed for good (the broadcast paused): repeated under its number, since
    # it may hold claimed sends.
    retry_seq: int | None = None
    page_token: str = ""
    loaded: bool = False
    paused: bool = False
    # Funnel counters: "entered:treated", "step:hello:sent", "deferral:quiet_hours", ...
    figures: dict[str, int] = field(default_factory=dict)
    # Member events not yet applied.
    events: list[CohortEvent] = field(default_factory=list)
    # The goal's attribution window of the last member to enter ends then (None: no goal).
    measure_until: dt.datetime | None = None
    start_time: dt.datetime | None = None
    runs: int = 1


@dataclass(frozen=True)
class CohortInput:
    """What starts a broadcast: `temporal workflow start --type CohortJourney --input` takes this
    as JSON. The workflow id must be `journey/{journey_key}/snapshot/{snapshot_id}`."""

    tenant_id: str
    journey_key: str
    # `snapshots/{snapshot_id}`; empty: the snapshot the definition's broadcast entry names.
    snapshot: str = ""
    # 0: the live version when the broadcast starts; another version is refused unless it is live.
    version: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    calls_per_run: int = DEFAULT_CALLS_PER_RUN
    # Set by continue-as-new only.
    state: CohortState | None = None


@dataclass(frozen=True)
class OpenRequest:
    tenant_id: str
    journey_key: str
    version: int
    snapshot: str
    workflow_id: str
    first_run_id: str


@dataclass(frozen=True)
class Opened:
    accepted: bool
    cohort_id: int = 0
    version: int = 0
    snapshot_id: str = ""
    step_ids: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class BatchRequest:
    """One activity call on the cohort; `seq` makes a retried call repeat nothing."""

    tenant_id: str
    cohort_id: int
    seq: int
    size: int = DEFAULT_BATCH_SIZE
    # The how-many-th call of its kind (from 1), which decides when statistics are refreshed.
    ordinal: int = 0
    # load: the snapshot page to read.
    page_token: str = ""
    # apply_events: the events.
    events: tuple[CohortEvent, ...] = ()
    # finish: completed | stopped.
    state: str = ""


@dataclass(frozen=True)
class BatchOutcome:
    figures: Mapping[str, int] = field(default_factory=dict)
    # advance: the earliest time an active member may take its next step (None: all walked).
    next_due: dt.datetime | None = None
    # load: the next page ('' after the last one) and when the goal's window of its members ends.
    next_page_token: str = ""
    measure_until: dt.datetime | None = None


@dataclass(frozen=True)
class CohortStep(StepFigures):
    """A step's figures for the whole cohort; a split's members per arm in `arms`."""

    arms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmFigures:
    entered: int = 0
    converted: int = 0
    gmv_minor: int = 0
    conversion_rate: float = 0.0


@dataclass(frozen=True)
class CohortFunnel:
    """What the `funnel` query and the workflow's result report for the whole cohort."""

    journey_key: str
    snapshot: str
    version: int
    cohort_id: int
    # opening | not_started | loading | active | paused | measuring | completed | stopped
    state: str
    detail: str = ""
    # Members the re-entry policy kept out (in this journey already, or before).
    not_enrolled: int = 0
    treated: ArmFigures = field(default_factory=ArmFigures)
    holdout: ArmFigures = field(default_factory=ArmFigures)
    # Conversion rate of the treated minus that of the holdout, in percentage points.
    uplift_points: float = 0.0
    steps: tuple[CohortStep, ...] = ()
    deferrals: dict[str, int] = field(default_factory=dict)
    snapshot_arms: dict[str, int] = field(default_factory=dict)
    exited: int = 0
    # Events for members not in the cohort or no longer active.
    events_ignored: int = 0
    # Events signalled and not applied yet.
    pending_events: int = 0
