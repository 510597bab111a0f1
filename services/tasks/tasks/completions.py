"""Completions: reserving a task's budget, paying into the ledger, claiming, taking back.

Every function runs inside the caller's tenant transaction, after the member's account is locked
(the ledger's lock order), so a completion, its budget reservation and its ledger entry commit
together or not at all. The budget is the task's sharded allowance (services/tasks/allowance/): a
take from one shard, held until commit, so concurrent completions rarely queue on one row and can
never overspend (a CHECK on each shard backs the rule in the table itself).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from runtime.db import Connection
from runtime.errors import AlreadyExists, FailedPrecondition, ResourceExhausted
from services.tasks.badges import badges
from services.tasks.points import ledger, ledger_store
from services.tasks.points.ledger import Reason
from services.tasks.tasks import completion_store
from services.tasks.tasks.completion_store import CompletionRow
from services.tasks.tasks.definitions import Task

_T = TypeVar("_T")


class State(enum.IntEnum):
    """The numbers of memberops.tasks.v1.CompletionState."""

    PAID = 1
    CLAIMABLE = 2
    REVERSED = 3


class StaleTask(Exception):
    """The task changed (a new version, or retired) after it was read in this transaction."""


async def retry_if_stale(attempt: Callable[[bool], Awaitable[_T]]) -> _T:
    """Runs `attempt(fresh)` (a whole transaction) again once when the task changed under it; the
    second run, `fresh`, reads the current definition."""
    try:
        return await attempt(False)
    except StaleTask:
        return await attempt(True)


@dataclass(frozen=True)
class Grant:
    """A completion to record: `points` for `member_id`, on the task's `day`, because of `source`."""

    member_id: str
    points: int
    source: str
    day: dt.date


async def grant(
    conn: Connection, tenant_id: str, task: Task, g: Grant, now: dt.datetime, completion_id: int | None = None
) -> CompletionRow:
    """Records the completion, reserving its points from the budget, and pays it unless the task
    wants it claimed. RESOURCE_EXHAUSTED when the budget cannot cover it, after writing: the
    caller's transaction (or a savepoint around the call) must then roll back, as it does when the
    error ends the request."""
    return (await grant_all(conn, tenant_id, task, [(g, completion_id)], now))[0]


async def grant_all(
    conn: Connection, tenant_id: str, task: Task, grants: Sequence[tuple[Grant, int | None]], now: dt.datetime
) -> list[CompletionRow]:
    """`grant` for several completions of one task (an invite pays both sides) that stand or fall
    together: their points are taken from the budget once, for the sum (two takes from one
    allowance in a transaction can deadlock: services/tasks/allowance/). Each pair is a grant and
    the completion id drawn for it, if any."""
    state = State.CLAIMABLE if task.definition.claim_required else State.PAID
    drawn: list[tuple[Grant, int, int | None]] = []
    for g, drawn_id in grants:
        completion_id = drawn_id if drawn_id is not None else await completion_store.next_completion_id(conn)
        entry_id = None
        if state is State.PAID:
            entry_id = await _earn(conn, tenant_id, task, g.member_id, g.points, completion_id, g.source, now)
        drawn.append((g, completion_id, entry_id))
    # Last: from here to commit a shard of the task's budget is locked. Refused, the transaction
    # rolls back what was written above.
    points = sum(g.points for g, _ in grants)
    if not await completion_store.take_budget(conn, task.task_id, points):
        await _refused(conn, task, points)
    written = []
    for g, completion_id, entry_id in drawn:
        completion = await completion_store.insert_at_version(
            conn,
            tenant_id,
            completion_id,
            task.task_id,
            task.version,
            g.member_id,
            g.day,
            g.points,
            state,
            g.source,
            entry_id,
        )
        if completion is None:
            await _refused(conn, task, points)
        written.append(completion)
    if task.definition.badge:
        for g, _ in grants:
            await badges.award(
                conn, tenant_id, g.member_id, [task.definition.badge], f"task {task.task_id}", now
            )
    return written


async def _refused(conn: Connection, task: Task, points: int) -> NoReturn:
    """Raises why a completion of `points` was refused: the task changed under it (StaleTask), or
    its budget cannot cover them (RESOURCE_EXHAUSTED)."""
    if await completion_store.task_version(conn, task.task_id) != (1, task.version):
        raise StaleTask(task.task_id)
    left = task.definition.budget_points - task.budget_used
    raise ResourceExhausted(
        f"tasks/{task.task_id} has no budget left for {points} points (about {max(left, 0)} left)"
    )


