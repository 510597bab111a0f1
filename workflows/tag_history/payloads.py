"""What the history rebuild's workflow, its activity and the tagging service exchange."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

WORKFLOW = "TagHistoryRebuild"
RECOMPUTE_AT = "tag_history.recompute_at"
# The query a running rebuild answers with its Progress (also kept in the memo, under MEMO_KEY, so
# it can be read while no worker runs: `temporal workflow describe` shows it).
PROGRESS_QUERY = "progress"
MEMO_KEY = "progress"
# The memo key of the rebuild's arguments (GetTagHistoryRebuild answers them; a retry's digest is
# compared with theirs).
ARGUMENTS_KEY = "rebuild"
# About 8 history events a step: 200 steps keep a run near 1,600 events, far below the limits.
STEPS_PER_RUN = 200


def workflow_id(tenant_id: str, request_id: str) -> str:
    return f"tag-history/{tenant_id}/{request_id}"


@dataclass(frozen=True)
class RebuildInput:
    """One rebuild, as the tagging service resolved it (the dimensions listed at the call, not
    looked up again by the workflow), and where it stands: `done[i]` instants of `dimensions[i]`
    are recomputed (what a run hands the next one when it continues as new)."""

    tenant_id: str
    request_id: str
    dimensions: list[str]
    start: dt.datetime
    end: dt.datetime
    step_seconds: int
    # The arguments' digest: the same request id with other arguments is ALREADY_EXISTS.
    digest: str
    done: list[int] = field(default_factory=list)
    # Tag holdings the evaluations so far added and removed.
    added: int = 0
    removed: int = 0
    # Steps a run takes before it continues as new.
    steps_per_run: int = STEPS_PER_RUN

    def instants(self) -> int:
        """How many instants start, start + step, ... lie before end."""
        span = (self.end - self.start).total_seconds()
        return max(0, -int(-span // self.step_seconds))

    def instant(self, index: int) -> dt.datetime:
        return self.start + dt.timedelta(seconds=index * self.step_seconds)

    def progress(self) -> Progress:
        return Progress(
            self.instants() * len(self.dimensions), sum(self.done), added=self.added, removed=self.removed
        )

    def memo(self) -> dict[str, object]:
        """What a run keeps in its memo: the arguments and the progress."""
        arguments = {
            "dimensions": self.dimensions,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "step_seconds": self.step_seconds,
            "digest": self.digest,
        }
        return {ARGUMENTS_KEY: arguments, MEMO_KEY: self.progress()}


@dataclass(frozen=True)
class Progress:
    """Evaluations (instants times dimensions) to run and done; what GetTagHistoryRebuild reports."""

    total_steps: int
    done_steps: int
    added: int = 0
    removed: int = 0


@dataclass(frozen=True)
class RecomputeAt:
    """The activity's input: recompute one dimension as of one instant."""

    tenant_id: str
    dimension: str
    as_of: dt.datetime


@dataclass(frozen=True)
class Recomputed:
    added: int
    removed: int
