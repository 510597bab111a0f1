"""The span of time the tasks service deals in, so no date arithmetic on a caller's time overflows.

Python holds years 1-9999, and a week, a grace period or a time zone added to a time near either
end overflows (INTERNAL). Points, tasks and levels are about now, give or take decades: a task
runs, a leaderboard is read and a run acts between 2000-01-01 and 2100-01-01, and inside that span
every step is safe. A run (expiry, level evaluation) acts at a time that has happened: acting
ahead of the clock would expire points or downgrade members irreversibly before their time.
"""

from __future__ import annotations

import datetime as dt

from runtime import checks
from runtime.errors import Violations

EARLIEST = checks.EARLIEST
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def within(value: dt.datetime, v: Violations, path: str) -> bool:
    """Whether a time is in [EARLIEST, LATEST); a violation of `path` when not."""
    if value < EARLIEST:
        v.add(path, f"must not be before {EARLIEST.date()}")
    elif value >= LATEST:
        v.add(path, f"must be before {LATEST.date()}")
    else:
        return True
    return False


def as_of(value: dt.datetime | None, now: dt.datetime, v: Violations, path: str = "as_of") -> dt.datetime:
    """When a run acts: `now` unless asked, else a time that has happened by `now` (give or take
    the clock skew `checks.CLOCK_SKEW`), not before EARLIEST."""
    if value is None:
        return now
    checks.past_time(value, now, v, path)
    return value