async def _earn(
    conn: Connection,
    tenant_id: str,
    task: Task,
    member_id: str,
    points: int,
    completion_id: int,
    source: str,
    now: dt.datetime,
) -> int:
    """Pays a completion into the ledger; the entry's note names the completion."""
    entry = ledger.task_earning(
        member_id, points, task.task_id, f"completion {completion_id}: {source}", task.definition.expiry, now
    )
    return (await ledger.earn_within(conn, tenant_id, entry)).entry_id


async def _pay(
    conn: Connection,
    tenant_id: str,
    task: Task,
    completion: CompletionRow,
    claim_request_id: str | None,
    now: dt.datetime,
) -> CompletionRow:
    c = completion
    entry_id = await _earn(conn, tenant_id, task, c.member_id, c.points, c.completion_id, c.source, now)
    return await completion_store.set_paid(conn, c.completion_id, entry_id, claim_request_id)


async def claim(
    conn: Connection, tenant_id: str, task: Task, member_id: str, request_id: str, now: dt.datetime
) -> CompletionRow:
    """Pays the member's oldest claimable completion (account locked by the caller); a retry of
    `request_id` returns the completion it paid."""
    first = await completion_store.completion_by_claim(conn, request_id)
    if first is not None:
        if (first.task_id, first.member_id) != (task.task_id, member_id):
            raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
        return first
    waiting = await completion_store.oldest_claimable(conn, task.task_id, member_id)
    if waiting is None:
        raise FailedPrecondition(
            f"members/{member_id} has no reward of tasks/{task.task_id} waiting to be claimed "
            "(already claimed, or nothing completed yet)"
        )
    return await _pay(conn, tenant_id, task, waiting, request_id, now)


async def check_limits(conn: Connection, task: Task, member_id: str, day: dt.date) -> None:
    """RESOURCE_EXHAUSTED when the member used the task's daily completions, or its total ones (of
    the cycle `day` is in)."""
    per_day, total = task.definition.limits.per_day, task.definition.total_limit()
    if not per_day and not total:
        return
    counts = await completion_store.counts(conn, task.task_id, member_id, day, task.definition.cycle_of(day))
    if per_day and counts.today >= per_day:
        refuse_over_limit(task, member_id, day, daily=True)
    if total and counts.total >= total:
        refuse_over_limit(task, member_id, day, daily=False)


def refuse_over_limit(task: Task, member_id: str, day: dt.date, *, daily: bool) -> NoReturn:
    """The RESOURCE_EXHAUSTED of a member at the task's daily limit (`daily`) or its total one."""
    if daily:
        raise ResourceExhausted(
            f"members/{member_id} reached today's limit of {task.definition.limits.per_day} "
            f"for tasks/{task.task_id} ({day})"
        )
    raise ResourceExhausted(
        f"members/{member_id} reached the limit of {task.definition.total_limit()} for tasks/{task.task_id}"
        + (f" in the cycle from {task.definition.cycle_of(day)[0]}" if task.definition.cycle else "")
    )


async def reverse(conn: Connection, tenant_id: str, completion: CompletionRow, why: str) -> CompletionRow:
    """Takes a completion back (the member's account locked by the caller). A claimable one is
    cancelled; a paid one gives back what is left of the points it paid, the rest recorded as the
    reversal's shortfall, never as a negative balance (the ledger's reversal rule). What comes back
    returns to the task's budget."""
    if completion.state == State.CLAIMABLE:
        await completion_store.release_budget(conn, completion.task_id, completion.points)
        return await completion_store.set_reversed(conn, completion.completion_id, None)
    assert completion.state == State.PAID and completion.entry_id is not None
    earned, left = await ledger_store.take_entry_lots(conn, tenant_id, completion.entry_id)
    entry = await ledger_store.insert_entry(
        conn,
        tenant_id,
        ledger_store.NewEntry(
            member_id=completion.member_id,
            delta=-left,
            reason=Reason.TASK_REVERSAL,
            reference=completion.task_id,
            note=f"completion {completion.completion_id} reversed: {why}",
            shortfall=earned - left,
        ),
    )
    await completion_store.release_budget(conn, completion.task_id, left)
    return await completion_store.set_reversed(conn, completion.completion_id, entry.entry_id)
