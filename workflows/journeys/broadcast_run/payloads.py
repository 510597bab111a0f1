"""Inputs and results of the BroadcastRun workflow and its activity (Temporal-serialisable dataclasses)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# audience's CreateSnapshot takes request ids of up to this many characters.
MAX_SNAPSHOT_REQUEST_ID = 128


def schedule_id(tenant_id: str, journey_key: str) -> str:
    """The journey's Temporal Schedule: one per tenant and journey (schedules are per namespace)."""
    return f"broadcast/{tenant_id}/{journey_key}"


def scheduled_run_id(tenant_id: str, journey_key: str) -> str:
    """The id the schedule starts its runs under; Temporal appends each run's time (`-2026-...Z`)."""
    return f"{schedule_id(tenant_id, journey_key)}/scheduled"


def requested_run_id(tenant_id: str, journey_key: str, request_id: str) -> str:
    """The id of the run StartBroadcast starts for `request_id`: one run per request id."""
    return f"{schedule_id(tenant_id, journey_key)}/request/{request_id}"


def snapshot_request_id(run_workflow_id: str) -> str:
    """CreateSnapshot's request id for a run: its workflow id, so a retried activity (or a run
    started again under the same id) gets the first snapshot back. Hashed when too long."""
    if len(run_workflow_id) <= MAX_SNAPSHOT_REQUEST_ID:
        return run_workflow_id
    return f"broadcast-run:{hashlib.sha256(run_workflow_id.encode()).hexdigest()}"


@dataclass(frozen=True)
class BroadcastInput:
    """What starts a broadcast's run (`temporal workflow start --type BroadcastRun --input`)."""

    tenant_id: str
    journey_key: str
    # 0: the live version when the run starts.
    version: int = 0


@dataclass(frozen=True)
class PrepareRequest:
    tenant_id: str
    journey_key: str
    version: int
    # The run's workflow id: the snapshot's request id derives from it.
    workflow_id: str


@dataclass(frozen=True)
class Prepared:
    """The snapshot to broadcast to (`snapshots/{id}`), or why there is none."""

    version: int
    snapshot: str = ""
    # True when this run made the snapshot (False: the entry's fixed one).
    created: bool = False
    reason: str = ""


@dataclass(frozen=True)
class BroadcastOutcome:
    """A run's result: the snapshot, the cohort's workflow and how the cohort ended."""

    journey_key: str
    version: int
    snapshot: str = ""
    cohort_workflow_id: str = ""
    # The cohort's end (completed | stopped | not_started), or not_started when no cohort ran:
    # the journey was not active, or the snapshot was broadcast already (see `detail`).
    state: str = "not_started"
    detail: str = ""
    cohort_id: int = 0
