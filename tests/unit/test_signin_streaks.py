"""Sign-in streaks (services/tasks/tasks/signin.py) against a from-scratch count of runs of days.

The oracle: a day's streak length is 1 plus the previous day's when the member signed in on the
previous day, else 1. The service never recounts like that: a sign-in stores its length from the
day before's row, a make-up rewrites only the days after it (`rejoined`), and a streak is read
from the last row (`streak_of`). Random histories (fixed seeds) check that the shortcuts agree
with the count; make-up days, the reward table and the task's day are swept exhaustively.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable

import pytest

from runtime.errors import FailedPrecondition, InvalidArgument
from services.tasks.tasks.definitions import Definition, SignInSpec, State, Task
from services.tasks.tasks.signin import ONE_DAY, check_makeup_day, rejoined, streak_of
from services.tasks.tasks.signin_store import SignInRow, StreakRow

UTC = dt.UTC
START = dt.date(2026, 1, 1)
TABLE = (5, 10, 15, 20, 30)


def task(makeups: int = 3, zone: str = "Asia/Shanghai", start: dt.datetime | None = None) -> Task:
    begins = start or dt.datetime(2025, 12, 31, 20, tzinfo=UTC)
    definition = Definition(
        task_id="daily",
        spec=SignInSpec(streak_rewards=TABLE, makeups_per_month=makeups),
        start_time=begins,
        end_time=dt.datetime(2030, 1, 1, tzinfo=UTC),
        time_zone=zone,
    )
    return Task(definition, State.ACTIVE, 1, 0, begins, begins)


def lengths(days: Iterable[dt.date]) -> dict[dt.date, int]:
    """Each signed day's streak length, counted from scratch."""
    out: dict[dt.date, int] = {}
    for day in sorted(set(days)):
        out[day] = out.get(day - ONE_DAY, 0) + 1
    return out


def row(day: dt.date, streak: int) -> SignInRow:
    at = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
    return SignInRow("daily", "m-1", day, streak, False, None, f"r-{day}", "", at)


def history(rng: random.Random, days: int, density: float) -> set[dt.date]:
    return {START + dt.timedelta(days=n) for n in range(days) if rng.random() < density}


@pytest.mark.parametrize("density", [0.3, 0.6, 0.9])
def test_a_make_up_rejoins_the_runs_around_it_as_a_recount_would(density: float) -> None:
    """A missed day filled: its length from the day before, and `rejoined` rewrites exactly the
    days after it whose length changes, to what a recount of all days gives."""
    rng = random.Random(f"makeups:{density}")
    checked = 0
    for _ in range(300):
        signed = history(rng, 45, density)
        missed = [START + dt.timedelta(days=n) for n in range(45)]
        missed = [d for d in missed if d not in signed]
        if not missed:
            continue
        day = rng.choice(missed)
        before = lengths(signed)
        streak = before.get(day - ONE_DAY, 0) + 1
        rewrites = dict(rejoined({d: row(d, n) for d, n in before.items()}, day, streak))
        after = lengths(signed | {day})
        assert after[day] == streak
        assert {**before, day: streak, **rewrites} == after
        assert set(rewrites) == {d for d in before if before[d] != after[d]}
        checked += 1
    assert checked > 200


def test_a_streak_read_from_the_last_row_is_the_recounted_one() -> None:
    """Over random histories, for every day: signed today, the current streak (today's or
    yesterday's run, else 0), the longest so far, the points the next sign-in earns (what a
    sign-in today, or tomorrow when signed today, is paid) and the make-ups left."""
    rng = random.Random("streaks")
    for _ in range(60):
        signed = history(rng, 60, rng.choice((0.2, 0.5, 0.8, 1.0)))
        counted = lengths(signed)
        makeups_used = rng.randrange(5)
        for n in range(61):
            today = START + dt.timedelta(days=n)
            past = [d for d in signed if d <= today]
            last = max(past, default=None)
            state = None
            if last is not None:
                longest = max(counted[d] for d in past)
                state = StreakRow("daily", last, counted[last], longest, makeups_used)
            got = streak_of(task(makeups=3), "m-1", state, today)
            current = counted.get(today, counted.get(today - ONE_DAY, 0))
            assert (got.signed_today, got.current, got.last_day) == (today in signed, current, last)
            assert got.longest == max((counted[d] for d in past), default=0)
            assert got.makeups_left == (max(3 - makeups_used, 0) if state else 3)
            # The next sign-in's length by the sign-in rule: the day before's plus one.
            following = today + ONE_DAY if today in signed else today
            next_length = counted.get(following - ONE_DAY, 0) + 1
            assert got.next_points == TABLE[min(next_length, len(TABLE)) - 1]


def test_the_reward_table_pays_its_last_entry_for_longer_streaks() -> None:
    rng = random.Random("tables")
    for size in range(1, 8):
        table = tuple(rng.randrange(1, 1000) for _ in range(size))
        spec = SignInSpec(streak_rewards=table)
        paid = [spec.points_for(day) for day in range(1, 21)]
        assert paid[:size] == list(table)
        assert paid[size:] == [table[-1]] * (20 - size)


def test_a_make_up_fills_an_earlier_day_of_this_month_since_the_task_began() -> None:
    """Every `today` of 2026 and 2027 against every day from 40 before to 1 after it: accepted
    exactly when the day is before today, in today's month and not before the task's first day
    (in the task's zone); refused as a whole when the task allows no make-ups."""
    begins = dt.datetime(2026, 3, 9, 17, tzinfo=UTC)  # 01:00 on 10 March in Shanghai
    first_day = dt.date(2026, 3, 10)
    allowing, refusing = task(makeups=2, start=begins), task(makeups=0, start=begins)
    for n in range(730):
        today = dt.date(2026, 1, 1) + dt.timedelta(days=n)
        for back in range(-1, 41):
            day = today - dt.timedelta(days=back)
            ok = day < today and (day.year, day.month) == (today.year, today.month) and day >= first_day
            if ok:
                check_makeup_day(allowing, day, today)
            else:
                with pytest.raises(InvalidArgument) as refused:
                    check_makeup_day(allowing, day, today)
                assert [v.field for v in refused.value.violations] == ["makeup_day"]
            with pytest.raises(FailedPrecondition):
                check_makeup_day(refusing, day, today)


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "", "America/New_York"])
def test_the_tasks_day_is_the_calendar_day_in_its_zone(zone: str) -> None:
    """Every half hour of 2026 (UTC): the day is the date at the zone's offset (+8 in Shanghai, 0
    without a zone); New York's is -4 hours between its 2026 DST changes (8 March 07:00 and
    1 November 06:00 UTC), else -5. One day for every member, whatever their own zone."""
    spring, autumn = dt.datetime(2026, 3, 8, 7, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, tzinfo=UTC)
    definition = task(zone=zone).definition
    at = dt.datetime(2026, 1, 1, tzinfo=UTC)
    while at.year == 2026:
        hours = -4 if spring <= at < autumn else -5
        if zone == "Asia/Shanghai":
            hours = 8
        elif not zone:
            hours = 0
        assert definition.day(at) == (at + dt.timedelta(hours=hours)).date(), at
        at += dt.timedelta(minutes=30)
