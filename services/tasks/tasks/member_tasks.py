"""Tasks as one member sees them: progress, state, claims and enrolments.

`state_of` decides what a member can do next in a task from plain facts (eligibility, counts of
completions, streak, enrolment, budget); `MemberTasks` gathers those facts for every task open
now in a few set-based reads, plus one CheckMembership per task that has an audience.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from dataclasses import dataclass

from runtime import page_tokens
from runtime.errors import FailedPrecondition, Violations
from services.tasks.points import ledger, ledger_store
from services.tasks.tasks import (
    completion_store,
    completions,
    definition_store,
    enrolment_store,
    invite_store,
    progress_store,
    signin_store,
)
from services.tasks.tasks.completion_store import CompletionRow, Counts
from services.tasks.tasks.definitions import (
    COUNTED,
    InviteSpec,
    Kind,
    PurchaseSpec,
    SignInSpec,
    State,
    Task,
    task_from_row,
)
from services.tasks.tasks.enrolment_store import EnrolmentRow
from services.tasks.tasks.member_calls import MemberCalls
from services.tasks.tasks.signin import Streak, month_start, streak_of

NO_COUNTS = Counts(0, 0, 0)


class MemberState(enum.IntEnum):
    """The numbers of memberops.tasks.v1.MemberTaskState."""

    OPEN = 1
    CLAIMABLE = 2
    DONE_TODAY = 3
    COMPLETED = 4
    NOT_ENROLLED = 5
    WINDOW_ENDED = 6
    NOT_ELIGIBLE = 7
    BUDGET_EXHAUSTED = 8


@dataclass(frozen=True)
class MemberTask:
    task: Task
    state: MemberState
    progress: int
    target: int
    counts: Counts
    streak: Streak | None
    enrolment: EnrolmentRow | None


def next_points(task: Task, streak: Streak | None) -> int:
    """What the member's next completion would cost the budget."""
    spec = task.definition.spec
    if isinstance(spec, SignInSpec):
        assert streak is not None
        return streak.next_points
    if isinstance(spec, InviteSpec):
        return task.definition.reward_points + spec.invitee_points
    return task.definition.reward_points


def state_of(
    task: Task,
    eligible: bool,
    counts: Counts,
    streak: Streak | None,
    enrolment: EnrolmentRow | None,
    now: dt.datetime,
) -> MemberState:
    d = task.definition
    if not eligible:
        return MemberState.NOT_ELIGIBLE
    if counts.claimable:
        return MemberState.CLAIMABLE
    total = d.total_limit()
    if total and counts.total >= total:
        return MemberState.COMPLETED
    if isinstance(d.spec, PurchaseSpec) and d.spec.window_days:
        if enrolment is None:
            return MemberState.NOT_ENROLLED
        if now >= enrolment.window_end_time:
            return MemberState.WINDOW_ENDED
    if (streak is not None and streak.signed_today) or (
        d.limits.per_day and counts.today >= d.limits.per_day
    ):
        return MemberState.DONE_TODAY
    left = task.budget_left()
    if left is not None and left < next_points(task, streak):
        return MemberState.BUDGET_EXHAUSTED
    return MemberState.OPEN


def _by_id(tasks: list[Task]) -> dict[str, Task]:
    return {t.task_id: t for t in tasks}


def progress_of(task: Task, counts: Counts, streak: Streak | None, measure: int) -> tuple[int, int]:
    """(progress, target): the streak against the reward table, today's completions against the
    daily cap, or the counted measure towards the next completion."""
    d = task.definition
    if isinstance(d.spec, SignInSpec):
        assert streak is not None
        return streak.current, len(d.spec.streak_rewards)
    if d.kind in COUNTED:
        target = d.target()
        return max(measure - counts.total * target, 0), target
    return counts.today, d.limits.per_day


class MemberTasks(MemberCalls):
    async def list_page(
        self, tenant_id: str, member_id: str, size: int, token: str, now: dt.datetime
    ) -> tuple[list[MemberTask], str]:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        limit = ledger.page_size(size)
        scope = f"member-tasks/{member_id}"
        after = page_tokens.decode_one(token, scope, str) or ""
        await self._participation.require_member(tenant_id, member_id)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await definition_store.tasks(conn, after, limit + 1, State.ACTIVE)
            more = len(rows) > limit
            open_now = [t for t in (task_from_row(r) for r in rows[:limit]) if t.definition.valid_at(now)]
            days = {t.task_id: t.definition.day(now) for t in open_now}
            cycles = {
                task_id: t.definition.cycle_of(days[task_id]) for task_id, t in _by_id(open_now).items()
            }
            counts = await completion_store.member_counts(
                conn, member_id, {task_id: (day, cycles[task_id]) for task_id, day in days.items()}
            )
            # An invite task's limits count the invites an inviter records, paid or not yet.
            invited = {t.task_id: days[t.task_id] for t in open_now if t.definition.kind is Kind.INVITE}
            for task_id, (total, today) in (
                await invite_store.invite_counts(conn, member_id, invited)
            ).items():
                claimable = counts.get(task_id, NO_COUNTS).claimable
                counts[task_id] = Counts(total, today, claimable)
            sign_in = {
                t.task_id: (month_start(days[t.task_id]), days[t.task_id])
                for t in open_now
                if t.definition.kind is Kind.SIGN_IN
            }
            streak_rows = await signin_store.streaks(conn, member_id, sign_in)
            enrolments = await enrolment_store.enrolments(conn, member_id, [t.task_id for t in open_now])
            measures = await progress_store.measures(
                conn,
                member_id,
                {t.task_id: cycles[t.task_id][0] for t in open_now if t.definition.kind in COUNTED},
            )
        eligible = await asyncio.gather(
            *(self._participation.eligible(tenant_id, t, member_id) for t in open_now)
        )
        listed = []
        for task, ok in zip(open_now, eligible, strict=True):
            streak = None
            if task.task_id in sign_in:
                streak = streak_of(task, member_id, streak_rows.get(task.task_id), days[task.task_id])
            c = counts.get(task.task_id, NO_COUNTS)
            enrolment = enrolments.get(task.task_id)
            progress, target = progress_of(task, c, streak, measures.get(task.task_id, 0))
            state = state_of(task, ok, c, streak, enrolment, now)
            listed.append(MemberTask(task, state, progress, target, c, streak, enrolment))
        token_out = page_tokens.encode(scope, rows[limit - 1].task_id) if more else ""
        return listed, token_out

    async def claim(
        self, tenant_id: str, task_id: str, member_id: str, request_id: str, now: dt.datetime
    ) -> CompletionRow:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        task = await self._definitions.get(tenant_id, task_id)
        await self._participation.require_member(tenant_id, member_id)
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, member_id)
            return await completions.claim(conn, tenant_id, task, member_id, request_id, now)

    async def enrol(self, tenant_id: str, task_id: str, member_id: str, now: dt.datetime) -> EnrolmentRow:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        task = await self._definitions.open_for(tenant_id, task_id, Kind.PURCHASE, now)
        d = task.definition
        assert isinstance(d.spec, PurchaseSpec) and d.end_time is not None
        if not d.spec.window_days:
            raise FailedPrecondition(
                f"tasks/{task_id} counts orders paid within its validity period; it needs no enrolment"
            )
        await self._participation.require(tenant_id, task, member_id)
        window_end = min(now + dt.timedelta(days=d.spec.window_days), d.end_time)
        async with self._db.transaction(tenant_id) as conn:
            return await enrolment_store.enrol(conn, tenant_id, task_id, member_id, now, window_end)
