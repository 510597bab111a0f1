"""Daily sign-in: one sign-in per task-calendar day, streaks, the streak reward table, make-ups.

A day is a calendar day in the task's time zone, the same for every member, so a member cannot
sign in twice in one day by claiming another zone (the request carries no zone). Each sign-in row
keeps the streak's length on its day: the previous day's plus one, or 1 after a missed day, and
the day's points are the reward table's entry for that length (later days earn its last entry).
A make-up fills a missed earlier day of the current month, up to the task's monthly allowance:
it earns nothing itself but joins the runs around it, whose later days' lengths are rewritten
(points already paid for them stay as they were).

Today's sign-in is the hot path (every member, every day): it runs as one SQL function in one
round trip (`tasks.sign_in`, migration 0019), as EarnPoints does, and the sign-ins of one task that
arrive while earlier ones are at the database go together as one statement (`tasks.sign_in_batch`,
migration 0023; decision 154); make-ups, rare, run here in a transaction of their own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from runtime import metrics
from runtime.batching import KeyedBatcher
from runtime.db import GROUP_SETTLED_ALONE, Connection, Database
from runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Violations,
)
from services.tasks.badges import badges
from services.tasks.points import ledger, ledger_store
from services.tasks.points.ledger import Reason
from services.tasks.tasks import completion_store, completions, signin_store
from services.tasks.tasks.completion_store import CompletionRow
from services.tasks.tasks.definitions import Kind, SignInSpec, Task, TaskDefinitions
from services.tasks.tasks.member_calls import MemberCalls
from services.tasks.tasks.participation import Participation
from services.tasks.tasks.signin_store import SignInRow, StreakRow

ONE_DAY = dt.timedelta(days=1)
# Groups of one task's sign-ins at the database at once, each of at most MAX_GROUP members. One: the
# calls arriving while a group is at the database all go in the next, so groups are as big as the
# load makes them, and the machine's CPU, not PostgreSQL's waits, is what sign-ins queue on (A/B at
# concurrency 16 over four tasks: 1.31x the sign-ins of two in flight, decision 161). Each group
# takes the budget once, so groups never deadlock on it (decision 140).
GROUPS_IN_FLIGHT = 1
MAX_GROUP = 64


@dataclass(frozen=True)
class SignInRecord:
    sign_in: SignInRow
    completion: CompletionRow | None


@dataclass(frozen=True)
class Streak:
    task_id: str
    member_id: str
    current: int
    longest: int
    signed_today: bool
    last_day: dt.date | None
    makeups_left: int
    next_points: int


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def streak_of(task: Task, member_id: str, row: StreakRow | None, today: dt.date) -> Streak:
    """The member's streak as of `today` from their last sign-in up to today (`row`)."""
    spec = task.definition.spec
    assert isinstance(spec, SignInSpec)
    last_day = row.last_day if row else None
    signed_today = last_day == today
    alive = last_day is not None and last_day >= today - ONE_DAY
    current = row.last_streak if row and alive else 0
    return Streak(
        task_id=task.task_id,
        member_id=member_id,
        current=current,
        longest=row.longest if row else 0,
        signed_today=signed_today,
        last_day=last_day,
        makeups_left=max(spec.makeups_per_month - (row.makeups if row else 0), 0),
        next_points=spec.points_for(current + 1),
    )


def rejoined(by_day: Mapping[dt.date, SignInRow], day: dt.date, streak: int) -> list[tuple[dt.date, int]]:
    """The new streak lengths of the consecutive days after `day` once `day` has length `streak`."""
    later: list[tuple[dt.date, int]] = []
    following, length = day + ONE_DAY, streak + 1
    while following in by_day:
        later.append((following, length))
        following, length = following + ONE_DAY, length + 1
    return later


async def _award_milestones(
    conn: Connection, tenant_id: str, task: Task, member_id: str, streak: int, now: dt.datetime
) -> None:
    """Awards the badges of the milestones a streak of `streak` days reached (held ones stay)."""
    spec = task.definition.spec
    assert isinstance(spec, SignInSpec)
    for m in spec.milestones:
        if m.streak_days <= streak:
            source = f"streak {task.task_id} {m.streak_days} days"
            await badges.award(conn, tenant_id, member_id, [m.badge], source, now)


def _terms(task: Task, now: dt.datetime) -> signin_store.DayTerms:
    """What tasks.sign_in needs of the task for a sign-in at `now`."""
    d = task.definition
    spec = d.spec
    assert isinstance(spec, SignInSpec)
    today = d.day(now)
    milestones = [(m.streak_days, badges.badge_id_of(m.badge)) for m in spec.milestones]
    return signin_store.DayTerms(
        task_id=task.task_id,
        version=task.version,
        rewards=spec.streak_rewards,
        claim=d.claim_required,
        per_day=d.limits.per_day,
        total=d.total_limit(),
        cycle=d.cycle_of(today),
        expire_time=d.expiry.expire_time(now),
        milestones=[(days, badge) for days, badge in milestones if badge is not None],
        task_badge=badges.badge_id_of(d.badge) if d.badge else None,
    )


