"""What a periodic job's workflow and activities exchange."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

RECOMPUTE_TAGS = "recompute_tags"
EXPIRE_POINTS = "expire_points"
EVALUATE_LEVELS = "evaluate_levels"
GRANT_LEVEL_BENEFITS = "grant_level_benefits"
JOBS = (RECOMPUTE_TAGS, EXPIRE_POINTS, EVALUATE_LEVELS, GRANT_LEVEL_BENEFITS)


@dataclass(frozen=True)
class JobInput:
    """One run of `job` (one of JOBS) for one tenant: what a schedule's action starts."""

    tenant_id: str
    job: str


@dataclass(frozen=True)
class JobRequest:
    """The activity's input: the job's tenant and the moment the run stands for (the workflow's
    time, so a run that waits out a retry still acts for when it was scheduled)."""

    tenant_id: str
    as_of: dt.datetime


@dataclass(frozen=True)
class JobResult:
    job: str
    # A line for the Temporal UI and `temporal workflow show`: what the run changed.
    summary: str
