"""Field checks shared by every service, so the same mistake reads the same everywhere."""

from __future__ import annotations

import datetime as dt
import re

from google.protobuf import timestamp_pb2

from runtime.errors import Violations

NATURAL_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}\Z")
NATURAL_ID_RULE = "must be 1-64 characters from A-Z a-z 0-9 _ . : @ -"
# Clocks differ between the caller and us; a time a few minutes ahead is not an error.
CLOCK_SKEW = dt.timedelta(minutes=5)
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def natural_id(value: str, violations: Violations, path: str) -> None:
    if not NATURAL_ID.match(value):
        violations.add(path, NATURAL_ID_RULE)


def text(value: str, limit: int, violations: Violations, path: str) -> None:
    if len(value) > limit:
        violations.add(path, f"must be at most {limit} characters")


def past_time(value: dt.datetime | None, now: dt.datetime, violations: Violations, path: str) -> None:
    """A required moment that has happened: set, not before 2000, not in the future."""
    if value is None:
        violations.add(path, "is required")
    elif value > now + CLOCK_SKEW:
        violations.add(path, "must not be in the future")
    elif value < EARLIEST:
        violations.add(path, f"must not be before {EARLIEST.date()}")


def timestamp(value: timestamp_pb2.Timestamp, violations: Violations, path: str) -> dt.datetime | None:
    """A protobuf Timestamp as an aware UTC datetime, or a violation when Python cannot hold it
    (nanos outside 0-999,999,999, seconds before year 1 or after 9999)."""
    try:
        return value.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        violations.add(path, "is not a valid timestamp")
        return None