def _group_of(r: signin_store.DayRequest) -> tuple[object, ...]:
    """What sign-ins must share to go as one statement: the task's terms (but for the expiry,
    which each carries) and the day."""
    t = r.terms
    limits = (t.claim, t.per_day, t.total, t.cycle)
    return (t.version, tuple(t.rewards), limits, tuple(t.milestones), t.task_badge, r.day)


def _alone_decides(error: asyncpg.PostgresError) -> bool:
    """Whether a group's failure is one that signing its members in one by one settles: the group
    refused as a whole (budget, version), a request id a concurrent call took, a conflict."""
    if isinstance(error, GROUP_SETTLED_ALONE):
        return True
    return getattr(error, "sqlstate", None) == signin_store.BATCH_REFUSED


def _retried(first: SignInRow, paid: CompletionRow | None, request_id: str, digest: str) -> SignInRecord:
    """A retried request's first result; ALREADY_EXISTS when its id was used for another request."""
    if first.content_hash != digest:
        raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
    return SignInRecord(first, paid)


def check_makeup_day(task: Task, day: dt.date, today: dt.date) -> None:
    """A make-up fills a day before today in the current month, not before the task began."""
    spec = task.definition.spec
    assert isinstance(spec, SignInSpec) and task.definition.start_time is not None
    if spec.makeups_per_month == 0:
        raise FailedPrecondition(f"tasks/{task.task_id} allows no make-up sign-ins")
    if day >= today:
        raise InvalidArgument.field("makeup_day", f"must be a day before today ({today})")
    if month_start(day) != month_start(today):
        raise InvalidArgument.field(
            "makeup_day", f"must be earlier in the current month (from {month_start(today)})"
        )
    if day < task.definition.day(task.definition.start_time):
        raise InvalidArgument.field("makeup_day", "must not be before the task started")


