"""Input of the journey control workflow and its activity (Temporal-serialisable dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# pause: hold before the next step; resume: go on (also what archiving without stopping sends, so
# members held by a pause finish); stop: cancel the runs (they record `stopped`).
Action = Literal["pause", "resume", "stop"]


def control_workflow_id(tenant_id: str, journey_key: str, revision: int, action: Action) -> str:
    """One run per state revision and action: repeating a transition (same revision) starts nothing."""
    return f"journey-control/{tenant_id}/{journey_key}/{revision}/{action}"


@dataclass(frozen=True)
class ControlInput:
    """`temporal workflow start --type JourneyControl --input` takes this as JSON."""

    tenant_id: str
    journey_key: str
    # The journey state's revision this run carries out; a run whose revision is no longer the
    # journey's current one stops, since the newer revision's run does the work.
    revision: int
    action: Action


@dataclass(frozen=True)
class ControlResult:
    members: int = 0
    cohorts: int = 0
    # True when a newer state revision took over before this run was through.
    superseded: bool = False
