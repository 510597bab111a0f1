"""When points expire (services/tasks/points/ledger.py `Expiry`, `expiry`), over many instants.

Month and year ends are on the UTC calendar whatever the offset of the time given, so a member in
Shanghai and one in New York earning at the same instant lose their points at the same instant.
The oracle counts months and years by hand; the instants are every month boundary of 2000-2099
(give or take a microsecond), the DST changes of New York and Berlin, and a fixed-seed sample of
the span the tasks service accepts, each given in UTC and in three other zones.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from runtime.errors import InvalidArgument, Violations
from services.tasks.points.ledger import MAX_EXPIRY_DAYS, Expiry, ExpiryPolicy, expiry

UTC = dt.UTC
ZONES = (UTC, ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin"))
TICK = dt.timedelta(microseconds=1)


def instants() -> Iterator[dt.datetime]:
    rng = random.Random("expiry")
    for year in range(2000, 2100):
        for month in range(1, 13):
            start = dt.datetime(year, month, 1, tzinfo=UTC)
            yield from (start - TICK, start, start + TICK, start + dt.timedelta(hours=12))
    for change in ("2026-03-08T07:00", "2026-11-01T06:00", "2026-03-29T01:00", "2026-10-25T01:00"):
        at = dt.datetime.fromisoformat(change).replace(tzinfo=UTC)
        yield from (at - TICK, at, at + dt.timedelta(minutes=30))
    first, span = dt.datetime(2000, 1, 1, tzinfo=UTC), 100 * 365 * 86400
    for _ in range(3000):
        yield first + dt.timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6))


def given_in_each_zone() -> Iterator[dt.datetime]:
    for at in instants():
        if at >= dt.datetime(2000, 1, 1, tzinfo=UTC):
            for zone in ZONES:
                yield at.astimezone(zone)


def first_of_next_month(at: dt.datetime) -> dt.datetime:
    utc = at.astimezone(UTC)
    months = utc.year * 12 + utc.month  # the month after utc's, counted from year 0 (0-based)
    return dt.datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)


def test_end_of_month_is_the_first_instant_of_the_next_utc_month() -> None:
    policy = Expiry(ExpiryPolicy.END_OF_MONTH)
    for available in given_in_each_zone():
        got = policy.expire_time(available)
        assert got == first_of_next_month(available), available
        assert got is not None and got.utcoffset() == dt.timedelta(0)
        # Never at once, never more than a month later, and the last moment before it is still
        # in the month the points became available in (UTC).
        assert dt.timedelta(0) < got - available <= dt.timedelta(days=31)
        before, earned = (got - TICK).astimezone(UTC), available.astimezone(UTC)
        assert (before.year, before.month) == (earned.year, earned.month)


def test_end_of_year_is_the_first_instant_of_the_next_utc_year() -> None:
    policy = Expiry(ExpiryPolicy.END_OF_YEAR)
    for available in given_in_each_zone():
        got = policy.expire_time(available)
        assert got == dt.datetime(available.astimezone(UTC).year + 1, 1, 1, tzinfo=UTC), available
        assert got is not None and dt.timedelta(0) < got - available <= dt.timedelta(days=366)


def test_rolling_days_are_exact_24_hour_days_across_dst() -> None:
    """`days` times 86,400 seconds after the instant, even when a DST change lies between (a
    member in New York earning at 09:00 before the spring change loses the points at 10:00)."""
    rng = random.Random("rolling")
    for available in given_in_each_zone():
        days = rng.choice((1, 2, 7, 30, 90, 365, rng.randrange(1, MAX_EXPIRY_DAYS + 1)))
        got = Expiry(ExpiryPolicy.ROLLING_DAYS, days).expire_time(available)
        assert got is not None
        assert (got - available).total_seconds() == days * 86400
    nine = dt.datetime(2026, 3, 7, 9, tzinfo=ZoneInfo("America/New_York"))
    got = Expiry(ExpiryPolicy.ROLLING_DAYS, 1).expire_time(nine)
    assert got is not None and got.astimezone(ZoneInfo("America/New_York")).hour == 10


def test_never_is_none() -> None:
    for available in instants():
        assert Expiry(ExpiryPolicy.NEVER).expire_time(available) is None


def test_examples_read_as_the_api_documents_them() -> None:
    # 23:30 in New York on 31 January is 04:30 UTC on 1 February: the points last all February.
    eve = dt.datetime(2027, 1, 31, 23, 30, tzinfo=ZoneInfo("America/New_York"))
    assert Expiry(ExpiryPolicy.END_OF_MONTH).expire_time(eve) == dt.datetime(2027, 3, 1, tzinfo=UTC)
    # 07:00 in Shanghai on 1 March 2028 is 23:00 UTC on 29 February (a leap year).
    leap = dt.datetime(2028, 3, 1, 7, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert Expiry(ExpiryPolicy.END_OF_MONTH).expire_time(leap) == dt.datetime(2028, 3, 1, tzinfo=UTC)
    december = dt.datetime(2099, 12, 31, 23, 59, tzinfo=UTC)
    assert Expiry(ExpiryPolicy.END_OF_MONTH).expire_time(december) == dt.datetime(2100, 1, 1, tzinfo=UTC)
    assert Expiry(ExpiryPolicy.END_OF_YEAR).expire_time(december) == dt.datetime(2100, 1, 1, tzinfo=UTC)


def checked(policy: int, days: int, **options: object) -> tuple[Expiry, list[str]]:
    v = Violations()
    got = expiry(v, policy, days, **options)  # type: ignore[arg-type]
    try:
        v.raise_if_any()
    except InvalidArgument as error:
        return got, [violation.field for violation in error.violations]
    return got, []


def test_a_requests_expiry_fields_are_checked_together() -> None:
    """Every policy number -1..6 with days around each bound, with and without a default and a
    prefix: ROLLING_DAYS takes 1-3650 days, the others take none, 0 means the default if any."""
    policies = range(-1, 7)
    day_counts = (-1, 0, 1, 2, 30, MAX_EXPIRY_DAYS - 1, MAX_EXPIRY_DAYS, MAX_EXPIRY_DAYS + 1)
    for policy in policies:
        for days in day_counts:
            for default in (None, ExpiryPolicy.END_OF_YEAR, ExpiryPolicy.ROLLING_DAYS):
                for prefix in ("", "task."):
                    chosen = default if policy == 0 and default is not None else policy
                    if chosen not in (1, 2, 3, 4):
                        expected, fields = Expiry(ExpiryPolicy.NEVER), ["expiry_policy"]
                    else:
                        rolling = chosen == ExpiryPolicy.ROLLING_DAYS
                        bad = not 1 <= days <= 3650 if rolling else days != 0
                        expected, fields = Expiry(ExpiryPolicy(chosen), days), ["expiry_days"] if bad else []
                    got = checked(policy, days, default=default, prefix=prefix)
                    assert got == (expected, [prefix + f for f in fields]), (policy, days, default, prefix)
