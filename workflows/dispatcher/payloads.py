"""Inputs, results and status of the dispatcher workflow and its activities (Temporal dataclasses)."""

from __future__ import annotations

import datetime as dt
from dataclasses import astuple, dataclass, field

from workflows.journeys.report import JourneyReport

# Where a dispatcher with no stored cursor starts reading a feed.
START_AT = ("end", "beginning")


@dataclass(frozen=True)
class DispatchCounts:
    """What rounds did: feed entries read and dispatched (of both feeds); those that are events a
    followed journey enters on or waits for (back-filled ones aside); journey runs started;
    entries that would have started one but did not (re-entry policy, already running, a replayed
    entry, or too old); `event` signals delivered to running journeys; of the skipped, those whose
    fact happened before the journey's `max_entry_delay` (history: it enrols nobody); `event`
    signals delivered to the open cohorts (broadcasts) the event's member is active in; events
    of back-filled entries (history an import loaded), which neither enrol nor signal anyone."""

    entries: int = 0
    events: int = 0
    started: int = 0
    skipped: int = 0
    signalled: int = 0
    too_old: int = 0
    # Last, with defaults: totals carried by runs recorded before them decode as they were.
    cohort_signals: int = 0
    backfilled: int = 0

    def plus(self, other: DispatchCounts) -> DispatchCounts:
        return DispatchCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class DispatcherInput:
    """`temporal workflow start --type Dispatcher --input` takes this as JSON; only the tenant is
    required."""

    tenant_id: str
    # Only these journeys (empty: every journey of the tenant, active, paused or archived: those
    # whose entry is an event or audience, and the open cohorts of broadcasts).
    journey_keys: tuple[str, ...] = ()
    # Where a dispatcher without a stored cursor starts: "end" (what happens from now on) or
    # "beginning" (every entry the feeds still hold).
    start_at: str = "end"
    # Most entries read from each feed per round (1-1000).
    batch_size: int = 1000
    # How long a round waits for new entries before it ends empty (the activity polls meanwhile).
    idle_seconds: float = 10.0
    # How often the journeys' figures of the `funnel` query are read again (0: never).
    report_every_seconds: int = 60
    # Carried across continue-as-new: rounds and counts since the first start, and a pause.
    rounds: int = 0
    totals: DispatchCounts = field(default_factory=DispatchCounts)
    paused: bool = False


@dataclass(frozen=True)
class DispatchRequest:
    tenant_id: str
    dispatcher: str
    journey_keys: tuple[str, ...]
    start_at: str
    batch_size: int
    idle_seconds: float


@dataclass(frozen=True)
class DispatchResult:
    tagging_cursor: str
    audience_cursor: str
    counts: DispatchCounts = field(default_factory=DispatchCounts)


@dataclass(frozen=True)
class ReportRequest:
    tenant_id: str
    journey_keys: tuple[str, ...]


@dataclass(frozen=True)
class DispatcherStatus:
    """What the `status` query answers."""

    tenant_id: str
    # running | paused
    state: str
    tagging_cursor: str
    audience_cursor: str
    rounds: int
    totals: DispatchCounts
    last_round_time: dt.datetime | None = None
    last_round: DispatchResult | None = None


@dataclass(frozen=True)
class DispatcherFunnel:
    """What the `funnel` query answers: each journey's figures, as the report command prints them."""

    tenant_id: str
    report_time: dt.datetime | None
    journeys: tuple[JourneyReport, ...] = ()
