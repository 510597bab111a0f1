"""The statistics of the KPI anomaly check, with no I/O (the workflow runs them).

A day's value is compared with the same weekday of up to MAX_WEEKS weeks before it (weekly rhythm:
Saturdays are compared with Saturdays), robustly, so one earlier anomaly does not hide the next:

    robust_z = (value - median) / max(1.4826 x MAD, floor)

where MAD is the median absolute deviation of those earlier values from their median (1.4826 x MAD
estimates a standard deviation for normal data) and the floor keeps a flat history (MAD 0) from
dividing by zero or flagging a change of one unit: MIN_SCALE of the KPI (one order, one member,
one yuan, one percentage point of failures) or RELATIVE_FLOOR of the median, whichever is larger.
A day beyond THRESHOLD is flagged, `high` or `low`. A day without a value (a send failure rate of
a day without answered sends) is not checked and is no history either; a day with fewer than
MIN_HISTORY earlier values is not checked.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAD_TO_SIGMA = 1.4826
THRESHOLD = 3.0
MAX_WEEKS = 8
MIN_HISTORY = 4
RELATIVE_FLOOR = 0.05
# The smallest spread each KPI is measured in: one order, one yuan (GMV is in minor units), one
# member, one sign-in, one percentage point of failed sends.
MIN_SCALE: Mapping[str, float] = {
    "orders": 1.0,
    "gmv": 100.0,
    "new_members": 1.0,
    "send_failure_rate": 0.01,
    "sign_ins": 1.0,
}
WEEK = dt.timedelta(days=7)


@dataclass(frozen=True)
class Score:
    value: float
    baseline: float
    robust_z: float
    history_days: int

    @property
    def flagged(self) -> bool:
        return abs(self.robust_z) > THRESHOLD

    @property
    def direction(self) -> str:
        return "high" if self.robust_z > 0 else "low"


def score(value: float, history: Sequence[float], min_scale: float) -> Score | None:
    """The value against its history; None when the history is shorter than MIN_HISTORY."""
    if len(history) < MIN_HISTORY:
        return None
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    scale = max(MAD_TO_SIGMA * mad, RELATIVE_FLOOR * abs(median), min_scale)
    return Score(float(value), float(median), (value - median) / scale, len(history))


def same_weekdays(values: Mapping[dt.date, float | None], day: dt.date) -> list[float]:
    """The values of the same weekday in the MAX_WEEKS weeks before `day` that have one."""
    earlier = (values.get(day - k * WEEK) for k in range(1, MAX_WEEKS + 1))
    return [v for v in earlier if v is not None]


def check_day(kpi: str, values: Mapping[dt.date, float | None], day: dt.date) -> Score | None:
    """The day's score, or None when it is not checked (no value, too little history)."""
    value = values.get(day)
    if value is None:
        return None
    return score(value, same_weekdays(values, day), MIN_SCALE[kpi])


def history_start(first_checked: dt.date) -> dt.date:
    """The first day a check from `first_checked` on needs."""
    return first_checked - MAX_WEEKS * WEEK


def checked_days(last: dt.date, days: int) -> list[dt.date]:
    """The `days` days ending with `last`, oldest first."""
    return [last - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]