class SignIns(MemberCalls):
    def __init__(self, db: Database, definitions: TaskDefinitions, participation: Participation) -> None:
        super().__init__(db, definitions, participation)
        # (tenant, task) -> today's sign-ins arriving together.
        self._days: KeyedBatcher[tuple[str, str], signin_store.DayRequest, signin_store.DaySignIn] = (
            KeyedBatcher(self._sign_in_days, in_flight=GROUPS_IN_FLIGHT, max_size=MAX_GROUP)
        )

    async def sign_in(
        self,
        tenant_id: str,
        task_id: str,
        member_id: str,
        makeup_day: dt.date | None,
        request_id: str,
        now: dt.datetime,
    ) -> SignInRecord:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        digest = ledger.content_hash("sign-in", task_id, member_id, makeup_day or "")

        return await self._act(
            tenant_id,
            task_id,
            Kind.SIGN_IN,
            member_id,
            now,
            lambda task: self._write(tenant_id, task, member_id, makeup_day, request_id, digest, now),
        )

    async def _write(
        self,
        tenant_id: str,
        task: Task,
        member_id: str,
        makeup_day: dt.date | None,
        request_id: str,
        digest: str,
        now: dt.datetime,
    ) -> SignInRecord:
        today = task.definition.day(now)
        if makeup_day is None:
            return await self._today(tenant_id, task, member_id, today, request_id, digest, now)
        check_makeup_day(task, makeup_day, today)
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, member_id)
            first = await signin_store.sign_in_by_request(conn, request_id)
            if first is not None:
                paid = (
                    None
                    if first.completion_id is None
                    else await completion_store.completion(conn, first.completion_id)
                )
                return _retried(first, paid, request_id, digest)
            return await self._makeup(
                conn, tenant_id, task, member_id, makeup_day, request_id, digest, today, now
            )

    async def _today(
        self,
        tenant_id: str,
        task: Task,
        member_id: str,
        today: dt.date,
        request_id: str,
        digest: str,
        now: dt.datetime,
    ) -> SignInRecord:
        """Today's sign-in, in one round trip, alone or with others of the task (`_sign_in_days`)."""
        request = signin_store.DayRequest(_terms(task, now), member_id, today, request_id, digest, now)
        done = await self._days.submit((tenant_id, task.task_id), request)
        if done.outcome == "asked":
            assert done.sign_in is not None
            return _retried(done.sign_in, done.completion, request_id, digest)
        if done.outcome == "signed":
            raise AlreadyExists(f"members/{member_id} already signed in to tasks/{task.task_id} on {today}")
        if done.outcome in ("daily_limit", "total_limit"):
            completions.refuse_over_limit(task, member_id, today, daily=done.outcome == "daily_limit")
        if done.outcome == "stale":
            raise completions.StaleTask(task.task_id)
        if done.outcome == "budget":
            left = max(task.definition.budget_points - task.budget_used, 0)
            raise ResourceExhausted(
                f"tasks/{task.task_id} has no budget left for {done.points} points (about {left} left)"
            )
        assert done.outcome == "paid" and done.sign_in is not None and done.completion is not None
        if done.completion.state == completions.State.PAID:
            metrics.ledger_entries(tenant_id, ledger_store.KINDS[Reason.TASK])
        return SignInRecord(done.sign_in, done.completion)

    async def _sign_in_days(
        self, key: tuple[str, str], requests: Sequence[signin_store.DayRequest]
    ) -> list[signin_store.DaySignIn | BaseException]:
        """The outcome of each of a task's sign-ins that arrived together. Those of one version and
        day go as one statement; a member or request id met again within it (a retry racing its
        first call) waits for the next one, so it is answered as a retry or a day already signed.
        A group the budget or a changed task refuses as a whole, or that a concurrent call's
        request id got in the way of, signs in one by one, as alone each is answered exactly."""
        tenant_id = key[0]
        outcomes: dict[int, signin_store.DaySignIn | BaseException] = {}
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_group_of(r), []).append(i)
        for grouped in groups.values():
            waiting = grouped
            while waiting:
                group: list[int] = []
                later: list[int] = []
                members: set[str] = set()
                ids: set[str] = set()
                for i in waiting:
                    r = requests[i]
                    if r.member_id in members or r.request_id in ids:
                        later.append(i)
                    else:
                        group.append(i)
                        members.add(r.member_id)
                        ids.add(r.request_id)
                outcomes.update(await self._sign_in_group(tenant_id, [requests[i] for i in group], group))
                waiting = later
        return [outcomes[i] for i in range(len(requests))]

    async def _sign_in_group(
        self, tenant_id: str, group: Sequence[signin_store.DayRequest], indexes: Sequence[int]
    ) -> dict[int, signin_store.DaySignIn | BaseException]:
        if len(group) > 1:
            try:
                done = await signin_store.sign_in_days(
                    self._db.pool, tenant_id, group[0].terms, group[0].day, group
                )
                return dict(zip(indexes, done, strict=True))
            except asyncpg.PostgresError as error:
                if not _alone_decides(error):
                    return dict.fromkeys(indexes, error)
        outcomes: dict[int, signin_store.DaySignIn | BaseException] = {}
        for i, request in zip(indexes, group, strict=True):
            try:
                outcomes[i] = await signin_store.sign_in_day(self._db.pool, tenant_id, request)
            except Exception as error:  # the caller's: a taken request id is retried there
                outcomes[i] = error
        return outcomes

    async def _makeup(
        self,
        conn: Connection,
        tenant_id: str,
        task: Task,
        member_id: str,
        day: dt.date,
        request_id: str,
        digest: str,
        today: dt.date,
        now: dt.datetime,
    ) -> SignInRecord:
        spec = task.definition.spec
        assert isinstance(spec, SignInSpec)
        first_of_month = month_start(today)
        rows = await signin_store.sign_ins_between(
            conn, task.task_id, member_id, first_of_month - ONE_DAY, today
        )
        by_day = {r.day: r for r in rows}
        if day in by_day:
            raise AlreadyExists(f"members/{member_id} already signed in to tasks/{task.task_id} on {day}")
        used = sum(1 for r in rows if r.makeup and r.day >= first_of_month)
        if used >= spec.makeups_per_month:
            raise ResourceExhausted(
                f"members/{member_id} used this month's {spec.makeups_per_month} make-up sign-ins "
                f"of tasks/{task.task_id}"
            )
        previous = by_day.get(day - ONE_DAY)
        streak = previous.streak + 1 if previous else 1
        row = await signin_store.insert_makeup(
            conn, tenant_id, task.task_id, member_id, day, streak, request_id, digest
        )
        later = rejoined(by_day, day, streak)
        await signin_store.restreak(conn, task.task_id, member_id, later)
        longest = max([streak, *(length for _, length in later)])
        await _award_milestones(conn, tenant_id, task, member_id, longest, now)
        return SignInRecord(row, None)

    async def streak(self, tenant_id: str, task_id: str, member_id: str, now: dt.datetime) -> Streak:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        task = await self._definitions.get(tenant_id, task_id)
        if task.definition.kind is not Kind.SIGN_IN:
            raise InvalidArgument.field("task", f"tasks/{task_id} is not a sign-in task")
        await self._participation.require_member(tenant_id, member_id)
        today = task.definition.day(now)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await signin_store.streaks(conn, member_id, {task_id: (month_start(today), today)})
        return streak_of(task, member_id, rows.get(task_id), today)
